"""Stale workers are refused (SPEC §2, §4 auth): a worker whose attempt was taken away
gets `409 stale_attempt` for every action, and its late report changes nothing.

An attempt is taken away when the task times out, when its lease lapses, when it is not
started within the wake timeout, or when its agent is deregistered; in each case the task
goes to another agent under a new attempt. The refused call must leave the task detail
(attempts, progress log), the agents' loads and the event log exactly as they were, and
the new holder must be able to finish the task normally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from dispatchd.domain.models import AgentStatus, Event
from dispatchd.runtime import Runtime
from dispatchd.store.base import AppendEvent, Op, UpdateAgent
from tests.api.conftest import as_agent
from tests.api.helpers import (
    BOTH,
    assert_error,
    create_code_task,
    detail,
    eventually,
    heartbeat,
    task_events,
    wait_assigned,
)

pytestmark = BOTH

# Every action only the holder of the current attempt may take; `complete` comes first:
# a late completion is the report that matters most.
WORKER_ACTIONS: list[tuple[str, dict[str, Any] | None]] = [
    ("complete", {"result": "late result", "summary": "late"}),
    ("start", None),
    ("progress", {"message": "still on it", "percent": 50}),
    ("fail", {"error": "late failure", "retryable": False}),
    ("input-request", {"question": "what now?"}),
]
FAST_SWEEPS = {"tick_interval_ms": 20}


async def snapshot(client: httpx.AsyncClient, runtime: Runtime, task_id: str) -> tuple[Any, ...]:
    """The task as its detail shows it (attempts, progress log), its events, every agent's
    load and version, and the whole event log."""
    events = await task_events(client, task_id)
    agents = await runtime.store.all_agents()
    log = await runtime.store.read_events(after=0, limit=10_000)
    return (
        await detail(client, task_id),
        events,
        sorted((a.id, a.active, a.status.value, a.version) for a in agents),
        [(e.id, e.type, e.task_id, e.agent_id, e.data) for e in log],
    )


async def post_action(
    client: httpx.AsyncClient, agent_id: str, task_id: str, action: str, body: Any = None
) -> httpx.Response:
    """POST /api/v1/tasks/{id}/{action} as `agent_id`; the response, whatever it is."""
    return await client.post(
        f"/api/v1/tasks/{task_id}/{action}", json=body, headers=as_agent(agent_id)
    )


async def assert_refused(
    client: httpx.AsyncClient,
    runtime: Runtime,
    agent_id: str,
    task_id: str,
    *,
    attempt: int | None = None,
) -> dict[str, Any]:
    """Every worker action by `agent_id` is refused with 409 stale_attempt and changes
    nothing; returns the last refusal's details."""
    details: dict[str, Any] = {}
    for action, body in WORKER_ACTIONS:
        sent = dict(body or {})
        if attempt is not None:
            sent["attempt"] = attempt
        before = await snapshot(client, runtime, task_id)
        r = await post_action(client, agent_id, task_id, action, sent or None)
        err = assert_error(r, 409, "stale_attempt")
        assert err["details"]["task_id"] == task_id, err
        assert await snapshot(client, runtime, task_id) == before, action
        details = err["details"]
    return details


async def assert_heartbeat_revives_nothing(
    client: httpx.AsyncClient, runtime: Runtime, agent_id: str, task_id: str
) -> None:
    """The stale agent is alive and says so: the task it lost stays where it is."""
    task_before, events_before, _, log_before = await snapshot(client, runtime, task_id)
    r = await client.post(
        f"/api/v1/agents/{agent_id}/heartbeat", json={"status": "ready"}, headers=as_agent(agent_id)
    )
    assert r.status_code == 200, r.text
    task_after, events_after, _, log_after = await snapshot(client, runtime, task_id)
    assert task_after == task_before
    assert events_after == events_before
    assert log_after[: len(log_before)] == log_before
    # Only news about the agent itself, nothing about any task.
    assert all(e[2] is None and e[3] == agent_id for e in log_after[len(log_before) :])


async def assert_new_holder_finishes(
    client: httpx.AsyncClient,
    task_id: str,
    old: str,
    new: str,
    old_outcome: str,
    *,
    started: bool = False,
) -> None:
    if not started:
        r = await post_action(client, new, task_id, "start", {"attempt": 2})
        assert r.status_code == 200, r.text
    r = await post_action(
        client, new, task_id, "complete", {"result": "by the new holder", "attempt": 2}
    )
    assert r.status_code == 200, r.text
    done = await detail(client, task_id)
    assert done["status"] == "completed" and done["result"] == "by the new holder"
    assert [(a["number"], a["agent_id"], a["outcome"]) for a in done["attempts"]] == [
        (1, old, old_outcome),
        (2, new, "completed"),
    ]
    # Each progress entry belongs to the attempt of the agent that sent it.
    holders = {a["number"]: a["agent_id"] for a in done["attempts"]}
    assert all(holders[p["attempt"]] == p["agent_id"] for p in done["progress_log"])
    # And once the task is done, the old holder is still refused.
    r = await post_action(client, old, task_id, "complete", {"result": "late"})
    assert_error(r, 409, "stale_attempt")
    assert (await detail(client, task_id))["result"] == "by the new holder"


async def start_with_standby(
    client: httpx.AsyncClient, register: Callable[..., Any], **task_fields: Any
) -> dict[str, Any]:
    """`w1` gets the task and starts it; then `w2`, preferred for the task, registers."""
    await register("w1", {"code": 0.5})
    task = await create_code_task(client, **task_fields)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    r = await post_action(client, "w1", task["id"], "start")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    await register("w2", {"code": 1.0})
    return task


# --- (a) the task timed out -------------------------------------------------------------


class TestTimedOut:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": FAST_SWEEPS, "retry": {"backoff_base_ms": 0}}

    async def test_timed_out_worker_is_refused(
        self, client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
    ) -> None:
        task = await start_with_standby(client, register, timeout_s=1)
        now = await wait_assigned(client, task["id"], "w2", attempt=2)
        assert now["attempts"][0]["outcome"] == "timed_out"

        details = await assert_refused(client, runtime, "w1", task["id"])
        assert details["assignee"] == "w2"
        # Naming the current attempt number does not make w1 its holder.
        await assert_refused(client, runtime, "w1", task["id"], attempt=2)
        await assert_heartbeat_revives_nothing(client, runtime, "w1", task["id"])
        await assert_new_holder_finishes(client, task["id"], "w1", "w2", "timed_out")


# --- (b) the lease lapsed ---------------------------------------------------------------


class TestLeaseLapsed:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": {**FAST_SWEEPS, "lease_ms": 1000}}

    async def test_worker_that_lost_its_lease_is_refused(
        self, client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
    ) -> None:
        task = await start_with_standby(client, register)
        now = await wait_assigned(client, task["id"], "w2", attempt=2)
        assert now["requeues"] == 1 and now["attempts"][0]["outcome"] == "lost"

        await assert_refused(client, runtime, "w1", task["id"])
        await assert_heartbeat_revives_nothing(client, runtime, "w1", task["id"])
        await assert_new_holder_finishes(client, task["id"], "w1", "w2", "lost")

    async def test_same_worker_again_with_the_old_attempt_is_refused(
        self, client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
    ) -> None:
        await register("w1", ["code"])
        task = await create_code_task(client)
        await wait_assigned(client, task["id"], "w1", attempt=1)
        r = await post_action(client, "w1", task["id"], "start", {"attempt": 1})
        assert r.status_code == 200, r.text

        # No heartbeat, no progress: the lease lapses and w1, silent as long, goes offline.
        async def requeued() -> bool:
            return (await detail(client, task["id"]))["status"] == "pending"

        await eventually(requeued, "the lapsed task to be requeued")
        # Heard from again and the only agent, w1 gets the task back under attempt 2,
        # while its old loop still says 1.
        await heartbeat(client, "w1")
        await wait_assigned(client, task["id"], "w1", attempt=2)

        details = await assert_refused(client, runtime, "w1", task["id"], attempt=1)
        assert (details["attempt"], details["current_attempt"]) == (1, 2)

        r = await post_action(client, "w1", task["id"], "start", {"attempt": 2})
        assert r.status_code == 200, r.text
        r = await post_action(
            client, "w1", task["id"], "complete", {"result": "second", "attempt": 2}
        )
        assert r.status_code == 200, r.text
        done = await detail(client, task["id"])
        assert done["status"] == "completed" and done["result"] == "second"
        assert [(a["number"], a["agent_id"], a["outcome"]) for a in done["attempts"]] == [
            (1, "w1", "lost"),
            (2, "w1", "completed"),
        ]


# --- (c) not started within the wake timeout ---------------------------------------------


class TestNotStarted:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": {**FAST_SWEEPS, "wake_timeout_ms": 1000}}

    async def test_worker_that_did_not_start_in_time_is_refused(
        self, client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
    ) -> None:
        await register("w1", {"code": 0.5})
        task = await create_code_task(client)
        await wait_assigned(client, task["id"], "w1", attempt=1)
        await register("w2", {"code": 1.0})
        await wait_assigned(client, task["id"], "w2", attempt=2)
        # w2 starts at once, so that its own wake timeout does not take it away too.
        r = await post_action(client, "w2", task["id"], "start", {"attempt": 2})
        assert r.status_code == 200, r.text

        async def w1_offline() -> bool:
            agent = await runtime.store.get_agent("w1")
            return agent is not None and agent.status.value == "offline"

        await eventually(w1_offline, "the silent w1 to be marked offline")
        now = await detail(client, task["id"])
        assert now["status"] == "running" and now["attempts"][0]["outcome"] == "lost"

        await assert_refused(client, runtime, "w1", task["id"])
        await assert_heartbeat_revives_nothing(client, runtime, "w1", task["id"])
        await assert_new_holder_finishes(client, task["id"], "w1", "w2", "lost", started=True)


class TestSilentAgent:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": {**FAST_SWEEPS, "wake_timeout_ms": 300}}

    async def test_silent_agent_does_not_get_its_unstarted_task_back(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        register: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # A database that is a little slow to take the "agent offline" write on its own:
        # the outcome must not depend on how fast that write lands.
        commit = runtime.store.commit

        async def slow_offline(ops: Sequence[Op]) -> list[Event]:
            if _only_marks_offline(ops):
                await asyncio.sleep(0.5)
            return await commit(ops)

        monkeypatch.setattr(runtime.store, "commit", slow_offline)
        await register("w1", ["code"])
        task = await create_code_task(client)
        await wait_assigned(client, task["id"], "w1", attempt=1)

        async def w1_offline() -> bool:
            agent = await runtime.store.get_agent("w1")
            return agent is not None and agent.status is AgentStatus.OFFLINE

        # w1 neither starts the task nor heartbeats: the task must go elsewhere (here:
        # nowhere, w1 being the only agent), not back to w1.
        await eventually(w1_offline, "the silent w1 to be marked offline")
        now = await detail(client, task["id"])
        assigned = [
            e for e in await runtime.store.events_for_task(task["id"]) if e.type == "task.assigned"
        ]
        assert [e.agent_id for e in assigned] == ["w1"]
        assert (now["status"], now["assignee"], now["attempt"]) == ("pending", None, 1)


def _only_marks_offline(ops: Sequence[Op]) -> bool:
    marks = [op for op in ops if isinstance(op, UpdateAgent)]
    return (
        bool(marks)
        and all(isinstance(op, UpdateAgent | AppendEvent) for op in ops)
        and any(op.agent.status is AgentStatus.OFFLINE for op in marks)
    )


# --- (d) the agent was deregistered ------------------------------------------------------


class TestDeregistered:
    async def test_deregistered_worker_is_refused(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        register: Callable[..., Any],
        admin: dict[str, str],
    ) -> None:
        task = await start_with_standby(client, register)
        r = await client.delete("/api/v1/agents/w1", headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["requeued"] == [task["id"]]
        await wait_assigned(client, task["id"], "w2", attempt=2)

        await assert_refused(client, runtime, "w1", task["id"])
        # A heartbeat from an agent that no longer exists changes nothing either.
        before = await snapshot(client, runtime, task["id"])
        r = await client.post("/api/v1/agents/w1/heartbeat", json={}, headers=as_agent("w1"))
        assert r.status_code == 404, r.text
        assert await snapshot(client, runtime, task["id"]) == before
        await assert_new_holder_finishes(client, task["id"], "w1", "w2", "lost")

    async def test_late_completion_racing_the_new_holder_leaves_its_attempt_intact(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        register: Callable[..., Any],
        admin: dict[str, str],
    ) -> None:
        task = await start_with_standby(client, register)
        r = await post_action(client, "w1", task["id"], "progress", {"percent": 90})
        assert r.status_code == 200, r.text
        r = await client.delete("/api/v1/agents/w1", headers=admin)
        assert r.status_code == 200, r.text
        await wait_assigned(client, task["id"], "w2", attempt=2)

        # The old holder's completion and the new holder's start arrive together.
        late, start = await asyncio.gather(
            post_action(client, "w1", task["id"], "complete", {"result": "late"}),
            post_action(client, "w2", task["id"], "start", {"attempt": 2}),
        )
        assert_error(late, 409, "stale_attempt")
        assert start.status_code == 200, start.text
        now = await detail(client, task["id"])
        assert (now["status"], now["assignee"], now["attempt"]) == ("running", "w2", 2)
        assert now["result"] is None
        assert [(a["number"], a["agent_id"], a["outcome"]) for a in now["attempts"]] == [
            (1, "w1", "lost"),
            (2, "w2", None),
        ]
        types = [e["type"] for e in await task_events(client, task["id"])]
        assert "task.completed" not in types
        await assert_new_holder_finishes(client, task["id"], "w1", "w2", "lost", started=True)
