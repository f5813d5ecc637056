"""Per-caller token buckets (the API's rate limits: api/limits.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from dispatchd.config import LimitsConfig

# Idle buckets are forgotten once the table holds this many (a full bucket is the same as
# none at all).
PRUNE_AT = 10_000


@dataclass(slots=True)
class Bucket:
    tokens: float
    at: float


class Limiter:
    """The buckets of one replica."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = config.requests_per_second
        self.burst = float(config.burst or max(1, math.ceil(self.rate)))
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, caller: str) -> float:
        """Spend one request of `caller`'s bucket: 0 when it had one, else the seconds
        until it will."""
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[caller] = Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            caller
            for caller, b in self._buckets.items()
            if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for caller in full:
            del self._buckets[caller]
