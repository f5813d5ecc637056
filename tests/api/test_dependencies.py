"""Dependencies (SPEC §2): `depends_on` keeps a task blocked until every parent is completed,
then it is pending with the parents' results in `context.inputs`; a parent that fails, times
out or is cancelled for good fails the child with the reason, and the child's children."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
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
    assert_error,
    create_task,
    detail,
    eventually,
    iso,
    task_events,
    ts,
    wait_task,
)

RACE_ROUNDS = 25


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "assignment": {"lease_ms": 10_000, "wake_timeout_ms": 5000, "tick_interval_ms": 200},
        "retry": {"backoff_base_ms": 50, "backoff_cap_ms": 100},
    }


# --- helpers ----------------------------------------------------------------------------


async def running_parent(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """A task held by w1 (named at creation, so assigned in the same commit)."""
    task = await create_task(client, assigned_to="w1", capabilities=["code"], **body)
    assert task["status"] == "assigned", task
    return task


async def chain(client: httpx.AsyncClient, parent: dict[str, Any]) -> tuple[str, str]:
    child = await create_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    grandchild = await create_task(client, depends_on=[child["id"]], capabilities=["docs"])
    assert child["status"] == grandchild["status"] == "blocked"
    return child["id"], grandchild["id"]


async def assert_chain_failed(
    client: httpx.AsyncClient, parent_id: str, child_id: str, grandchild_id: str, reason: str
) -> None:
    child, grandchild = await detail(client, child_id), await detail(client, grandchild_id)
    assert child["status"] == "failed" and child["error"] == f"dependency {parent_id} {reason}"
    assert grandchild["status"] == "failed"
    assert grandchild["error"] == f"dependency {child_id} failed"
    assert child["attempts"] == [] and grandchild["attempts"] == []
    for task_id, parent in ((child_id, parent_id), (grandchild_id, child_id)):
        (failed,) = await task_events(client, task_id, "task.failed")
        assert failed["data"]["dependency"] == parent and failed["data"]["final"] is True


@pytest.fixture
async def w1(register: Register) -> str:
    await register("w1", ["code"], max_concurrent=1000)
    return "w1"


# --- waiting for parents ------------------------------------------------------------------


@BOTH
async def test_child_waits_for_every_parent_then_gets_their_results(
    client: httpx.AsyncClient, register: Register, w1: str
) -> None:
    await register("writer", ["docs"])
    first, second = await running_parent(client), await running_parent(client)
    child = await create_task(client, depends_on=[first["id"], second["id"]], capabilities=["docs"])
    assert child["status"] == "blocked" and child["assignee"] is None

    await act(client, first["id"], "complete", w1, result={"part": 1})
    assert (await detail(client, child["id"]))["status"] == "blocked"
    await act(client, second["id"], "complete", w1, result=[2, "two"])
    # Unblocked in the same commit as the last parent's completion.
    ready = await detail(client, child["id"])
    assert ready["status"] in ("pending", "assigned")
    assert ready["context"]["inputs"] == {first["id"]: {"part": 1}, second["id"]: [2, "two"]}
    await wait_task(
        client, child["id"], lambda t: t["assignee"] == "writer", "assignment to writer"
    )
    assert len(await task_events(client, child["id"], "task.unblocked")) == 1


@BOTH
async def test_a_parent_in_review_is_not_yet_completed(
    client: httpx.AsyncClient, w1: str, admin: dict[str, str]
) -> None:
    parent = await running_parent(client, review=True)
    child = await create_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    reviewed = await act(client, parent["id"], "complete", w1, result="draft")
    assert reviewed["status"] == "review"
    assert (await detail(client, child["id"]))["status"] == "blocked"

    r = await client.post(
        f"/api/v1/tasks/{parent['id']}/review", json={"verdict": "approved"}, headers=admin
    )
    assert r.status_code == 200 and r.json()["status"] == "completed"
    ready = await detail(client, child["id"])
    assert ready["status"] == "pending" and ready["context"]["inputs"] == {parent["id"]: "draft"}


@BOTH
async def test_a_parent_failing_with_retries_left_keeps_the_child_blocked(
    client: httpx.AsyncClient, w1: str
) -> None:
    parent = await running_parent(client, max_attempts=2)
    child = await create_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    retrying = await act(client, parent["id"], "fail", w1, error="flaky")
    assert retrying["status"] == "pending"
    assert (await detail(client, child["id"]))["status"] == "blocked"

    await wait_task(
        client, parent["id"], lambda t: t["status"] == "assigned" and t["attempt"] == 2, "retry"
    )
    await act(client, parent["id"], "complete", w1, result="second time")
    ready = await detail(client, child["id"])
    assert ready["status"] == "pending"
    assert ready["context"]["inputs"] == {parent["id"]: "second time"}


# --- parents that end badly -----------------------------------------------------------------


@BOTH
async def test_a_parent_failing_for_good_fails_its_descendants(
    client: httpx.AsyncClient, w1: str
) -> None:
    parent = await running_parent(client, max_attempts=1)
    child, grandchild = await chain(client, parent)
    await act(client, parent["id"], "fail", w1, error="broken")
    await assert_chain_failed(client, parent["id"], child, grandchild, "failed")


@BOTH
async def test_a_parent_timing_out_for_good_fails_its_descendants(
    client: httpx.AsyncClient, w1: str
) -> None:
    parent = await running_parent(client, max_attempts=1, timeout_s=1)
    child, grandchild = await chain(client, parent)
    await act(client, parent["id"], "start", w1)
    await wait_task(client, parent["id"], lambda t: t["status"] == "timed_out", "its timeout")
    await assert_chain_failed(client, parent["id"], child, grandchild, "timed_out")


@BOTH
async def test_a_cancelled_parent_fails_its_descendants(client: httpx.AsyncClient, w1: str) -> None:
    parent = await running_parent(client)
    child, grandchild = await chain(client, parent)
    r = await client.patch(f"/api/v1/tasks/{parent['id']}", json={"status": "cancelled"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    await assert_chain_failed(client, parent["id"], child, grandchild, "cancelled")


@BOTH
async def test_one_dead_parent_fails_the_child_while_others_still_run(
    client: httpx.AsyncClient, w1: str
) -> None:
    alive, doomed = await running_parent(client), await running_parent(client, max_attempts=1)
    child = await create_task(client, depends_on=[alive["id"], doomed["id"]], capabilities=["docs"])
    await act(client, doomed["id"], "fail", w1, error="broken", retryable=False)
    failed = await detail(client, child["id"])
    assert failed["status"] == "failed" and failed["error"] == f"dependency {doomed['id']} failed"
    # The other parent finishing later changes nothing.
    await act(client, alive["id"], "complete", w1, result="late")
    assert (await detail(client, child["id"]))["status"] == "failed"


async def test_a_parent_lost_for_the_fifth_time_fails_its_child(
    client: httpx.AsyncClient, register: Register, w1: str
) -> None:
    parent = await running_parent(client)
    child = await create_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    # Its agent leaves (the task is requeued) and comes back (it is handed the task again).
    for attempt in range(1, LOST_REQUEUES):
        r = await client.delete(f"/api/v1/agents/{w1}", headers=as_agent(w1))
        assert r.status_code == 200 and r.json()["requeued"] == [parent["id"]]
        await register(w1, ["code"], max_concurrent=1000)
        await wait_task(
            client,
            parent["id"],
            lambda t, n=attempt: t["status"] == "assigned" and t["attempt"] == n + 1,
            f"reassignment {attempt}",
        )
    r = await client.delete(f"/api/v1/agents/{w1}", headers=as_agent(w1))
    assert r.status_code == 200 and r.json()["requeued"] == [parent["id"]]
    lost = await detail(client, parent["id"])
    assert lost["status"] == "failed" and lost["requeues"] == LOST_REQUEUES
    failed = await detail(client, child["id"])
    assert failed["status"] == "failed" and failed["error"] == f"dependency {parent['id']} failed"


# --- parents already finished at creation -----------------------------------------------------


@BOTH
async def test_a_child_of_a_completed_parent_is_pending_at_once(
    client: httpx.AsyncClient, register: Register, w1: str
) -> None:
    parent = await running_parent(client)
    await act(client, parent["id"], "complete", w1, result={"n": 42})
    await register("writer", ["docs"])
    child = await create_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    assert child["status"] in ("pending", "assigned")
    assert child["context"]["inputs"] == {parent["id"]: {"n": 42}}
    await wait_task(client, child["id"], lambda t: t["assignee"] == "writer", "assignment")


@BOTH
@pytest.mark.parametrize("ending", ["failed", "cancelled"])
async def test_a_child_of_a_dead_parent_is_failed_at_once(
    client: httpx.AsyncClient, w1: str, ending: str
) -> None:
    parent = await running_parent(client, max_attempts=1)
    if ending == "failed":
        await act(client, parent["id"], "fail", w1, error="broken")
    else:
        r = await client.patch(f"/api/v1/tasks/{parent['id']}", json={"status": "cancelled"})
        assert r.status_code == 200
    child = await create_task(client, depends_on=[parent["id"]], capabilities=["docs"])
    assert child["status"] == "failed"
    assert child["error"] == f"dependency {parent['id']} {ending}"
    assert child["finished_at"] is not None


@BOTH
async def test_an_unknown_dependency_is_refused(client: httpx.AsyncClient, w1: str) -> None:
    known = await running_parent(client)
    r = await client.post(
        "/api/v1/tasks", json={"title": "orphan", "depends_on": [known["id"], "no-such-task"]}
    )
    error = assert_error(r, 422, "unknown_dependency")
    assert "no-such-task" in error["message"]
    assert error["details"]["missing"] == ["no-such-task"]
    listed = await client.get("/api/v1/tasks")
    assert [t["id"] for t in listed.json()["items"]] == [known["id"]]


# --- races and deferral -----------------------------------------------------------------------


@BOTH
async def test_a_child_created_as_its_parent_completes_is_never_left_blocked(
    client: httpx.AsyncClient, w1: str
) -> None:
    children: list[tuple[str, str]] = []
    for round_ in range(RACE_ROUNDS):
        parent = await running_parent(client)

        async def complete(parent_id: str = parent["id"], n: int = round_) -> None:
            await act(client, parent_id, "complete", w1, result=n)

        async def spawn(parent_id: str = parent["id"]) -> None:
            child = await create_task(client, depends_on=[parent_id], capabilities=["docs"])
            children.append((child["id"], parent_id))

        # Alternate which request is sent first.
        jobs = [spawn(), complete(), spawn()] if round_ % 2 else [complete(), spawn(), spawn()]
        await asyncio.gather(*jobs)

    results = {}
    for child_id, parent_id in children:
        results.setdefault(parent_id, (await detail(client, parent_id))["result"])
        child = await detail(client, child_id)
        assert child["status"] in ("pending", "assigned"), child
        assert child["context"]["inputs"] == {parent_id: results[parent_id]}
    assert len(children) == 2 * RACE_ROUNDS


@BOTH
async def test_run_at_and_depends_on_wait_for_both(
    client: httpx.AsyncClient, w1: str, runtime: Runtime
) -> None:
    early, late = await running_parent(client), await running_parent(client)
    now = datetime.now(UTC)
    # `deferred` waits for its run_at after its parent is done ...
    deferred_at = now + timedelta(seconds=1)
    deferred = await create_task(
        client, depends_on=[early["id"]], run_at=iso(deferred_at), capabilities=["docs"]
    )
    # ... `waiting` for its parent after its run_at has come.
    waiting_at = now + timedelta(seconds=0.3)
    waiting = await create_task(
        client, depends_on=[late["id"]], run_at=iso(waiting_at), capabilities=["docs"]
    )
    assert deferred["status"] == waiting["status"] == "blocked"

    await act(client, early["id"], "complete", w1, result="early")
    ready = await wait_task(client, deferred["id"], lambda t: t["status"] == "pending", "run_at")
    assert ready["context"]["inputs"] == {early["id"]: "early"}
    (unblocked,) = await task_events(client, deferred["id"], "task.unblocked")
    assert ts(unblocked["created_at"]) >= deferred_at

    # The sweeper has looked at `waiting` since its run_at came, and left it blocked.
    await eventually(
        lambda: runtime.sweeper.since > waiting_at, "a sweep after the run_at of the waiting task"
    )
    assert (await detail(client, waiting["id"]))["status"] == "blocked"
    await act(client, late["id"], "complete", w1, result="late")
    ready = await detail(client, waiting["id"])
    assert ready["status"] == "pending" and ready["context"]["inputs"] == {late["id"]: "late"}
