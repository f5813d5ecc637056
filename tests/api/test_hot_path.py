"""The usual lifecycle takes as few transactions and reads as it can (bench/README.md).

* A task created while an agent with room is known is assigned in its creation's commit;
  if that agent has a claim waiting, the task is also started there and the claim answers
  with it, without a transaction of its own.
* The assigner follows agents' loads from the events that say how they moved, instead of
  re-reading the agent rows; a claim uses the directory's copy of its agent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.api.app import create_app
from dispatchd.runtime import Runtime
from dispatchd.store.base import TakeSlot, UpdateTask
from tests.api.conftest import as_agent, make_settings
from tests.api.helpers import BOTH, create_code_task, eventually, task_events

CLAIM = "/api/v1/tasks/claim"


def count_calls(runtime: Runtime, names: tuple[str, ...]) -> Counter[str]:
    calls: Counter[str] = Counter()
    store = runtime.store
    for name in names:
        method = getattr(store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kw)

        setattr(store, name, counted)
    return calls


async def caught_up(runtime: Runtime) -> None:
    await eventually(
        lambda: (
            runtime.assigner.cursor == runtime.feed.latest
            and not runtime.assigner._stepping.locked()
        ),
        "the assigner to act on every event",
    )


async def claim(client: httpx.AsyncClient, agent_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(CLAIM, json=body, headers=as_agent(agent_id))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def waiting(runtime: Runtime, client: httpx.AsyncClient, agent_id: str) -> asyncio.Task[Any]:
    job = asyncio.create_task(claim(client, agent_id, wait_s=10))
    await eventually(
        lambda: any(w.waiting for w in runtime.claims.waiters._by_agent.get(agent_id, [])),
        f"{agent_id}'s claim to wait",
    )
    return job


@BOTH
async def test_a_waiting_claim_gets_the_new_task_from_the_creating_commit(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("w", ["code"])
    job = await waiting(runtime, client, "w")
    await caught_up(runtime)
    calls = count_calls(runtime, ("claim", "get_agent", "get_agents"))
    task = await create_code_task(client, title="hot")
    # The creation's answer already shows the task started by its agent.
    assert (task["status"], task["assignee"]) == ("running", "w")
    out = await job
    assert [t["id"] for t in out["tasks"]] == [task["id"]] and out["reason"] is None
    assert out["tasks"][0]["status"] == "running" and out["tasks"][0]["attempt"] == 1
    await caught_up(runtime)
    # No claim transaction, no read of the agent.
    assert calls == Counter(), calls
    # One commit: the creation's (its events are stamped at the same instant).
    events = await task_events(client, task["id"])
    assert [e["type"] for e in events] == ["task.created", "task.assigned", "task.started"]
    assert len({e["created_at"] for e in events}) == 1
    r = await client.get(f"/api/v1/tasks/{task['id']}")
    body = r.json()
    assert body["status"] == "running" and body["attempts"][0]["started_at"] is not None
    r = await client.get("/api/v1/agents/w")
    assert r.json()["active_tasks"] == 1


@BOTH
async def test_an_agent_with_room_but_no_claim_gets_the_task_at_creation(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("w", ["code"])
    await caught_up(runtime)
    task = await create_code_task(client, title="pushed")
    assert (task["status"], task["assignee"]) == ("assigned", "w")
    out = await claim(client, "w")
    assert [t["id"] for t in out["tasks"]] == [task["id"]]
    assert out["tasks"][0]["status"] == "running"


@BOTH
async def test_a_claim_narrowed_to_other_tags_is_not_given_the_task(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("w", ["code", "docs"])
    await caught_up(runtime)
    job = asyncio.create_task(claim(client, "w", wait_s=0.5, capabilities=["docs"]))
    await eventually(
        lambda: any(w.waiting for w in runtime.claims.waiters._by_agent.get("w", [])),
        "the claim to wait",
    )
    task = await create_code_task(client, title="code only")
    # Assigned (pushed) to w, but not started for a claim that does not take `code`; the
    # claim is woken and, as before, starts what is assigned to its agent.
    assert task["status"] == "assigned"
    out = await job
    assert [t["id"] for t in out["tasks"]] == [task["id"]]


@BOTH
async def test_the_directory_follows_loads_from_events_without_reading_agents(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("w", ["code"], max_concurrent=3)
    await caught_up(runtime)
    calls = count_calls(runtime, ("get_agent", "get_agents"))
    for round_ in range(3):
        await caught_up(runtime)
        task = await create_code_task(client, title=f"t{round_}")
        assert task["status"] == "assigned"
        out = await claim(client, "w")
        assert [t["id"] for t in out["tasks"]] == [task["id"]]
        r = await client.post(
            f"/api/v1/tasks/{task['id']}/complete", json={"result": 1}, headers=as_agent("w")
        )
        assert r.status_code == 200, r.text
    await caught_up(runtime)
    assert runtime.directory.agents["w"].active == 0
    assert calls == Counter(), calls
    # And the copy agrees with the row.
    row = await runtime.store.get_agent("w")
    assert row is not None and row.active == 0


@BOTH
async def test_the_holder_reporting_its_attempt_needs_no_read_of_past_attempts(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("w", ["code"])
    await caught_up(runtime)
    task = await create_code_task(client, title="fenced")
    out = await claim(client, "w")
    assert out["tasks"][0]["attempt"] == 1
    calls = count_calls(runtime, ("attempts",))
    url = f"/api/v1/tasks/{task['id']}"
    r = await client.post(f"{url}/progress", json={"attempt": 2}, headers=as_agent("w"))
    assert r.status_code == 409, r.text  # a newer attempt than the one it holds: fenced
    r = await client.post(f"{url}/complete", json={"attempt": 1}, headers=as_agent("w"))
    assert r.status_code == 200, r.text
    assert calls == Counter(), calls


@BOTH
async def test_the_tasks_a_lifecycle_wrote_are_not_read_back(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    """The assigner, the metrics and the notifier take the tasks of the events they follow
    from this process's commits; a completion starts from the task as last written too."""
    await register("w", ["code"], max_concurrent=1)
    await caught_up(runtime)
    calls = count_calls(runtime, ("get_task", "get_tasks"))
    first = await create_code_task(client, title="first", priority="high")
    # No room left: the assigner considers it from the creation's events, and queues it.
    queued = await create_code_task(client, title="queued", priority="high")
    assert (first["status"], queued["status"]) == ("assigned", "pending")
    for task in (first, queued):
        out = await claim(client, "w")
        assert [t["id"] for t in out["tasks"]] == [task["id"]]
        r = await client.post(
            f"/api/v1/tasks/{task['id']}/complete", json={"result": 1}, headers=as_agent("w")
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"
        # The assigner gives the queued task to "w" before the claim asks for it: a claim
        # racing it would win or lose, and a loser reads the task again (not a read back).
        await caught_up(runtime)
    await eventually(
        lambda: (
            runtime.metrics_follower.cursor == runtime.feed.latest
            and runtime.notifier.cursor == runtime.feed.latest
        ),
        "the metrics and the notifier to read every event",
    )
    counted = runtime.metrics.events.transitions.labels("completed", "high")._value.get()
    assert counted == 2  # the priority came from the tasks as written
    digest = await runtime.notifier.open_digest()
    assert digest is not None
    assert [i["title"] for i in digest.completed] == ["first", "queued"]
    assert calls == Counter(), calls


@BOTH
async def test_a_claim_of_several_checks_the_agent_slots_once_and_batch_completion_reads_none(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    """A claim taking several queued tasks reserves their slots with one check of the
    agent row; a batch completion by their holder starts from the tasks as this process
    wrote them instead of reading them back."""
    tasks = [await create_code_task(client, title=f"t{k}") for k in range(3)]
    await register("w", ["code"], max_concurrent=3)
    planned: list[list[Any]] = []
    claim_in_store = runtime.store.claim

    async def recorded(query: Any, plan: Any) -> Any:
        def planning(view: Any) -> Any:
            ops = list(plan(view))
            planned.append(ops)
            return ops

        return await claim_in_store(query, planning)

    runtime.store.claim = recorded  # type: ignore[method-assign]
    out = await claim(client, "w", max_tasks=3)
    taken = {t["id"] for t in out["tasks"]}
    # The assigner may have given some of them to "w" already; the claim starts those.
    assert taken == {t["id"] for t in tasks}, out
    slots = [op for op in planned[-1] if isinstance(op, TakeSlot)]
    pending = 3 - sum(
        1 for op in planned[-1] if isinstance(op, UpdateTask) and op.previous.value == "assigned"
    )
    assert [s.count for s in slots] == ([pending] if pending else []), planned[-1]
    if slots:
        first_write = next(
            i
            for i, op in enumerate(planned[-1])
            if isinstance(op, UpdateTask) and op.previous.value == "pending"
        )
        assert planned[-1].index(slots[0]) < first_write

    # The assigner, racing the claim for these tasks, may read them: let it finish first.
    await caught_up(runtime)
    calls = count_calls(runtime, ("get_task", "get_tasks"))
    items = [{"task_id": t["id"], "result": k} for k, t in enumerate(tasks)]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w")
    )
    assert r.status_code == 200, r.text
    assert [i["ok"] for i in r.json()["items"]] == [True, True, True]
    assert [i["task"]["result"] for i in r.json()["items"]] == [0, 1, 2]
    assert calls == Counter(), calls


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_task_another_replica_wrote_since_is_read_and_completed(
    tmp_path: Path,
    database_url: str,
    client: httpx.AsyncClient,
    register: Callable[..., Any],
    runtime: Runtime,
) -> None:
    """A completion starts from the task as this replica last wrote it; when another
    replica has written it since, that copy fails its version check and the row is read:
    the completion goes through and keeps the other replica's write."""
    await register("w", ["code"], max_concurrent=2)
    tasks = [await create_code_task(client, title=f"t{k}") for k in range(2)]
    out = await claim(client, "w", max_tasks=2)
    assert {t["id"] for t in out["tasks"]} == {t["id"] for t in tasks}
    other = tmp_path / "replica"
    other.mkdir()
    async with Runtime.build(make_settings(other, database_url)) as replica:
        transport = httpx.ASGITransport(app=create_app(runtime=replica))
        async with httpx.AsyncClient(transport=transport, base_url="http://dispatchd.test") as b:
            for task in tasks:
                r = await b.post(
                    f"/api/v1/tasks/{task['id']}/progress",
                    json={"message": "half way", "percent": 50},
                    headers=as_agent("w"),
                )
                assert r.status_code == 200, r.text
    for task in tasks:  # this replica's copy is behind the row
        copy = runtime.feed.task(task["id"])
        row = await runtime.store.get_task(task["id"])
        assert copy is not None and row is not None and copy.version < row.version
    # This replica's followers read the tasks of the other one's events (the metrics
    # follower all of them): let them have done so before counting the completions' reads.
    last = await runtime.store.last_event_id()
    await eventually(
        lambda: runtime.feed.latest >= last and runtime.metrics_follower.cursor >= last,
        "this replica to follow the other one's events",
    )
    await caught_up(runtime)
    calls = count_calls(runtime, ("get_task", "get_tasks"))
    first, second = tasks
    r = await client.post(
        f"/api/v1/tasks/{first['id']}/complete", json={"result": 1}, headers=as_agent("w")
    )
    assert r.status_code == 200, r.text
    items = [{"task_id": second["id"], "result": 2}]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w")
    )
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["ok"], r.text
    # Each copy was behind its row: each was read once.
    assert calls == Counter(get_task=1, get_tasks=1), calls
    for task, result in ((first, 1), (second, 2)):
        r = await client.get(f"/api/v1/tasks/{task['id']}")
        got = r.json()
        assert (got["status"], got["result"]) == ("completed", result), got
        assert got["progress"]["percent"] == 50, got
