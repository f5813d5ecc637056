"""Exponential backoff with jitter, shared by task retries and webhook deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol


class BackoffPolicy(Protocol):
    """What `backoff` reads of a policy."""

    @property
    def backoff_base(self) -> timedelta: ...

    @property
    def backoff_cap(self) -> timedelta: ...


def backoff(attempt: int, policy: BackoffPolicy, jitter: float) -> timedelta:
    """Exponential backoff with equal jitter: half fixed, half random (`jitter` in [0, 1)).
    The upper end of one wait is the lower end of the next, so waits never shrink until
    the cap."""
    # Double step by step and stop at the cap: `base * 2**(attempt-1)` overflows timedelta
    # from about the 48th attempt, and max_attempts may be 100.
    ceiling: timedelta = policy.backoff_base
    for _ in range(max(attempt - 1, 0)):
        if ceiling >= policy.backoff_cap:
            break
        ceiling *= 2
    ceiling = min(ceiling, policy.backoff_cap)
    half: timedelta = ceiling / 2
    return half + half * jitter
