"""The dashboard's sessions, CSRF tokens, one-time links and charts, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatchd.domain.models import Priority, Task, TaskStatus
from dispatchd.web import charts
from dispatchd.web.base import safe_next
from dispatchd.web.session import ONCE_S, SESSION_S, Sessions

NOW = 1_800_000_000.0


def test_a_session_cookie_verifies_until_it_expires() -> None:
    s = Sessions()
    cookie = s.issue(now=NOW)
    sid = s.session_id(cookie, now=NOW + 10)
    assert sid is not None
    assert s.session_id(cookie, now=NOW + SESSION_S + 1) is None


def test_a_tampered_or_foreign_cookie_is_refused() -> None:
    s = Sessions()
    cookie = s.issue(now=NOW)
    sid, expires, signature = cookie.split(".")
    assert s.session_id(f"{sid}.{int(expires) + 999}.{signature}", now=NOW) is None
    assert s.session_id(f"other.{expires}.{signature}", now=NOW) is None
    assert Sessions().session_id(cookie, now=NOW) is None  # another server's secret
    for junk in (None, "", "a.b", "a.b.c.d", "..."):
        assert s.session_id(junk, now=NOW) is None


def test_csrf_tokens_belong_to_their_session() -> None:
    s = Sessions()
    one = s.session_id(s.issue(now=NOW), now=NOW)
    two = s.session_id(s.issue(now=NOW), now=NOW)
    assert one and two and one != two
    assert s.csrf_ok(one, s.csrf(one))
    assert not s.csrf_ok(two, s.csrf(one))
    assert not s.csrf_ok(one, None)
    assert not s.csrf_ok(one, "")


def test_the_admin_token_is_checked() -> None:
    assert Sessions.check_token("secret-token-123456", "secret-token-123456")
    assert not Sessions.check_token("secret-token-12345", "secret-token-123456")
    assert not Sessions.check_token("", "secret-token-123456")


def test_a_one_time_token_works_once_and_expires() -> None:
    s = Sessions()
    token = s.once(now=NOW)
    assert s.use_once(token, now=NOW + 1)
    assert not s.use_once(token, now=NOW + 2)
    late = s.once(now=NOW)
    assert not s.use_once(late, now=NOW + ONCE_S + 1)
    assert not s.use_once("never-issued", now=NOW)


def test_only_local_paths_are_followed_after_sign_in() -> None:
    assert safe_next("/tasks?state=pending") == "/tasks?state=pending"
    for bad in (None, "", "https://evil.example/", "//evil.example/", "/\\evil", "tasks"):
        assert safe_next(bad) == "/"


def _task(created: datetime, started: datetime | None, finished: datetime | None) -> Task:
    return Task(
        id=f"t{created.timestamp()}",
        title="t",
        prompt="",
        status=TaskStatus.COMPLETED if finished else TaskStatus.PENDING,
        priority=Priority.MEDIUM,
        capabilities=(),
        requester="r",
        created_at=created,
        updated_at=created,
        started_at=started,
        finished_at=finished,
    )


def test_history_counts_queued_and_finished_tasks() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    m = timedelta(minutes=1)
    tasks = [
        _task(now - 50 * m, now - 40 * m, now - 32 * m),  # queued 50..40, finished at -32
        _task(now - 20 * m, None, None),  # still queued
        _task(now - 90 * m, None, None),  # queued since before the window
    ]
    depth, done = charts.history(tasks, now)
    assert depth.unit == "tasks" and done.unit == "tasks / 5 min"
    values = dict(depth.points)
    assert values[now - 60 * m] == 1  # only the old one
    assert values[now - 45 * m] == 2
    assert values[now - 35 * m] == 1
    assert values[now] == 2
    assert sum(v for _, v in done.points) == 1
    assert dict(done.points)[now - 30 * m] == 1


def test_charts_have_axis_labels_and_units() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    depth, done = charts.history([], now)
    for series, bars in ((depth, False), (done, True)):
        svg = charts.svg(series, bars=bars)
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert series.unit in svg and "time (UTC)" in svg
        assert "11:00" in svg or "11:05" in svg
