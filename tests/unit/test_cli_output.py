"""The CLI's exit codes by failure, relative times and bars."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dispatchd.cli.output import Exit, ago, exit_code_of
from dispatchd.cli.stats import bar
from dispatchd.client.errors import ClientError, TransportError, api_error


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "validation_error", Exit.REFUSED),
        (401, "invalid_token", Exit.UNAUTHENTICATED),
        (403, "forbidden", Exit.FORBIDDEN),
        (404, "not_found", Exit.NOT_FOUND),
        (409, "invalid_transition", Exit.REFUSED),
        (422, "validation_error", Exit.REFUSED),
        (429, "rate_limited", Exit.REFUSED),
        (500, "internal_error", Exit.SERVER_ERROR),
        (503, "store_unavailable", Exit.SERVER_ERROR),
    ],
)
def test_exit_codes_by_status(status: int, code: str, expected: Exit) -> None:
    body = {"error": {"code": code, "message": "m", "details": {}}}
    assert exit_code_of(api_error(status, body)) is expected


def test_exit_codes_without_an_answer() -> None:
    assert exit_code_of(TransportError("refused")) is Exit.UNREACHABLE
    assert exit_code_of(ClientError("unreadable answer")) is Exit.SERVER_ERROR


def test_relative_times() -> None:
    now = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
    assert ago("2026-01-02T11:59:48.000000Z", now) == "12s ago"
    assert ago("2026-01-02T09:00:00Z", now) == "3h ago"
    assert ago("2026-01-02T12:05:00Z", now) == "in 5m"
    assert ago("2025-12-30T12:00:00Z", now) == "3d ago"
    assert ago(None, now) == "-"


def test_bars_scale_to_the_largest_and_show_any_value_above_zero() -> None:
    assert bar(10, 10, width=20) == "█" * 20
    assert bar(5, 10, width=20) == "█" * 10
    assert bar(0, 10) == ""
    assert bar(1, 10_000, width=20) != ""
    assert len(bar(3, 8, width=10)) in (4, 5)
