"""Push assignment through the API (SPEC §3), with the background assigner running: when a
task is assigned, to whom, in which order, and never to two agents."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dispatchd.api.app import create_app
from dispatchd.config import load_settings
from dispatchd.runtime import Runtime
from tests.api.conftest import ADMIN_TOKEN, as_agent, make_settings
from tests.api.helpers import (
    ADMIN,
    BOTH,
    Settle,
    act,
    agent_status,
    create_task,
    detail,
    eventually,
    heartbeat,
    task_events,
    track,
    wait_assigned,
)

# --- helpers ----------------------------------------------------------------------------

# The sweeper's tick is far beyond every wait here: assignment must follow events, not a timer.
TICK_MS = 600_000


def overrides(**assignment: Any) -> dict[str, Any]:
    return {"assignment": {"tick_interval_ms": TICK_MS, **assignment}}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return overrides()


@pytest.fixture
def settle(runtime: Runtime) -> Settle:
    return track(runtime)


async def pending(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    task = await detail(client, task_id)
    assert (task["status"], task["assignee"]) == ("pending", None), task
    return task


async def finish(client: httpx.AsyncClient, task_id: str, agent_id: str) -> None:
    for step in ("start", "complete"):
        await act(client, task_id, step, agent_id)


async def assignments(client: httpx.AsyncClient, task_id: str) -> list[tuple[str, int]]:
    """(agent, attempt) of each assignment of the task so far, from its events."""
    found = await task_events(client, task_id, "task.assigned")
    return [(e["agent_id"], e["data"]["attempt"]) for e in found]


async def set_drained(client: httpx.AsyncClient, agent_id: str, drained: bool) -> None:
    action = "drain" if drained else "undrain"
    r = await client.post(f"/api/v1/agents/{agent_id}/{action}", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["draining"] is drained


async def statuses(client: httpx.AsyncClient, ids: list[str]) -> list[tuple[str, str | None]]:
    return [((t := await detail(client, i))["status"], t["assignee"]) for i in ids]


# --- when: event-driven assignment ------------------------------------------------------


@BOTH
async def test_a_created_task_goes_at_once_to_a_capable_agent(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"])
    task = await create_task(client, capabilities=["code"])
    got = await wait_assigned(client, task["id"], "w1")
    assert got["attempt"] == 1
    assert [(a["number"], a["agent_id"]) for a in got["attempts"]] == [(1, "w1")]
    types = [e["type"] for e in await task_events(client, task["id"])]
    assert types == ["task.created", "task.assigned"]


async def _free_by_completing(client: httpx.AsyncClient, task_id: str) -> None:
    await finish(client, task_id, "w1")


async def _free_by_failing(client: httpx.AsyncClient, task_id: str) -> None:
    r = await client.post(
        f"/api/v1/tasks/{task_id}/fail",
        json={"error": "broken", "retryable": False},
        headers=as_agent("w1"),
    )
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text


async def _free_by_cancelling(client: httpx.AsyncClient, task_id: str) -> None:
    r = await client.patch(f"/api/v1/tasks/{task_id}", json={"status": "cancelled"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text


@BOTH
@pytest.mark.parametrize(
    "free", [_free_by_completing, _free_by_failing, _free_by_cancelling], ids=lambda f: f.__name__
)
async def test_a_freed_slot_takes_the_next_pending_task(
    client: httpx.AsyncClient,
    register: Any,
    settle: Settle,
    free: Callable[[httpx.AsyncClient, str], Awaitable[None]],
) -> None:
    await register("w1", ["code"], max_concurrent=1)
    first = await create_task(client, capabilities=["code"])
    await wait_assigned(client, first["id"], "w1")
    second = await create_task(client, capabilities=["code"])
    await settle()
    await pending(client, second["id"])
    await free(client, first["id"])
    await wait_assigned(client, second["id"], "w1")


@BOTH
async def test_registering_an_agent_takes_the_waiting_work(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    task = await create_task(client, capabilities=["code"])
    await settle()
    await pending(client, task["id"])
    await register("w1", ["code"])
    await wait_assigned(client, task["id"], "w1")


@BOTH
async def test_an_agent_gaining_a_capability_takes_the_waiting_work(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["code"])
    task = await create_task(client, capabilities=["rust"])
    await settle()
    await pending(client, task["id"])
    r = await client.patch(
        "/api/v1/agents/w1", json={"capabilities": ["code", "rust"]}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text
    await wait_assigned(client, task["id"], "w1")


@BOTH
async def test_a_degraded_agent_back_to_ready_takes_the_waiting_work(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["code"], status="degraded")
    task = await create_task(client, capabilities=["code"])
    await settle()
    await pending(client, task["id"])
    assert await heartbeat(client, "w1", "ready") == "ready"
    await wait_assigned(client, task["id"], "w1")


@BOTH
@pytest.mark.parametrize("settings_overrides", [overrides(wake_timeout_ms=300)])
@pytest.mark.parametrize("status", [None, "ready"])
async def test_an_offline_agent_heartbeating_again_takes_the_waiting_work(
    client: httpx.AsyncClient, register: Any, settle: Settle, status: str | None
) -> None:
    # The only way to go offline: be given a task, neither start it nor heartbeat.
    await register("w1", ["code"], status="sleeping")
    task = await create_task(client, capabilities=["code"])

    async def gone() -> bool:
        if await agent_status(client, "w1") != "offline":
            return False
        now = await detail(client, task["id"])
        return (now["status"], now["assignee"]) == ("pending", None)

    await eventually(gone, "w1 to go offline and its task back to pending")
    await settle()
    await pending(client, task["id"])
    before = await assignments(client, task["id"])
    assert before and all(agent == "w1" for agent, _ in before)
    assert await heartbeat(client, "w1", status) == "ready"

    async def back() -> bool:
        after = await assignments(client, task["id"])
        return after[: len(before) + 1] == [*before, ("w1", len(before) + 1)]

    await eventually(back, "w1 to be given the task again")


@BOTH
async def test_a_sleeping_agent_gets_work_without_waking_first(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"], status="sleeping")
    task = await create_task(client, capabilities=["code"])
    await wait_assigned(client, task["id"], "w1")


@BOTH
async def test_drain_stops_new_work_and_undrain_resumes_it(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["code"])
    held = await create_task(client, capabilities=["code"])
    await wait_assigned(client, held["id"], "w1")
    await set_drained(client, "w1", True)
    waiting = await create_task(client, capabilities=["code"])
    await settle()
    await pending(client, waiting["id"])
    # Work it already holds goes on, and finishing it does not bring new work.
    await finish(client, held["id"], "w1")
    await settle()
    await pending(client, waiting["id"])
    await set_drained(client, "w1", False)
    await wait_assigned(client, waiting["id"], "w1")


# --- to whom ----------------------------------------------------------------------------


@BOTH
async def test_every_required_capability_is_a_hard_filter(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("a-code", {"code": 1.0})
    await register("b-rust", {"rust": 1.0})
    task = await create_task(client, capabilities=["code", "rust"])
    await settle()
    await pending(client, task["id"])
    # A weak match holding both tags still beats strong agents that hold one.
    await register("c-both", {"code": 0.1, "rust": 0.1})
    await wait_assigned(client, task["id"], "c-both")


@BOTH
async def test_the_better_weighted_match_wins(client: httpx.AsyncClient, register: Any) -> None:
    # The smaller id, registered first, is the weaker match: neither tie-break decides.
    await register("a-weak", {"code": 0.4, "rust": 1.0})
    await register("b-strong", {"code": 0.9, "rust": 0.9})
    task = await create_task(client, capabilities=["code", "rust"])
    await wait_assigned(client, task["id"], "b-strong")
    # For rust alone a-weak is the better match (1.0 against 0.9).
    other = await create_task(client, capabilities=["rust"])
    await wait_assigned(client, other["id"], "a-weak")


@BOTH
async def test_availability_decides_ready_then_sleeping_then_busy_never_degraded(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    caps = {"avail": 1.0}
    await register("a-degraded", caps, status="degraded", max_concurrent=5)
    await register("b-busy", caps, status="busy", max_concurrent=1)
    await register("c-sleeping", caps, status="sleeping", max_concurrent=1)
    await register("d-ready", caps, status="ready", max_concurrent=1)
    order = []
    for expected in ("d-ready", "c-sleeping", "b-busy"):
        task = await create_task(client, capabilities=["avail"])
        await wait_assigned(client, task["id"], expected)
        order.append(expected)
    last = await create_task(client, capabilities=["avail"])
    await settle()
    await pending(client, last["id"])
    r = await client.get("/api/v1/agents/a-degraded")
    assert r.json()["active_tasks"] == 0


@BOTH
async def test_availability_outweighs_a_small_capability_edge(
    client: httpx.AsyncClient, register: Any
) -> None:
    # 0.9 x 0.5 (busy) = 0.45 < 0.6 x 1.0 (ready) < 1.0 x 0.8 (sleeping).
    await register("a-busy", {"x": 0.9}, status="busy")
    await register("b-ready", {"x": 0.6})
    task = await create_task(client, capabilities=["x"])
    await wait_assigned(client, task["id"], "b-ready")
    await register("c-sleeping", {"x": 1.0}, status="sleeping")
    task = await create_task(client, capabilities=["x"])
    await wait_assigned(client, task["id"], "c-sleeping")


@BOTH
async def test_owner_filtering_keeps_tasks_with_their_owners_agents(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("bob-1", ["code"], owner="bob", max_concurrent=1)
    await register("anyone", ["code"])
    carols = await create_task(client, capabilities=["code"], owner="carol")
    bobs = await create_task(client, capabilities=["code"], owner="bob")
    await wait_assigned(client, bobs["id"], "bob-1")
    await settle()
    await pending(client, carols["id"])
    # An ownerless task may go to an agent without an owner.
    free = await create_task(client, capabilities=["code"])
    await wait_assigned(client, free["id"], "anyone")
    await register("carol-1", ["code"], owner="carol")
    await wait_assigned(client, carols["id"], "carol-1")


@pytest.mark.parametrize("settings_overrides", [overrides(owner_filter_enabled=False)])
async def test_with_owner_filtering_off_any_capable_agent_takes_an_owned_task(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("bob-1", ["code"], owner="bob")
    task = await create_task(client, capabilities=["code"], owner="carol")
    await wait_assigned(client, task["id"], "bob-1")
    r = await client.get(f"/api/v1/tasks/{task['id']}/explain")
    assert r.json()["owner_filter"] is False


@pytest.mark.parametrize(("value", "enabled"), [("false", False), ("true", True)])
async def test_owner_filtering_follows_the_environment_variable(
    tmp_path: Path, value: str, enabled: bool
) -> None:
    config = tmp_path / "dispatchd.yaml"
    config.write_text(
        yaml.safe_dump({"server": {"data_dir": str(tmp_path), "admin_token": ADMIN_TOKEN}})
    )
    env = {"DISPATCH_OWNER_FILTER_ENABLED": value, "DISPATCH_TICK_INTERVAL_MS": str(TICK_MS)}
    settings = load_settings(config, env=env)
    assert settings.assignment.owner_filter_enabled is enabled
    async with Runtime.build(settings) as rt:
        settle = track(rt)
        transport = httpx.ASGITransport(app=create_app(runtime=rt))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "alice"}
        ) as client:
            r = await client.post(
                "/api/v1/agents",
                json={"capabilities": ["code"], "owner": "bob"},
                headers=as_agent("bob-1"),
            )
            assert r.status_code == 201, r.text
            task = await create_task(client, capabilities=["code"], owner="carol")
            if enabled:
                await settle()
                await pending(client, task["id"])
            else:
                await wait_assigned(client, task["id"], "bob-1")


# --- in which order ---------------------------------------------------------------------


@BOTH
async def test_tasks_are_served_by_priority_then_due_at_then_creation(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    soon = datetime.now(UTC) + timedelta(days=1)
    later = soon + timedelta(days=1)
    specs = [
        ("low", {"priority": "low"}),
        ("medium-1", {"priority": "medium"}),
        ("medium-later", {"priority": "medium", "due_at": later.isoformat()}),
        ("high", {"priority": "high"}),
        ("medium-2", {"priority": "medium"}),
        ("medium-soon", {"priority": "medium", "due_at": soon.isoformat()}),
        ("critical", {"priority": "critical"}),
        ("low-soon", {"priority": "low", "due_at": soon.isoformat()}),
        ("medium-3", {"priority": "medium"}),
    ]
    ids = {}
    for title, fields in specs:
        task = await create_task(client, title=title, capabilities=["queue"], **fields)
        ids[task["id"]] = title
    await settle()
    await register("w1", ["queue"], max_concurrent=1)
    served = []
    for _ in specs:

        async def one() -> str | None:
            r = await client.get("/api/v1/tasks?status=assigned&assignee=w1")
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            return str(items[0]["id"]) if len(items) == 1 else None

        task_id = await eventually(one, "w1 to hold exactly one task")
        served.append(ids[task_id])
        await finish(client, task_id, "w1")
    assert served == [
        "critical",
        "high",
        "medium-soon",
        "medium-later",
        "medium-1",
        "medium-2",
        "medium-3",
        "low-soon",
        "low",
    ]


@BOTH
async def test_tasks_arriving_together_go_out_in_queue_order(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["batch"], max_concurrent=1)
    r = await client.post(
        "/api/v1/tasks/batch",
        json={
            "tasks": [
                {"title": "low", "capabilities": ["batch"], "priority": "low"},
                {"title": "medium", "capabilities": ["batch"]},
                {"title": "critical", "capabilities": ["batch"], "priority": "critical"},
                {"title": "high", "capabilities": ["batch"], "priority": "high"},
            ]
        },
    )
    assert r.status_code == 201, r.text
    by_title = {t["title"]: t["id"] for t in r.json()["items"]}
    await wait_assigned(client, by_title["critical"], "w1")
    await settle()
    for title in ("low", "medium", "high"):
        await pending(client, by_title[title])


# --- capacity ---------------------------------------------------------------------------


async def _load(client: httpx.AsyncClient, agent_id: str) -> int:
    r = await client.get(f"/api/v1/agents/{agent_id}")
    return int(r.json()["active_tasks"])


@BOTH
@pytest.mark.parametrize(("limit", "expected"), [({"max_concurrent": 2}, 2), ({}, 3)])
async def test_an_agent_holds_at_most_its_limit(
    client: httpx.AsyncClient,
    register: Any,
    settle: Settle,
    limit: dict[str, int],
    expected: int,
) -> None:
    await register("w1", ["code"], **limit)
    ids = [(await create_task(client, capabilities=["code"]))["id"] for _ in range(expected + 2)]

    async def filled() -> bool:
        return [s for s, _ in await statuses(client, ids)].count("assigned") == expected

    await eventually(filled, f"{expected} of the tasks to be assigned")
    await settle()
    got = await statuses(client, ids)
    assert got.count(("assigned", "w1")) == expected
    assert got.count(("pending", None)) == 2
    assert await _load(client, "w1") == expected


@pytest.mark.parametrize("settings_overrides", [overrides(max_concurrent_per_agent=1)])
async def test_the_configured_default_limit_applies_to_agents_without_their_own(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["code"])
    await register("w2", ["code"], max_concurrent=2)
    ids = [(await create_task(client, capabilities=["code"]))["id"] for _ in range(4)]
    await settle()

    async def filled() -> bool:
        return Counter(a for _, a in await statuses(client, ids)) == {"w1": 1, "w2": 2, None: 1}

    await eventually(filled, "w1 to hold one task and w2 two")


# --- ties -------------------------------------------------------------------------------


@BOTH
async def test_equal_scores_go_to_the_lower_load(client: httpx.AsyncClient, register: Any) -> None:
    await register("a", ["tie"])
    await register("b", ["tie"])
    held = await create_task(client, capabilities=["other"], assigned_to="a")
    await wait_assigned(client, held["id"], "a")
    task = await create_task(client, capabilities=["tie"])
    await wait_assigned(client, task["id"], "b")


@BOTH
async def test_equal_scores_and_loads_go_by_idle_time_then_id(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("b", ["tie"])
    await register("a", ["tie"])
    # Both never assigned: the smaller id.
    first = await create_task(client, capabilities=["tie"])
    await wait_assigned(client, first["id"], "a")
    await finish(client, first["id"], "a")
    # a has been given work, b never: b is idle longest.
    second = await create_task(client, capabilities=["tie"])
    await wait_assigned(client, second["id"], "b")
    await finish(client, second["id"], "b")
    # a was given work before b: a is idle longest now.
    third = await create_task(client, capabilities=["tie"])
    await wait_assigned(client, third["id"], "a")


@BOTH
async def test_a_task_queued_while_a_fill_reads_waits_for_its_own_event(
    client: httpx.AsyncClient, register: Any, runtime: Runtime
) -> None:
    """A new agent is offered the queue; a task created while that read is under way, after
    a better agent registered, goes to the better agent, not to the one whose read found
    it first (the assigner had not yet handled the better agent's registration)."""
    entered, gate = asyncio.Event(), asyncio.Event()
    claimable = runtime.store.claimable

    async def held(query: Any) -> Any:
        if query.agent_id == "a-weak" and not gate.is_set():
            entered.set()
            await gate.wait()
        return await claimable(query)

    runtime.store.claimable = held  # type: ignore[method-assign]
    await register("a-weak", {"x": 0.5})
    await asyncio.wait_for(entered.wait(), 5)  # the fill of a-weak is reading the queue
    await register("b-strong", {"x": 1.0})
    task = await create_task(client, capabilities=["x"])
    gate.set()
    await wait_assigned(client, task["id"], "b-strong")


# --- manual assignment ------------------------------------------------------------------


@BOTH
async def test_assigned_to_skips_scoring(client: httpx.AsyncClient, register: Any) -> None:
    await register("a-strong", {"code": 1.0})
    await register("b-weak", {"code": 0.1}, status="busy")
    task = await create_task(client, capabilities=["code"], assigned_to="b-weak")
    assert task["assigned_to"] == "b-weak"
    await wait_assigned(client, task["id"], "b-weak")


@BOTH
async def test_assigned_to_respects_drain(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("a-strong", {"code": 1.0})
    await register("b-named", {"code": 0.5})
    await set_drained(client, "b-named", True)
    task = await create_task(client, capabilities=["code"], assigned_to="b-named")
    await settle()
    got = await pending(client, task["id"])
    assert got["assigned_to"] == "b-named"
    await set_drained(client, "b-named", False)
    await wait_assigned(client, task["id"], "b-named")


@BOTH
async def test_assigned_to_respects_capacity(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("a-strong", {"code": 1.0})
    await register("b-named", {"code": 0.5}, max_concurrent=1)
    held = await create_task(client, capabilities=["code"], assigned_to="b-named")
    await wait_assigned(client, held["id"], "b-named")
    task = await create_task(client, capabilities=["code"], assigned_to="b-named")
    await settle()
    got = await pending(client, task["id"])
    assert got["assigned_to"] == "b-named"
    assert await _load(client, "a-strong") == 0
    await finish(client, held["id"], "b-named")
    await wait_assigned(client, task["id"], "b-named")


@BOTH
async def test_a_named_task_counts_once_when_the_assigner_reads_its_event_first(
    client: httpx.AsyncClient, register: Any, runtime: Runtime, settle: Settle
) -> None:
    """The assigner may act on a creation's `task.assigned` (and re-read the agent, now
    full) before the creating request resumes. The agent's new task must still count
    once, or it looks full after finishing it and the next task named for it waits."""
    await register("a-strong", {"code": 1.0})
    await register("b-named", {"code": 0.5}, max_concurrent=1)
    await settle()
    store = runtime.store
    commit = store.commit

    async def assigner_first(ops: Any) -> Any:
        events = await commit(ops)
        if any(e.type == "task.created" for e in events):
            await settle()  # the assigner has handled the creation's events
        return events

    store.commit = assigner_first  # type: ignore[method-assign]
    try:
        held = await create_task(client, capabilities=["code"], assigned_to="b-named")
    finally:
        store.commit = commit  # type: ignore[method-assign]
    assert (held["status"], held["assignee"]) == ("assigned", "b-named")
    task = await create_task(client, capabilities=["code"], assigned_to="b-named")
    await settle()
    await pending(client, task["id"])
    await finish(client, held["id"], "b-named")
    await wait_assigned(client, task["id"], "b-named")


@BOTH
async def test_only_the_assigner_reads_agents_again(
    client: httpx.AsyncClient, register: Any, runtime: Runtime, settle: Settle
) -> None:
    """A creation whose named agent turned out full asks the assigner to read it again
    rather than reading it itself: a read beside the assigner's could put back a row that
    lacks a completion the assigner has just counted."""
    await register("b-named", {"code": 0.5}, max_concurrent=1)
    await settle()
    assigner = runtime.assigner
    directory = assigner.directory
    outside: list[list[str]] = []
    refresh = directory.refresh

    async def spy(agent_ids: Any) -> Any:
        ids = sorted(agent_ids)
        if not assigner._stepping.locked():
            outside.append(ids)
        return await refresh(ids)

    directory.refresh = spy  # type: ignore[method-assign]
    held = await create_task(client, capabilities=["code"], assigned_to="b-named")
    task = await create_task(client, capabilities=["code"], assigned_to="b-named")
    await settle()
    await pending(client, task["id"])
    assert directory.agents["b-named"].active == 1
    await finish(client, held["id"], "b-named")
    await wait_assigned(client, task["id"], "b-named")
    assert outside == []


@BOTH
async def test_a_task_named_for_an_unknown_agent_waits_for_it_to_register(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("a-strong", {"code": 1.0})
    task = await create_task(client, capabilities=["code"], assigned_to="later")
    await settle()
    await pending(client, task["id"])
    await register("later", ["code"])
    await wait_assigned(client, task["id"], "later")


# --- model routing ----------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("fields", "model"),
    [
        ({"title": "Diagnose the outage"}, "opus"),
        ({"title": "Ping the host", "priority": "low"}, "haiku"),
        ({"title": "Ping the host", "priority": "high"}, None),
        ({"title": "Write the report", "priority": "critical"}, "opus"),
        ({"title": "Diagnose the outage", "model": "gpt-x"}, "gpt-x"),
    ],
)
async def test_a_task_gets_its_model_at_assignment(
    client: httpx.AsyncClient, register: Any, fields: dict[str, Any], model: str | None
) -> None:
    await register("w1", ["code"])
    task = await create_task(client, capabilities=["code"], **fields)
    got = await wait_assigned(client, task["id"], "w1")
    assert got["model"] == model
    given = await client.get(f"/api/v1/tasks/{task['id']}/events")
    event = next(e for e in given.json()["events"] if e["type"] == "task.assigned")
    assert event["data"]["model"] == model


@BOTH
async def test_an_agents_own_model_overrides_the_tier(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"], dispatch_model="local-llama")
    task = await create_task(client, title="Diagnose the outage", capabilities=["code"])
    got = await wait_assigned(client, task["id"], "w1")
    assert got["model"] == "local-llama"


@BOTH
async def test_a_requeued_task_is_routed_again_for_its_new_agent(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("a-first", {"code": 1.0}, dispatch_model="model-a")
    task = await create_task(client, title="Write the report", capabilities=["code"])
    got = await wait_assigned(client, task["id"], "a-first")
    assert got["model"] == "model-a"
    await register("b-second", {"code": 0.5}, dispatch_model="model-b")
    r = await client.delete("/api/v1/agents/a-first", headers=as_agent("a-first"))
    assert r.status_code == 200, r.text
    got = await wait_assigned(client, task["id"], "b-second")
    assert got["model"] == "model-b"


# --- never twice ------------------------------------------------------------------------


async def work_off(
    clients: list[httpx.AsyncClient], limits: dict[str, int], ids: list[str]
) -> None:
    """Act as the agents: start and complete whatever they hold until every task is done,
    checking on each look that no agent holds more than its limit."""
    done: set[str] = set()
    turn = 0
    while len(done) < len(ids):

        async def some_held() -> dict[str, list[dict[str, Any]]] | None:
            held = {}
            for w in limits:
                r = await clients[0].get(f"/api/v1/tasks?assignee={w}&status=assigned,running")
                held[w] = r.json()["items"]
            return held if any(held.values()) else None

        held = await eventually(some_held, "an agent to hold one of the waiting tasks")
        for w, items in held.items():
            assert len(items) <= limits[w], (w, [t["id"] for t in items])
            for task in items:
                c = clients[turn % len(clients)]
                turn += 1
                if task["status"] == "assigned":
                    r = await c.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent(w))
                    assert r.status_code == 200, r.text
                r = await c.post(f"/api/v1/tasks/{task['id']}/complete", headers=as_agent(w))
                assert r.status_code == 200, r.text
                done.add(task["id"])
    assert done == set(ids)


async def each_given_once(client: httpx.AsyncClient, runtime: Runtime, ids: list[str]) -> None:
    for task_id in ids:
        done = await detail(client, task_id)
        assert done["status"] == "completed"
        assert len(done["attempts"]) == 1, done["attempts"]
    events = await runtime.store.read_events(after=0, limit=10_000)
    given = Counter(e.task_id for e in events if e.type == "task.assigned")
    assert given == dict.fromkeys(ids, 1)


@BOTH
async def test_no_task_is_given_to_two_agents(
    client: httpx.AsyncClient, register: Any, runtime: Runtime
) -> None:
    limits = {f"w{i}": 1 + i % 3 for i in range(5)}
    for w, limit in limits.items():
        await register(w, ["code"], max_concurrent=limit)

    async def make(n: int) -> str:
        return str((await create_task(client, title=f"t{n}", capabilities=["code"]))["id"])

    # Pull claims race the push assigner for the same tasks.
    async def claim(w: str) -> None:
        for _ in range(5):
            r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 3}, headers=as_agent(w))
            assert r.status_code == 200, r.text

    results = await asyncio.gather(*(make(n) for n in range(40)), *(claim(w) for w in limits))
    ids = [i for i in results if isinstance(i, str)]
    await work_off([client], limits, ids)
    await each_given_once(client, runtime, ids)
    for w in limits:
        assert await _load(client, w) == 0


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_two_replicas_never_give_a_task_twice(
    tmp_path: Path, database_url: str, register: Any, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    other = tmp_path / "replica"
    other.mkdir()
    async with Runtime.build(make_settings(other, database_url, **overrides())) as replica:
        transport = httpx.ASGITransport(app=create_app(runtime=replica))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "alice"}
        ) as client2:
            limits = dict.fromkeys(["w0", "w1", "w2", "w3"], 2)
            for w in limits:
                await register(w, ["code"], max_concurrent=2)
            clients = [client, client2]
            tasks = await asyncio.gather(
                *(
                    create_task(clients[n % 2], title=f"t{n}", capabilities=["code"])
                    for n in range(30)
                )
            )
            ids = [t["id"] for t in tasks]
            await work_off(clients, limits, ids)
    await each_given_once(client, runtime, ids)


@BOTH
@pytest.mark.parametrize(
    "mismatch",
    [{"capabilities": ["rust"]}, {"capabilities": ["code"], "owner": "carol"}],
    ids=["missing_capability", "other_owner"],
)
async def test_a_named_task_goes_to_its_agent_whether_or_not_it_had_to_wait(
    client: httpx.AsyncClient, register: Any, settle: Settle, mismatch: dict[str, Any]
) -> None:
    await register("b-named", ["code"], owner="bob", max_concurrent=1)
    # With room at creation, the named agent gets the task though a filter would refuse it.
    at_once = await create_task(client, assigned_to="b-named", **mismatch)
    await wait_assigned(client, at_once["id"], "b-named")
    # The same task created while the agent is full waits; when a slot frees it should
    # follow the same rule.
    waits = await create_task(client, assigned_to="b-named", **mismatch)
    await settle()
    await pending(client, waits["id"])
    await finish(client, at_once["id"], "b-named")
    await settle()
    got = await detail(client, waits["id"])
    assert (got["status"], got["assignee"]) == ("assigned", "b-named")


@BOTH
async def test_raising_an_agents_limit_takes_waiting_work(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["code"], max_concurrent=1)
    ids = [(await create_task(client, capabilities=["code"]))["id"] for _ in range(3)]
    await wait_assigned(client, ids[0], "w1")
    await settle()
    r = await client.patch("/api/v1/agents/w1", json={"max_concurrent": 3}, headers=as_agent("w1"))
    assert r.status_code == 200, r.text
    for task_id in ids:
        await wait_assigned(client, task_id, "w1")


@BOTH
async def test_raising_a_waiting_tasks_priority_serves_it_first(
    client: httpx.AsyncClient, register: Any, settle: Settle
) -> None:
    await register("w1", ["code"], max_concurrent=1)
    held = await create_task(client, capabilities=["code"])
    await wait_assigned(client, held["id"], "w1")
    older = await create_task(client, capabilities=["code"])
    newer = await create_task(client, capabilities=["code"])
    r = await client.patch(f"/api/v1/tasks/{newer['id']}", json={"priority": "high"})
    assert r.status_code == 200, r.text
    await settle()
    await finish(client, held["id"], "w1")
    await wait_assigned(client, newer["id"], "w1")
    await pending(client, older["id"])


@BOTH
async def test_a_deregistered_agents_tasks_go_to_another(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("a-first", {"code": 1.0})
    task = await create_task(client, capabilities=["code"])
    await wait_assigned(client, task["id"], "a-first")
    await register("b-second", {"code": 0.5})
    r = await client.delete("/api/v1/agents/a-first", headers=as_agent("a-first"))
    assert r.status_code == 200 and r.json()["requeued"] == [task["id"]], r.text
    await wait_assigned(client, task["id"], "b-second")


@BOTH
async def test_two_agents_freed_in_one_pass_both_take_waiting_work(
    client: httpx.AsyncClient, register: Any, settle: Settle, runtime: Runtime
) -> None:
    await register("a-weak", {"x": 0.5}, max_concurrent=1)
    await register("b-strong", {"x": 1.0}, max_concurrent=1)
    first = await create_task(client, capabilities=["x"])
    await wait_assigned(client, first["id"], "b-strong")
    second = await create_task(client, capabilities=["x"])
    await wait_assigned(client, second["id"], "a-weak")
    waiting = [(await create_task(client, capabilities=["x"]))["id"] for _ in range(2)]
    await settle()
    # Both agents finish before the assigner's next pass, as happens under load: hold the
    # assigner until both completions are in the log.
    step = runtime.assigner.step
    gate = asyncio.Event()

    async def gated_step() -> None:
        await gate.wait()
        await step()

    runtime.assigner.step = gated_step  # type: ignore[method-assign]
    await finish(client, second["id"], "a-weak")
    await finish(client, first["id"], "b-strong")
    gate.set()
    await settle()
    got = await statuses(client, waiting)
    assert sorted(got) == [("assigned", "a-weak"), ("assigned", "b-strong")], got
