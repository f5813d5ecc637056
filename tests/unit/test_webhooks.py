"""The pure rules of webhooks: signing, backoff, outcomes, the circuit, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatchd.domain.webhooks import (
    HISTORY,
    AttemptRecord,
    CircuitState,
    Delivery,
    DeliveryStatus,
    Policy,
    Webhook,
    after_attempt,
    backoff,
    check_url,
    interrupted,
    mishandled,
    signature_header,
    verify,
)
from dispatchd.errors import ValidationFailed
from dispatchd.events.subscriptions import check_types, new_secret

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_unit-test-secret-0123456789"


def delivery(attempt: int = 1, **changes: object) -> Delivery:
    d = Delivery(
        id="d1",
        webhook_id="w1",
        event_id=7,
        event_type="task.created",
        payload="{}",
        status=DeliveryStatus.PENDING,
        created_at=T0,
        updated_at=T0,
        attempt=attempt,
    )
    return dataclasses.replace(d, **changes)  # type: ignore[arg-type]


# --- signing ----------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"1","type":"task.created"}'
    header = signature_header(SECRET, 1714564800, body)
    expected = hmac.new(SECRET.encode(), b"1714564800." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1714564800,v1={expected}"


def test_a_receiver_accepts_a_fresh_signature_and_nothing_else() -> None:
    body = b'{"a":1}'
    header = signature_header(SECRET, 1000, body)
    assert verify(SECRET, header, body, now=1000)
    assert verify(SECRET, header, body, now=1300)
    assert not verify(SECRET, header, body, now=1301), "outside the replay window"
    assert not verify(SECRET, header, b'{"a":2}', now=1000), "another body"
    assert not verify("another-secret-0123456789", header, body, now=1000)
    forged = signature_header(SECRET, 1000, body).replace("t=1000", "t=1001")
    assert not verify(SECRET, forged, body, now=1000), "the timestamp is signed too"
    for bad in ("", "t=1000", "v1=abc", "t=x,v1=abc", "t=1000,t=1000,v1=abc"):
        assert not verify(SECRET, bad, body, now=1000)


# --- backoff ----------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=100),
    j1=st.floats(min_value=0, max_value=0.999999),
    j2=st.floats(min_value=0, max_value=0.999999),
)
def test_backoff_never_shrinks_and_stays_under_the_cap(attempt: int, j1: float, j2: float) -> None:
    policy = Policy(backoff_base=timedelta(milliseconds=100), backoff_cap=timedelta(seconds=30))
    this, following = backoff(attempt, policy, j1), backoff(attempt + 1, policy, j2)
    assert timedelta(milliseconds=50) <= this <= policy.backoff_cap
    assert following >= this or following >= policy.backoff_cap / 2


def test_backoff_doubles_with_equal_jitter() -> None:
    policy = Policy(backoff_base=timedelta(seconds=1), backoff_cap=timedelta(seconds=10))
    assert [backoff(n, policy, 0).total_seconds() for n in range(1, 7)] == [
        0.5,
        1,
        2,
        4,
        5,
        5,
    ]
    assert backoff(3, policy, 0.999999) < timedelta(seconds=4)


# --- outcomes ---------------------------------------------------------------------------


def test_a_success_delivers() -> None:
    end = T0 + timedelta(milliseconds=42)
    out = after_attempt(
        delivery(2), ok=True, at=T0, now=end, policy=Policy(), jitter=0.3, response_status=202
    )
    assert out.status == DeliveryStatus.DELIVERED
    assert (out.attempt, out.claimed_attempt, out.delivered_at, out.next_attempt_at) == (
        2,
        2,
        end,
        None,
    )
    assert out.breaker == "success"
    assert out.history == (AttemptRecord(2, T0, "delivered", 202, None, 42, None),)


def test_a_failure_with_attempts_left_is_retried_after_the_backoff() -> None:
    policy = Policy(max_attempts=3, backoff_base=timedelta(seconds=2))
    out = after_attempt(
        delivery(2), ok=False, at=T0, now=T0, policy=policy, jitter=0, response_status=500
    )
    assert out.status == DeliveryStatus.PENDING
    assert out.next_attempt_at == T0 + timedelta(seconds=2)
    assert out.breaker == "failure"
    assert out.reopen_at == T0 + policy.breaker_cooldown
    assert out.history[-1].next_attempt_at == out.next_attempt_at


def test_the_last_failure_fails_the_delivery() -> None:
    out = after_attempt(
        delivery(3), ok=False, at=T0, now=T0, policy=Policy(max_attempts=3), jitter=0
    )
    assert out.status == DeliveryStatus.FAILED
    assert out.next_attempt_at is None


def test_the_history_keeps_the_newest_attempts() -> None:
    d = delivery(
        HISTORY + 5,
        history=tuple(AttemptRecord(n, T0, "failed") for n in range(1, HISTORY + 5)),
    )
    out = after_attempt(d, ok=True, at=T0, now=T0, policy=Policy(max_attempts=100), jitter=0)
    assert len(out.history) == HISTORY
    assert out.history[-1].attempt == HISTORY + 5


def test_an_interrupted_attempt_does_not_count() -> None:
    out = interrupted(delivery(4), at=T0, now=T0 + timedelta(seconds=1))
    assert (out.status, out.attempt, out.claimed_attempt) == (DeliveryStatus.PENDING, 3, 4)
    assert out.next_attempt_at == T0 + timedelta(seconds=1)
    assert out.breaker is None


def test_a_failure_of_dispatchd_counts_neither_against_the_receiver_nor_its_circuit() -> None:
    later = T0 + timedelta(seconds=2)
    again = mishandled(delivery(4), at=T0, now=T0 + timedelta(seconds=1), error="E", retry_at=later)
    assert (again.status, again.attempt, again.claimed_attempt) == (DeliveryStatus.PENDING, 3, 4)
    assert again.next_attempt_at == later and again.breaker is None
    assert again.response_status is None and again.error == "E"
    [record] = again.history
    assert (record.attempt, record.outcome, record.error) == (4, "failed", "E")

    aside = mishandled(delivery(4), at=T0, now=T0, error="set aside: E", retry_at=None)
    assert (aside.status, aside.attempt, aside.next_attempt_at) == (DeliveryStatus.FAILED, 4, None)
    assert aside.error == "set aside: E" and aside.breaker is None and aside.delivered_at is None


def test_the_circuit_state_follows_open_until() -> None:
    hook = Webhook("w", "http://x", "s", (), "", True, T0, T0)
    assert hook.circuit(T0) == CircuitState.CLOSED
    opened = hook.evolve(open_until=T0 + timedelta(seconds=1), consecutive_failures=5)
    assert opened.circuit(T0) == CircuitState.OPEN
    assert opened.circuit(T0 + timedelta(seconds=1)) == CircuitState.HALF_OPEN


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "https://example.com",
        "https://user:pw@example.com/a?b=c#d",
        "http://[::1]:9000/x",
        "http://10.0.0.1/",
    ],
)
def test_good_urls(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/hook",
        "ftp://example.com/",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://",
        "http:///path",
        "http://exa mple.com/",
        "http://example.com/\n",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://[::1/",
        "http://example.com:port/",
        "https://" + "a" * 2100 + ".com/",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_url(url)
    assert info.value.code == "invalid_url"


def test_types_are_normalised_like_the_event_filter() -> None:
    assert check_types(["task.completed", "agent", "task.*", "agent", "room.*"]) == (
        "task.completed",
        "agent.*",
        "task.*",
        "room.*",
    )
    assert check_types([]) == ()


@pytest.mark.parametrize(
    "types", [["Task.Created"], [""], [" "], ["task.created,agent"], ["task..x"], ["a" * 101]]
)
def test_bad_types(types: list[str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_types(types)
    assert info.value.code == "invalid_types"


def test_generated_secrets_are_long_and_different() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(a) >= 40
