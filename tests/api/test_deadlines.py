"""Deadlines with the sweeper running (SPEC §2, §3): timeouts, leases renewed by progress and
heartbeats, lost agents, retries with backoff, `run_at`, and the wake timeout.

Every wait polls the API with a generous deadline; what must not happen before a deadline
is checked on the event timestamps, written by the same clock as the deadlines.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from dispatchd.domain.models import Task
from dispatchd.runtime import Runtime
from dispatchd.store.base import InsertTask
from tests.api.conftest import as_agent, make_settings
from tests.api.helpers import (
    BOTH,
    LOST_REQUEUES,
    Register,
    act,
    agent_status,
    create_code_task,
    detail,
    eventually,
    heartbeat,
    iso,
    task_events,
    ts,
    wait_assigned,
    wait_task,
)

BACKOFF_BASE_MS = 50
BACKOFF_CAP_MS = 200


def config(
    *, lease_ms: int = 1000, wake_timeout_ms: int = 5000, default_timeout_ms: int = 300_000
) -> dict[str, Any]:
    return {
        "assignment": {
            "lease_ms": lease_ms,
            "wake_timeout_ms": wake_timeout_ms,
            "tick_interval_ms": 200,
            "default_timeout_ms": default_timeout_ms,
        },
        "retry": {"backoff_base_ms": BACKOFF_BASE_MS, "backoff_cap_ms": BACKOFF_CAP_MS},
    }


# Timeouts are tested with a lease far longer than the timeout, so only the timeout lapses.
LONG_LEASE = pytest.mark.parametrize("settings_overrides", [config(lease_ms=10_000)], ids=["lease"])


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return config()


# --- helpers ----------------------------------------------------------------------------


async def wait_event(client: httpx.AsyncClient, task_id: str, kind: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await task_events(client, task_id, kind)
        return found[0] if found else None

    return await eventually(probe, f"{kind} of task {task_id}")


# --- timeouts ---------------------------------------------------------------------------


@BOTH
@LONG_LEASE
async def test_running_task_past_its_timeout_times_out_for_good(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"])
    task = await create_code_task(client, timeout_s=1, max_attempts=1)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    started = await act(client, task["id"], "start", "w1")
    assert ts(started["deadline_at"]) - ts(started["started_at"]) == timedelta(seconds=1)

    done = await wait_task(client, task["id"], lambda t: t["status"] != "running", "a timeout")
    assert done["status"] == "timed_out"
    assert done["error"] == "timed out after 1s"
    assert done["finished_at"] is not None and done["deadline_at"] is None
    assert [a["outcome"] for a in done["attempts"]] == ["timed_out"]
    (final,) = await task_events(client, task["id"], "task.timed_out")
    assert final["data"]["final"] is True
    assert ts(final["created_at"]) >= ts(started["deadline_at"])
    assert await task_events(client, task["id"], "task.retrying") == []


@BOTH
@LONG_LEASE
async def test_timeout_with_attempts_left_retries_and_reassigns(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"])
    task = await create_code_task(client, timeout_s=1, max_attempts=2)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    started = await act(client, task["id"], "start", "w1")

    again = await wait_assigned(client, task["id"], "w1", attempt=2)
    assert [a["outcome"] for a in again["attempts"]] == ["timed_out", None]
    assert again["attempts"][0]["error"] == "timed out after 1s"
    (retrying,) = await task_events(client, task["id"], "task.retrying")
    assert retrying["data"]["reason"] == "timed_out" and retrying["data"]["attempt"] == 1
    assert ts(retrying["created_at"]) >= ts(started["deadline_at"])
    assigned = await task_events(client, task["id"], "task.assigned")
    assert [e["data"]["attempt"] for e in assigned] == [1, 2]
    assert ts(assigned[1]["created_at"]) >= ts(retrying["data"]["retry_at"])
    assert await task_events(client, task["id"], "task.timed_out") == []


@pytest.mark.parametrize(
    "settings_overrides", [config(lease_ms=10_000, default_timeout_ms=3000)], ids=["3000ms"]
)
async def test_default_timeout_comes_from_config(
    client: httpx.AsyncClient, register: Register
) -> None:
    """The deadline the sweeper acts on (see above) is set from the configured default."""
    await register("w1", ["code"], max_concurrent=2)
    default = await create_code_task(client, assigned_to="w1")
    own = await create_code_task(client, assigned_to="w1", timeout_s=7)
    assert default["timeout_s"] is None
    for task, seconds in ((default, 3), (own, 7)):
        started = await act(client, task["id"], "start", "w1")
        assert ts(started["deadline_at"]) - ts(started["started_at"]) == timedelta(seconds=seconds)


def test_default_timeout_below_one_second_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="default_timeout_ms"):
        make_settings(tmp_path, assignment={"default_timeout_ms": 999})
    assert make_settings(tmp_path, assignment={"default_timeout_ms": 1000})


@pytest.mark.parametrize(
    "settings_overrides", [config(lease_ms=10_000, default_timeout_ms=1500)], ids=["1500ms"]
)
async def test_default_timeout_keeps_its_milliseconds(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"])
    task = await create_code_task(client, assigned_to="w1")
    started = await act(client, task["id"], "start", "w1")
    assert ts(started["deadline_at"]) - ts(started["started_at"]) == timedelta(milliseconds=1500)


# --- leases -----------------------------------------------------------------------------


async def test_progress_and_heartbeats_keep_a_task_past_its_lease(
    client: httpx.AsyncClient, register: Register
) -> None:
    """lease_ms is 1000: progress for 1.2 s, then heartbeats for 1.2 s, every 300 ms."""
    await register("w1", ["code"])
    task = await create_code_task(client)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    started = await act(client, task["id"], "start", "w1")
    loop = asyncio.get_running_loop()

    until = loop.time() + 1.2
    while loop.time() < until:
        # A lapsed lease would make this 409 (the task requeued): it fails at once.
        await act(client, task["id"], "progress", "w1", message="working")
        await asyncio.sleep(0.3)
    until = loop.time() + 1.2
    while loop.time() < until:
        await heartbeat(client, "w1")
        await asyncio.sleep(0.3)

    alive = await detail(client, task["id"])
    assert alive["status"] == "running" and alive["attempt"] == 1 and alive["requeues"] == 0
    assert ts(alive["lease_expires_at"]) > ts(started["started_at"]) + timedelta(seconds=2.3)
    assert await task_events(client, task["id"], "task.requeued") == []


@BOTH
async def test_a_heartbeat_landing_during_a_lease_sweep_wins(
    client: httpx.AsyncClient,
    register: Register,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep reads the lapsed task, the agent is heard from, then the sweep writes."""
    await register("w1", ["code"])
    task = await create_code_task(client)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    started = await act(client, task["id"], "start", "w1")

    sweeper = runtime.sweeper
    decide = sweeper._lease_lost
    heard: list[int] = []
    renewed: list[datetime | None] = []

    async def lease_lost_with_a_heartbeat_in_between(current: Task, now: datetime) -> Any:
        steps = await decide(current, now)
        if steps and not heard:
            r = await client.post("/api/v1/agents/w1/heartbeat", json={}, headers=as_agent("w1"))
            heard.append(r.status_code)
            fresh = await runtime.store.get_task(current.id)
            renewed.append(fresh.lease_expires_at if fresh else None)
        return steps

    monkeypatch.setattr(sweeper, "_lease_lost", lease_lost_with_a_heartbeat_in_between)

    (lease,) = await eventually(lambda: renewed, "a lease sweep of the silent agent's task")
    assert heard == [200]
    assert lease is not None and lease > ts(started["lease_expires_at"])
    # The sweep that read the lapsed lease wrote nothing: a requeue, if any by now, is
    # one of the renewed lease lapsing in turn.
    alive = await detail(client, task["id"])
    requeued = await task_events(client, task["id"], "task.requeued")
    assert all(ts(e["created_at"]) >= lease for e in requeued), requeued
    assert alive["status"] == "running" or requeued, alive


@BOTH
async def test_silent_agent_loses_its_task(
    client: httpx.AsyncClient, register: Register, runtime: Runtime
) -> None:
    await register("w1", ["code"])
    task = await create_code_task(client, max_attempts=3)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    started = await act(client, task["id"], "start", "w1")

    requeued = await wait_event(client, task["id"], "task.requeued")
    assert requeued["agent_id"] == "w1" and requeued["data"]["requeues"] == 1
    assert requeued["data"]["reason"] == "lease expired: no heartbeat or progress from w1"
    assert ts(requeued["created_at"]) >= ts(started["lease_expires_at"])
    # Silent for a whole lease, w1 went offline in the same commit: the task waits for it.
    log = await runtime.store.read_events(after=0, limit=1000)
    (offline,) = [e for e in log if e.type == "agent.status_changed"]
    assert offline.agent_id == "w1" and offline.data["status"] == "offline"
    assert offline.id == int(requeued["id"]) + 1
    assert (await detail(client, task["id"]))["status"] == "pending"
    # Heard from again, w1 is the only capable agent; the lost attempt is not counted.
    await heartbeat(client, "w1")
    again = await wait_assigned(client, task["id"], "w1", attempt=2)
    assert again["requeues"] == 1 and again["max_attempts"] == 4
    first = again["attempts"][0]
    assert first["outcome"] == "lost" and first["error"] == requeued["data"]["reason"]
    assert first["ended_at"] is not None


async def test_fifth_lost_lease_fails_the_task(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"])
    task = await create_code_task(client, max_attempts=1)
    for attempt in range(1, LOST_REQUEUES + 1):
        await wait_assigned(client, task["id"], "w1", attempt=attempt)
        await act(client, task["id"], "start", "w1")
        await wait_task(
            client, task["id"], lambda t: t["status"] != "running", f"lease {attempt} to lapse"
        )
        await heartbeat(client, "w1")  # back from offline for the next attempt

    done = await detail(client, task["id"])
    assert done["status"] == "failed" and done["requeues"] == LOST_REQUEUES
    assert done["error"] == (
        f"requeued {LOST_REQUEUES} times; last: lease expired: no heartbeat or progress from w1"
    )
    assert [a["outcome"] for a in done["attempts"]] == ["lost"] * LOST_REQUEUES
    # Lost attempts do not spend the budget: one is granted back for each requeue.
    assert done["max_attempts"] == 1 + LOST_REQUEUES - 1
    assert len(await task_events(client, task["id"], "task.requeued")) == LOST_REQUEUES - 1
    (failed,) = await task_events(client, task["id"], "task.failed")
    assert failed["data"]["final"] is True


# --- retries ----------------------------------------------------------------------------


@BOTH
async def test_retries_back_off_exponentially_with_jitter(
    client: httpx.AsyncClient, register: Register
) -> None:
    attempts = 5
    await register("w1", ["code"])
    task = await create_code_task(client, max_attempts=attempts)
    for attempt in range(1, attempts + 1):
        await wait_assigned(client, task["id"], "w1", attempt=attempt)
        failed = await act(client, task["id"], "fail", "w1", error=f"flaky {attempt}")
        if attempt < attempts:
            assert failed["status"] == "pending" and failed["retry_at"] is not None
    assert failed["status"] == "failed" and failed["error"] == f"flaky {attempts}"

    retrying = await task_events(client, task["id"], "task.retrying")
    assigned = await task_events(client, task["id"], "task.assigned")
    assert len(retrying) == attempts - 1 and len(assigned) == attempts
    fractions = []
    for number, (retry, next_assignment) in enumerate(
        zip(retrying, assigned[1:], strict=True), start=1
    ):
        assert retry["data"]["attempt"] == number and retry["data"]["reason"] == "failed"
        ceiling = timedelta(milliseconds=min(BACKOFF_BASE_MS * 2 ** (number - 1), BACKOFF_CAP_MS))
        delay = ts(retry["data"]["retry_at"]) - ts(retry["created_at"])
        assert ceiling / 2 <= delay <= ceiling, (number, delay)
        fractions.append((delay - ceiling / 2) / (ceiling / 2))
        # Not handed out again before the backoff ended, and handed out after it.
        assert ts(next_assignment["created_at"]) >= ts(retry["data"]["retry_at"]), number
    assert len(set(fractions)) > 1, f"no jitter: {fractions}"
    (final,) = await task_events(client, task["id"], "task.failed")
    assert final["data"]["final"] is True


@BOTH
async def test_a_non_retryable_failure_is_final_at_once(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"])
    task = await create_code_task(client, max_attempts=3)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    await act(client, task["id"], "start", "w1")
    failed = await act(client, task["id"], "fail", "w1", error="bad input", retryable=False)
    assert failed["status"] == "failed" and failed["retry_at"] is None
    assert failed["attempt"] == 1 and failed["finished_at"] is not None
    assert await task_events(client, task["id"], "task.retrying") == []
    (final,) = await task_events(client, task["id"], "task.failed")
    assert final["data"] == {"error": "bad input", "final": True}


# --- run_at and the wake timeout ----------------------------------------------------------


@BOTH
async def test_run_at_in_the_future_keeps_the_task_blocked_until_then(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"])
    run_at = datetime.now(UTC) + timedelta(seconds=0.4)
    task = await create_code_task(client, run_at=iso(run_at))
    assert task["status"] == "blocked" and task["assignee"] is None

    await wait_assigned(client, task["id"], "w1", attempt=1)
    (unblocked,) = await task_events(client, task["id"], "task.unblocked")
    (assigned,) = await task_events(client, task["id"], "task.assigned")
    assert ts(unblocked["created_at"]) >= run_at
    assert ts(assigned["created_at"]) >= ts(unblocked["created_at"])


@BOTH
@pytest.mark.parametrize("settings_overrides", [config(wake_timeout_ms=500)], ids=["wake"])
async def test_a_task_not_started_within_the_wake_timeout_goes_elsewhere(
    client: httpx.AsyncClient, register: Register
) -> None:
    # Equal candidates: the task goes to a1 first (ties go by id among the never assigned).
    await register("a1", ["code"])
    await register("a2", ["code"])
    task = await create_code_task(client)

    moved = await wait_task(client, task["id"], lambda t: len(t["attempts"]) >= 2, "attempt 2")
    lost, second = moved["attempts"][:2]
    assert lost["agent_id"] == "a1" and lost["outcome"] == "lost" and lost["started_at"] is None
    assert second["agent_id"] == "a2"
    requeued = (await task_events(client, task["id"], "task.requeued"))[0]
    assert requeued["agent_id"] == "a1"
    assert requeued["data"]["reason"] == "not started by a1 within the wake timeout (0.5s)"
    waited = ts(requeued["created_at"]) - ts(lost["assigned_at"])
    assert waited >= timedelta(milliseconds=500)

    # a1 was not heard from either: it is taken as gone (in a write after the requeue).
    async def a1_offline() -> bool:
        return await agent_status(client, "a1") == "offline"

    await eventually(a1_offline, "a1 to be marked offline")


async def test_a_run_at_passing_while_the_task_is_being_created_still_unblocks_it(
    client: httpx.AsyncClient,
    register: Register,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweeper looks for run_at times after the last sweep; a task whose run_at falls
    between its creation and its commit (a sweep landing in that gap) must not be missed."""
    await register("w1", ["code"])
    store = runtime.store
    commit = store.commit
    run_at = datetime.now(UTC) + timedelta(milliseconds=300)

    async def commit_after_a_sweep(ops: Any) -> Any:
        if any(isinstance(op, InsertTask) and op.task.run_at == run_at for op in ops):
            # The task was judged deferred; its run_at comes and a sweep runs before it lands.
            await asyncio.sleep(max((run_at - datetime.now(UTC)).total_seconds(), 0) + 0.05)
            await runtime.sweeper.sweep()
        return await commit(ops)

    monkeypatch.setattr(store, "commit", commit_after_a_sweep)
    task = await create_code_task(client, run_at=iso(run_at))
    assert task["status"] == "blocked"
    # A sweep after the task is stored, with its run_at long past, must release it.
    await runtime.sweeper.sweep()
    assert (await detail(client, task["id"]))["status"] != "blocked"
