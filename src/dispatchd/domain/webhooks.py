"""Webhooks as plain records and rules: what a subscription and a delivery are, how a body
is signed, how long a failed delivery waits, and what one attempt's outcome writes.

A delivery is one event owed to one webhook. It is `pending` until it is `delivered` (the
receiver answered 2xx), `failed` (every attempt failed) or `abandoned` (the webhook was
switched off while it was still owed). Each webhook sends its deliveries one at a time in
event order; a run of failed attempts opens its circuit breaker for a cooldown.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from dispatchd.domain.backoff import backoff
from dispatchd.errors import ValidationFailed

SIGNATURE_HEADER = "X-Dispatch-Signature"
# How far a receiver should accept a signature's timestamp from its own clock.
REPLAY_WINDOW_S = 300
# Attempt records kept on a delivery (the newest).
HISTORY = 50
MAX_URL = 2048


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    ABANDONED = "abandoned"


class CircuitState(StrEnum):
    CLOSED = "closed"  # deliveries flow
    OPEN = "open"  # nothing is sent until `open_until`
    HALF_OPEN = "half_open"  # the cooldown is over: one trial decides


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    secret: str
    types: tuple[str, ...]
    description: str
    active: bool
    created_at: datetime
    updated_at: datetime
    version: int = 1
    # The last event id the dispatcher has handled for this webhook.
    last_event_id: int = 0
    consecutive_failures: int = 0
    open_until: datetime | None = None

    def evolve(self, **changes: Any) -> Webhook:
        return replace(self, **changes)

    def circuit(self, now: datetime) -> CircuitState:
        if self.open_until is None:
            return CircuitState.CLOSED
        return CircuitState.OPEN if now < self.open_until else CircuitState.HALF_OPEN


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try at a delivery, as the deliveries API shows it."""

    attempt: int
    at: datetime
    outcome: Literal["delivered", "failed", "interrupted"]
    response_status: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    # When the next try was scheduled (None when this one ended the delivery).
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    webhook_id: str
    event_id: int
    event_type: str
    # The exact body sent, the event as JSON in the API's event shape.
    payload: str
    status: DeliveryStatus
    created_at: datetime
    updated_at: datetime
    # Attempts started so far.
    attempt: int = 0
    # When the next attempt may start (pending only); while one is in flight, when its
    # claim lapses and another replica, or this one after a crash, may try again.
    next_attempt_at: datetime | None = None
    response_status: int | None = None
    error: str | None = None
    delivered_at: datetime | None = None
    history: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Head:
    """A webhook with the delivery it must send next (its oldest pending one)."""

    webhook: Webhook
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Advance:
    """The dispatcher read the log up to `last_event_id` for a webhook and owes it
    `deliveries`: written together, or not at all."""

    webhook_id: str
    last_event_id: int
    deliveries: tuple[Delivery, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt writes, fenced by the attempt it was claimed under.

    `breaker` says how the webhook's circuit moves: a success closes it, a failure counts
    and opens it for `cooldown` from `at` once `threshold` failures follow one another;
    None (an attempt cut short by a shutdown) leaves it as it is.
    """

    delivery_id: str
    webhook_id: str
    claimed_attempt: int
    status: DeliveryStatus
    attempt: int
    next_attempt_at: datetime | None
    response_status: int | None
    error: str | None
    delivered_at: datetime | None
    history: tuple[AttemptRecord, ...]
    at: datetime
    breaker: Literal["success", "failure"] | None
    threshold: int = 1
    reopen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=1)
    backoff_cap: timedelta = timedelta(minutes=5)
    breaker_threshold: int = 5
    breaker_cooldown: timedelta = timedelta(seconds=60)


# --- signing ----------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 of `<timestamp>.<body>` under the webhook's secret, in hex."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, now: float, window_s: float = REPLAY_WINDOW_S
) -> bool:
    """What a receiver checks: the header is well formed, its timestamp within `window_s`
    of `now` (so a captured request cannot be replayed later) and a `v1` matches."""
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    sigs = [v.strip() for k, _, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not sigs:
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > window_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in sigs)


# --- retries ----------------------------------------------------------------------------


def after_attempt(
    delivery: Delivery,
    *,
    ok: bool,
    at: datetime,
    now: datetime,
    policy: Policy,
    jitter: float,
    response_status: int | None = None,
    error: str | None = None,
) -> Outcome:
    """The writes for attempt `delivery.attempt` (started at `at`, ended at `now`): delivered
    on success; on failure another try after a backoff, or failed when none is left."""
    duration = max(int((now - at).total_seconds() * 1000), 0)
    if ok:
        status, next_at, error = DeliveryStatus.DELIVERED, None, None
    else:
        last = delivery.attempt >= policy.max_attempts
        status = DeliveryStatus.FAILED if last else DeliveryStatus.PENDING
        next_at = None if last else now + backoff(delivery.attempt, policy, jitter)
    record = AttemptRecord(
        delivery.attempt,
        at,
        "delivered" if ok else "failed",
        response_status,
        error,
        duration,
        next_at,
    )
    return Outcome(
        delivery_id=delivery.id,
        webhook_id=delivery.webhook_id,
        claimed_attempt=delivery.attempt,
        status=status,
        attempt=delivery.attempt,
        next_attempt_at=next_at,
        response_status=response_status,
        error=error,
        delivered_at=now if ok else None,
        history=_append(delivery.history, record),
        at=now,
        breaker="success" if ok else "failure",
        # A success closes the breaker; a failure counts towards opening it.
        threshold=1 if ok else policy.breaker_threshold,
        reopen_at=None if ok else now + policy.breaker_cooldown,
    )


def interrupted(delivery: Delivery, *, at: datetime, now: datetime) -> Outcome:
    """An attempt cut short by a shutdown: it does not count, and the delivery is due at
    once (the receiver may have got it; the delivery id lets it drop the repeat)."""
    record = AttemptRecord(delivery.attempt, at, "interrupted", None, "the server stopped", None)
    return Outcome(
        delivery_id=delivery.id,
        webhook_id=delivery.webhook_id,
        claimed_attempt=delivery.attempt,
        status=DeliveryStatus.PENDING,
        attempt=delivery.attempt - 1,
        next_attempt_at=now,
        response_status=delivery.response_status,
        error=delivery.error,
        delivered_at=None,
        history=_append(delivery.history, record),
        at=now,
        breaker=None,
    )


def mishandled(
    delivery: Delivery, *, at: datetime, now: datetime, error: str, retry_at: datetime | None
) -> Outcome:
    """An attempt that failed on dispatchd's side (its request could not be built or
    signed, its outcome not recorded), not the receiver's: it counts against neither the
    receiver's attempts nor its circuit. The delivery is due again at `retry_at`; None sets
    it aside: failed, with `error` as the reason, so the webhook's next deliveries go on."""
    record = AttemptRecord(delivery.attempt, at, "failed", None, error, None, retry_at)
    return Outcome(
        delivery_id=delivery.id,
        webhook_id=delivery.webhook_id,
        claimed_attempt=delivery.attempt,
        status=DeliveryStatus.PENDING if retry_at is not None else DeliveryStatus.FAILED,
        attempt=delivery.attempt - 1 if retry_at is not None else delivery.attempt,
        next_attempt_at=retry_at,
        response_status=None,
        error=error,
        delivered_at=None,
        history=_append(delivery.history, record),
        at=now,
        breaker=None,
    )


def _append(history: tuple[AttemptRecord, ...], record: AttemptRecord) -> tuple[AttemptRecord, ...]:
    return (*history, record)[-HISTORY:]


# --- validation -------------------------------------------------------------------------

# The URLs `check_url` takes, as one regular expression that reads the same in ECMA-262 (the
# OpenAPI document carries it) and Python: http(s), an optional user, a host (an ASCII name
# as RFC 3986 spells one, or a bracketed IPv6 address), an optional port from 1 to 65535,
# then anything without whitespace or control characters.
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = f"(?:{_H16}:{_H16}|{_OCTET}(?:\\.{_OCTET}){{3}})"


def _head(n: int) -> str:
    """RFC 3986's `[ *n( h16 ":" ) h16 ]` before a `::`."""
    return "" if n < 0 else f"(?:(?:{_H16}:){{0,{n}}}{_H16})?"


# RFC 3986's IPv6address, one alternative per line of its grammar.
_IPV6 = "|".join(
    (
        f"(?:{_H16}:){{6}}{_LS32}",
        f"::(?:{_H16}:){{5}}{_LS32}",
        *(f"{_head(n)}::(?:{_H16}:){{{3 - n}}}{_LS32}" for n in range(4)),
        f"{_head(4)}::{_LS32}",
        f"{_head(5)}::{_H16}",
        f"{_head(6)}::",
    )
)
_PORT = "[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]"
_NAME = "[A-Za-z0-9!$&'()*+,;=._~%-]"
_UNSAFE = "\\x00-\\x20\\x7f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
URL_PATTERN = (
    "^[hH][tT][tT][pP][sS]?://"
    f"(?:(?:{_NAME}|:)*@)?"
    f"(?:{_NAME}+|\\[(?:{_IPV6})\\])"
    f"(?::(?:{_PORT})?)?"
    f"(?:[/?#][^{_UNSAFE}]*)?$"
)
_URL = re.compile(URL_PATTERN)


def check_url(url: str, field: str = "url") -> str:
    """An absolute http(s) URL with a host, no whitespace or control characters; else 422
    `invalid_url` naming `field`."""
    problem = _url_problem(url)
    if problem:
        raise ValidationFailed(f"{field} {problem}", code="invalid_url", url=url[:200], field=field)
    return url


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    host = parts.hostname
    if not host:
        return "must name a host"
    if port == 0:
        return "must not use port 0"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "has a malformed IPv6 host"
    if not _URL.match(url):
        return "must be http(s)://host[:port][/path] with an ASCII host name or [IPv6]"
    return None
