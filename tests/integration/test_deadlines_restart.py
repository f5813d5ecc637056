"""Deadlines survive a `kill -9` of the server (SPEC §2, §8): every deadline is a stored
column, so a restarted server honours the ones that passed while it was down and the ones
still ahead.

A real `dispatchd serve` gets one task in each deadline state — running with a short
timeout, running under a silent agent (lease), assigned and never started (wake timeout),
failed with a backoff pending, blocked on a `run_at` — and is SIGKILLed before any of them
passes. It stays down until the timeout and the run_at have passed; the lease, the wake
timeout and the backoff end after the restart. The new server on the same database must
time out, requeue, reassign and unblock them all, which the HTTP API shows with events
written after the kill, each at or after its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow

T = TypeVar("T")
ADMIN = "deadlines-admin-token-0123456789"
# Passed while the server is down:
TIMEOUT_S = 3
RUN_AT_S = 3
# Ahead at the restart (which takes a second or two):
LEASE_MS = 8000
WAKE_TIMEOUT_MS = 8000
BACKOFF_MS = 14_000  # base and cap: the retry comes 7 to 14 s after the failure
WAIT_S = 40.0
REQUEST_TIMEOUT_S = 10.0


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def wait_for(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")
        time.sleep(0.05)


class Api:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"X-Agent-ID": "requester"}, timeout=REQUEST_TIMEOUT_S
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, url: str, agent: str | None = None, **kwargs: Any) -> Any:
        headers = {"X-Agent-ID": agent} if agent else {}
        r = self.http.request(method, url, headers=headers, **kwargs)
        assert r.status_code in (200, 201), f"{method} {url}: {r.status_code} {r.text}"
        return r.json()

    def register(self, agent: str, capability: str) -> None:
        self.call("POST", "/api/v1/agents", agent, json={"capabilities": [capability]})

    def create(self, **body: Any) -> dict[str, Any]:
        return dict(self.call("POST", "/api/v1/tasks", json={"title": "deadline", **body}))

    def act(self, task_id: str, action: str, agent: str, **body: Any) -> dict[str, Any]:
        return dict(self.call("POST", f"/api/v1/tasks/{task_id}/{action}", agent, json=body))

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/tasks/{task_id}"))

    def events(self, task_id: str, kind: str) -> list[dict[str, Any]]:
        found = self.call("GET", f"/api/v1/tasks/{task_id}/events")["events"]
        return [e for e in found if e["type"] == kind]

    def first_event(self, task_id: str, kind: str, check: Callable[[Any], bool] = bool) -> Any:
        def probe() -> dict[str, Any] | None:
            return next((e for e in self.events(task_id, kind) if check(e)), None)

        return wait_for(probe, f"{kind} of task {task_id}")


@pytest.fixture
def api_of() -> Iterator[Callable[[str], Api]]:
    opened: list[Api] = []

    def open_api(base_url: str) -> Api:
        api = Api(base_url)
        opened.append(api)
        return api

    yield open_api
    for api in opened:
        api.close()


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_deadlines_pending_at_a_kill_are_honoured_after_restart(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest, api_of: Callable[[str], Api]
) -> None:
    env = {
        "DISPATCH_ADMIN_TOKEN": ADMIN,
        "DISPATCH_TICK_INTERVAL_MS": "200",
        "DISPATCH_ASSIGNMENT__LEASE_MS": str(LEASE_MS),
        "DISPATCH_ASSIGNMENT__WAKE_TIMEOUT_MS": str(WAKE_TIMEOUT_MS),
        "DISPATCH_RETRY__BACKOFF_BASE_MS": str(BACKOFF_MS),
        "DISPATCH_RETRY__BACKOFF_CAP_MS": str(BACKOFF_MS),
    }
    if engine == "postgres":
        env["DISPATCH_DATABASE_URL"] = request.getfixturevalue("postgres_empty_url")

    with ServerProcess(tmp_path, env=env) as first:
        api = api_of(first.api_url)
        for agent, capability in [
            ("runner", "c-timeout"),
            ("silent", "c-lease"),
            ("sleepy", "c-wake"),
            ("flaky", "c-backoff"),
            ("later", "c-run-at"),
        ]:
            api.register(agent, capability)
        # Each task is named to its agent, so it is held from its creation on.
        timeout = api.create(
            capabilities=["c-timeout"], assigned_to="runner", timeout_s=TIMEOUT_S, max_attempts=1
        )
        api.act(timeout["id"], "start", "runner")
        lease = api.create(capabilities=["c-lease"], assigned_to="silent", max_attempts=3)
        api.act(lease["id"], "start", "silent")
        wake = api.create(capabilities=["c-wake"], assigned_to="sleepy")
        backoff = api.create(capabilities=["c-backoff"], assigned_to="flaky", max_attempts=2)
        api.act(backoff["id"], "fail", "flaky", error="flaky")
        run_at = datetime.now(UTC) + timedelta(seconds=RUN_AT_S)
        blocked = api.create(capabilities=["c-run-at"], run_at=run_at.isoformat())

        before = {t["id"]: api.task(t["id"]) for t in (timeout, lease, wake, backoff, blocked)}
        first.kill()
        killed_at = datetime.now(UTC)

    held = before[timeout["id"]], before[lease["id"]], before[wake["id"]]
    assert [t["status"] for t in held] == ["running", "running", "assigned"]
    assert before[backoff["id"]]["status"] == "pending"
    assert before[blocked["id"]]["status"] == "blocked"
    deadlines = {
        timeout["id"]: ts(before[timeout["id"]]["deadline_at"]),
        lease["id"]: ts(before[lease["id"]]["lease_expires_at"]),
        wake["id"]: ts(before[wake["id"]]["lease_expires_at"]),
        backoff["id"]: ts(before[backoff["id"]]["retry_at"]),
        blocked["id"]: run_at,
    }
    # Down until the timeout and the run_at have passed: the new server starts with them due.
    overdue = max(deadlines[timeout["id"]], run_at)
    time.sleep(max((overdue - datetime.now(UTC)).total_seconds(), 0) + 0.2)

    with ServerProcess(tmp_path, env=env) as second:
        api = api_of(second.api_url)

        def after_kill(event: dict[str, Any]) -> bool:
            # Written by the restarted server, once the task's deadline had passed.
            assert ts(event["created_at"]) > killed_at, event
            assert ts(event["created_at"]) >= deadlines[event["task_id"]], event
            return True

        # Running past its timeout, no attempts left: timed out for good.
        timed_out = api.first_event(timeout["id"], "task.timed_out")
        assert after_kill(timed_out) and timed_out["data"]["final"] is True
        assert api.task(timeout["id"])["status"] == "timed_out"

        # Running under a silent agent: requeued as lost, the agent taken as gone; handed
        # out again once the agent is heard from.
        requeued = api.first_event(lease["id"], "task.requeued")
        assert after_kill(requeued)
        assert requeued["data"]["reason"] == "lease expired: no heartbeat or progress from silent"
        assert api.call("GET", "/api/v1/agents/silent")["status"] == "offline"
        api.call("POST", "/api/v1/agents/silent/heartbeat", "silent", json={})
        again = api.first_event(lease["id"], "task.assigned", lambda e: e["data"]["attempt"] == 2)
        assert again["agent_id"] == "silent" and ts(again["created_at"]) > killed_at

        # Assigned and never started: requeued, and its agent taken as gone.
        not_started = api.first_event(wake["id"], "task.requeued")
        assert after_kill(not_started)
        assert not_started["data"]["reason"].startswith("not started by sleepy")
        sleepy = wait_for(
            lambda: api.call("GET", "/api/v1/agents/sleepy")["status"] == "offline",
            "sleepy to be marked offline",
        )
        assert sleepy
        lost = api.task(wake["id"])
        assert lost["attempts"][0]["outcome"] == "lost" and lost["requeues"] == 1

        # Failed with a backoff pending: handed out again once the backoff ended.
        retried = api.first_event(
            backoff["id"], "task.assigned", lambda e: e["data"]["attempt"] == 2
        )
        assert after_kill(retried) and retried["agent_id"] == "flaky"

        # Blocked until run_at: unblocked, then assigned.
        unblocked = api.first_event(blocked["id"], "task.unblocked")
        assert after_kill(unblocked)
        assigned = api.first_event(blocked["id"], "task.assigned")
        assert assigned["agent_id"] == "later"

        assert second.stop() == 0, second.describe()
