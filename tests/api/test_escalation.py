"""Escalation (SPEC §2): the last failure of a task emits `task.escalated`; with an escalation
capability (the task's `escalate_to`, else config `retry.escalate_to`) the task gets one more
attempt routed to it at raised priority, otherwise its requester is notified."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import (
    BOTH,
    LOST_REQUEUES,
    Register,
    act,
    create_code_task,
    detail,
    eventually,
    heartbeat,
    task_events,
    wait_assigned,
)


def config(*, wake_timeout_ms: int = 5000, escalate_to: str | None = None) -> dict[str, Any]:
    retry: dict[str, Any] = {"backoff_base_ms": 50, "backoff_cap_ms": 100}
    if escalate_to is not None:
        retry["escalate_to"] = escalate_to
    return {
        "assignment": {
            "lease_ms": 10_000,
            "wake_timeout_ms": wake_timeout_ms,
            "tick_interval_ms": 200,
        },
        "retry": retry,
    }


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return config()


# --- helpers ----------------------------------------------------------------------------


def of_type(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in found if e["type"] == kind]


async def first_assignment_to(
    client: httpx.AsyncClient, task_id: str, agent: str
) -> dict[str, Any] | None:
    found = await task_events(client, task_id, "task.assigned")
    return next((e for e in found if e["agent_id"] == agent), None)


async def escalated_flag(runtime: Runtime, task_id: str) -> bool:
    # The flag is internal to the task record; the API shows its effects and its event.
    task = await runtime.store.get_task(task_id)
    assert task is not None
    return task.escalated


@contextlib.asynccontextmanager
async def heartbeating(client: httpx.AsyncClient, agent: str) -> AsyncIterator[None]:
    """The agent stays alive (heartbeats every 100 ms) without starting its work."""

    async def beat() -> None:
        while True:
            await heartbeat(client, agent)
            await asyncio.sleep(0.1)

    job = asyncio.create_task(beat())
    try:
        yield
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job


# --- escalation to a capability -----------------------------------------------------------


@BOTH
async def test_last_failure_escalates_once_to_the_named_capability(
    client: httpx.AsyncClient, register: Register, runtime: Runtime
) -> None:
    await register("junior", ["code"])
    await register("senior", ["senior"])
    task = await create_code_task(client, priority="high", max_attempts=1, escalate_to="senior")
    await wait_assigned(client, task["id"], "junior", attempt=1)

    escalated = await act(client, task["id"], "fail", "junior", error="stuck")
    assert escalated["status"] == "pending" and escalated["assignee"] is None
    assert escalated["capabilities"] == ["senior"] and escalated["priority"] == "critical"
    assert escalated["max_attempts"] == 2 and escalated["error"] == "stuck"
    assert await escalated_flag(runtime, task["id"])
    log = await task_events(client, task["id"])
    failed, notice = of_type(log, "task.failed"), of_type(log, "task.escalated")
    assert [e["data"]["final"] for e in failed] == [True]
    assert len(notice) == 1 and int(notice[0]["id"]) > int(failed[0]["id"])
    assert notice[0]["data"]["to"] == "senior" and notice[0]["data"]["priority"] == "critical"
    assert notice[0]["data"]["previous"] == "failed" and notice[0]["data"]["error"] == "stuck"

    second = await wait_assigned(client, task["id"], "senior", attempt=2)
    assert [a["agent_id"] for a in second["attempts"]] == ["junior", "senior"]

    # The escalated attempt fails too: final, with a notice, and no second escalation.
    done = await act(client, task["id"], "fail", "senior", error="still stuck")
    assert done["status"] == "failed" and done["attempt"] == 2 and done["retry_at"] is None
    log = await task_events(client, task["id"])
    notices = of_type(log, "task.escalated")
    assert len(notices) == 2
    assert notices[1]["data"]["to"] is None and notices[1]["data"]["notify"] == "alice"
    assert notices[1]["data"]["error"] == "still stuck"
    assert [e["data"]["attempt"] for e in of_type(log, "task.assigned")] == [1, 2]
    assert (await detail(client, task["id"]))["status"] == "failed"


async def test_escalation_goes_back_to_the_original_agent_only_if_it_has_the_capability(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("both", ["code", "senior"])
    await register("other", ["code"])
    task = await create_code_task(client, max_attempts=1, escalate_to="senior", assigned_to="both")
    assert task["status"] == "assigned"
    await act(client, task["id"], "fail", "both", error="stuck")
    again = await wait_assigned(client, task["id"], "both", attempt=2)
    assert [a["agent_id"] for a in again["attempts"]] == ["both", "both"]
    assert again["assigned_to"] is None


async def test_critical_priority_stays_critical(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("junior", ["code"])
    task = await create_code_task(client, priority="critical", max_attempts=1, escalate_to="senior")
    await wait_assigned(client, task["id"], "junior", attempt=1)
    escalated = await act(client, task["id"], "fail", "junior", error="stuck")
    assert escalated["priority"] == "critical" and escalated["status"] == "pending"
    (notice,) = await task_events(client, task["id"], "task.escalated")
    assert notice["data"]["priority"] == "critical"


@pytest.mark.parametrize("settings_overrides", [config(escalate_to="oncall")], ids=["config"])
async def test_config_escalation_applies_when_the_task_names_none(
    client: httpx.AsyncClient, register: Register, runtime: Runtime
) -> None:
    await register("junior", ["code"])
    await register("oncall", ["oncall"])
    await register("senior", ["senior"])
    task = await create_code_task(client, max_attempts=1)
    await wait_assigned(client, task["id"], "junior", attempt=1)
    escalated = await act(client, task["id"], "fail", "junior", error="stuck")
    assert escalated["capabilities"] == ["oncall"] and escalated["priority"] == "high"
    assert await escalated_flag(runtime, task["id"])
    await wait_assigned(client, task["id"], "oncall", attempt=2)

    # The task's own escalate_to wins over the configured one.
    own = await create_code_task(client, max_attempts=1, escalate_to="senior")
    await wait_assigned(client, own["id"], "junior", attempt=1)
    escalated = await act(client, own["id"], "fail", "junior", error="stuck")
    assert escalated["capabilities"] == ["senior"]
    await wait_assigned(client, own["id"], "senior", attempt=2)


@BOTH
async def test_without_escalation_target_the_requester_is_notified(
    client: httpx.AsyncClient, register: Register, runtime: Runtime
) -> None:
    await register("junior", ["code"])
    task = await create_code_task(client, max_attempts=1)
    await wait_assigned(client, task["id"], "junior", attempt=1)
    done = await act(client, task["id"], "fail", "junior", error="broken")
    assert done["status"] == "failed" and done["capabilities"] == ["code"]
    assert done["priority"] == "medium" and done["max_attempts"] == 1
    assert not await escalated_flag(runtime, task["id"])
    (notice,) = await task_events(client, task["id"], "task.escalated")
    assert notice["data"] == {
        "to": None,
        "notify": "alice",
        "status": "failed",
        "error": "broken",
    }
    assert notice["task_id"] == task["id"]


async def test_a_retryable_failure_with_attempts_left_does_not_escalate(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("junior", ["code"])
    task = await create_code_task(client, max_attempts=2, escalate_to="senior")
    await wait_assigned(client, task["id"], "junior", attempt=1)
    retrying = await act(client, task["id"], "fail", "junior", error="flaky")
    assert retrying["status"] == "pending" and retrying["capabilities"] == ["code"]
    await wait_assigned(client, task["id"], "junior", attempt=2)
    assert await task_events(client, task["id"], "task.escalated") == []


# --- other final failures -----------------------------------------------------------------


@BOTH
async def test_final_timeout_escalates(client: httpx.AsyncClient, register: Register) -> None:
    await register("junior", ["code"])
    await register("senior", ["senior"])
    task = await create_code_task(client, timeout_s=1, max_attempts=1, escalate_to="senior")
    await wait_assigned(client, task["id"], "junior", attempt=1)
    await act(client, task["id"], "start", "junior")

    again = await wait_assigned(client, task["id"], "senior", attempt=2)
    assert again["priority"] == "high" and again["capabilities"] == ["senior"]
    assert again["attempts"][0]["outcome"] == "timed_out"
    log = await task_events(client, task["id"])
    (timed_out,) = of_type(log, "task.timed_out")
    (notice,) = of_type(log, "task.escalated")
    assert timed_out["data"]["final"] is True and int(notice["id"]) > int(timed_out["id"])
    assert notice["data"]["to"] == "senior" and notice["data"]["previous"] == "timed_out"


@pytest.mark.parametrize("settings_overrides", [config(wake_timeout_ms=300)], ids=["wake"])
async def test_fifth_lost_requeue_escalates(client: httpx.AsyncClient, register: Register) -> None:
    """An agent that stays alive but never starts its task loses it five times."""
    await register("junior", ["code"])
    await register("senior", ["senior"])
    task = await create_code_task(client, max_attempts=1, escalate_to="senior")
    async with heartbeating(client, "junior"):
        handed = await eventually(
            lambda: first_assignment_to(client, task["id"], "senior"), "the escalated attempt"
        )
    # Read in order: senior, which never starts either, may lose the task later on.
    log = await task_events(client, task["id"])
    failed = of_type(log, "task.failed")[0]
    before = [e for e in log if int(e["id"]) < int(failed["id"])]
    assert len(of_type(before, "task.requeued")) == LOST_REQUEUES - 1
    assert [e["agent_id"] for e in of_type(before, "task.assigned")] == ["junior"] * 5
    assert failed["data"]["error"].startswith(f"requeued {LOST_REQUEUES} times")
    notice = of_type(log, "task.escalated")[0]
    assert int(failed["id"]) < int(notice["id"]) < int(handed["id"])
    assert notice["data"]["to"] == "senior" and notice["data"]["priority"] == "high"
    assert handed["data"]["attempt"] == LOST_REQUEUES + 1


async def test_fifth_loss_by_deregistration_escalates(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("junior", ["code"])
    await register("senior", ["senior"])
    task = await create_code_task(
        client, max_attempts=1, escalate_to="senior", assigned_to="junior"
    )
    # Its agent leaves (the task is requeued) and comes back (it is handed the task again).
    for attempt in range(1, LOST_REQUEUES):
        r = await client.delete("/api/v1/agents/junior", headers=as_agent("junior"))
        assert r.status_code == 200 and r.json()["requeued"] == [task["id"]]
        await register("junior", ["code"])
        await wait_assigned(client, task["id"], "junior", attempt=attempt + 1)
    r = await client.delete("/api/v1/agents/junior", headers=as_agent("junior"))
    assert r.status_code == 200 and r.json()["requeued"] == [task["id"]]
    log = await task_events(client, task["id"])
    assert of_type(log, "task.failed")[0]["data"]["error"].startswith("requeued 5 times")
    assert [e["data"]["to"] for e in of_type(log, "task.escalated")] == ["senior"]
    await wait_assigned(client, task["id"], "senior", attempt=LOST_REQUEUES + 1)


# --- dependencies -----------------------------------------------------------------------


@BOTH
async def test_a_dependency_failure_does_not_escalate_the_child(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("junior", ["code"])
    await register("senior", ["senior"])
    parent = await create_code_task(client, max_attempts=1)
    child = await create_code_task(
        client, depends_on=[parent["id"]], escalate_to="senior", capabilities=["docs"]
    )
    assert child["status"] == "blocked"
    await wait_assigned(client, parent["id"], "junior", attempt=1)
    await act(client, parent["id"], "fail", "junior", error="broken")

    failed = await detail(client, child["id"])
    assert failed["status"] == "failed" and failed["capabilities"] == ["docs"]
    assert failed["error"] == f"dependency {parent['id']} failed" and failed["attempts"] == []
    assert await task_events(client, child["id"], "task.escalated") == []
    # The parent's own last failure is what its requester hears about.
    (notice,) = await task_events(client, parent["id"], "task.escalated")
    assert notice["data"]["notify"] == "alice"


async def test_an_escalated_parent_keeps_its_child_blocked_until_it_ends(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("junior", ["code"])
    await register("senior", ["senior"])
    parent = await create_code_task(client, max_attempts=1, escalate_to="senior")
    child = await create_code_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    await wait_assigned(client, parent["id"], "junior", attempt=1)
    await act(client, parent["id"], "fail", "junior", error="stuck")
    assert (await detail(client, child["id"]))["status"] == "blocked"

    await wait_assigned(client, parent["id"], "senior", attempt=2)
    await act(client, parent["id"], "complete", "senior", result={"fixed": True})
    unblocked = await detail(client, child["id"])
    assert unblocked["status"] == "pending"
    assert unblocked["context"]["inputs"] == {parent["id"]: {"fixed": True}}
