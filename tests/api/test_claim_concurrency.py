"""Claims are atomic (SPEC §3 pull mode): many claimers at once, no task given twice.

Two dozen registered agents claim (each with its own `max_tasks`) and complete what they
get, concurrently, against thousands of pending tasks, until nothing is left. Every task
must end claimed exactly once: one attempt, one assignment, one start, one completion, by
the agent that claimed it; every agent's load back to 0. On PostgreSQL the same runs again
through two runtimes (two stores, two connection pools) over one database, as two replicas
would, so that `FOR UPDATE SKIP LOCKED` is what keeps the claimers apart.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, as_agent, make_settings
from tests.api.helpers import ADMIN, BOTH

N_TASKS = 2000
N_CLAIMERS = 24
CHUNK = 500
PRIORITIES = ("low", "medium", "high", "critical")
RANK = {p: i for i, p in enumerate(PRIORITIES)}


def _client(runtime: Runtime) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app_for(runtime))
    return httpx.AsyncClient(
        transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "alice"}
    )


@pytest.fixture
async def runtime(
    tmp_path: Path, database_url: str | None, settings_overrides: dict[str, Any]
) -> AsyncIterator[Runtime]:
    # No push: every task reaches an agent through a claim.
    settings = make_settings(tmp_path, database_url, **settings_overrides)
    async with Runtime.build(settings, background=False) as rt:
        yield rt


@pytest.fixture
async def replica(
    tmp_path: Path, database_url: str | None, settings_overrides: dict[str, Any]
) -> AsyncIterator[Runtime]:
    """A second runtime over the same database: its own store and connection pool."""
    settings = make_settings(tmp_path / "replica", database_url, **settings_overrides)
    async with Runtime.build(settings, background=False) as rt:
        yield rt


async def seed(client: httpx.AsyncClient, agents: Sequence[str]) -> set[str]:
    for agent_id in agents:
        body = {"capabilities": ["code"], "max_concurrent": 100}
        r = await client.post("/api/v1/agents", json=body, headers=as_agent(agent_id))
        assert r.status_code == 201, r.text
    made: set[str] = set()
    for start in range(0, N_TASKS, CHUNK):
        tasks = [
            {"title": f"t{n}", "capabilities": ["code"], "priority": PRIORITIES[n % 4]}
            for n in range(start, min(start + CHUNK, N_TASKS))
        ]
        r = await client.post("/api/v1/tasks/batch", json={"tasks": tasks})
        assert r.status_code == 201, r.text
        made.update(t["id"] for t in r.json()["items"])
    assert len(made) == N_TASKS
    return made


async def claimer(clients: Sequence[httpx.AsyncClient], agent_id: str, max_tasks: int) -> list[str]:
    """Claim and complete until a claim comes back empty; the ids this agent completed.

    With several clients (replicas), consecutive requests go to alternate ones.
    """
    done: list[str] = []
    turn = 0

    def next_client() -> httpx.AsyncClient:
        nonlocal turn
        turn += 1
        return clients[turn % len(clients)]

    while True:
        r = await next_client().post(
            "/api/v1/tasks/claim", json={"max_tasks": max_tasks}, headers=as_agent(agent_id)
        )
        assert r.status_code == 200, r.text
        body = r.json()
        if not body["tasks"]:
            assert body["reason"] == "no_tasks_available", body
            return done
        assert body["reason"] is None, body
        assert 1 <= len(body["tasks"]) <= max_tasks, body
        ranks = [RANK[t["priority"]] for t in body["tasks"]]
        assert ranks == sorted(ranks, reverse=True), ranks
        for task in body["tasks"]:
            assert task["status"] == "running" and task["assignee"] == agent_id, task
            assert task["attempt"] == 1, task
            r = await next_client().post(
                f"/api/v1/tasks/{task['id']}/complete",
                json={"result": agent_id},
                headers=as_agent(agent_id),
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "completed"
            done.append(task["id"])


async def run_claimers(clients: Sequence[httpx.AsyncClient]) -> dict[str, str]:
    agents = [f"claimer-{i:02d}" for i in range(N_CLAIMERS)]
    made = await seed(clients[0], agents)
    results = await asyncio.gather(
        *(claimer(clients, agent_id, 1 + i % 5) for i, agent_id in enumerate(agents))
    )
    by_task: dict[str, str] = {}
    for agent_id, done in zip(agents, results, strict=True):
        for task_id in done:
            assert task_id not in by_task, f"{task_id} claimed by {by_task[task_id]} and {agent_id}"
            by_task[task_id] = agent_id
    assert set(by_task) == made
    # More than a few claimers did real work: the claims did overlap.
    assert sum(1 for done in results if done) >= N_CLAIMERS // 2
    return by_task


async def check_outcome(
    runtime: Runtime, client: httpx.AsyncClient, by_task: dict[str, str]
) -> None:
    counts = await runtime.store.counts()
    by_status = {status: n for status, n in counts.tasks_by_status.items() if n}
    assert by_status == {"completed": N_TASKS}

    # Exactly one attempt per task, completed, by the agent whose claim returned it.
    ids = sorted(by_task)
    for start in range(0, len(ids), 100):
        chunk = ids[start : start + 100]
        found = await asyncio.gather(*(runtime.store.attempts(t) for t in chunk))
        for task_id, attempts in zip(chunk, found, strict=True):
            assert len(attempts) == 1, (task_id, attempts)
            (attempt,) = attempts
            assert attempt.number == 1
            assert attempt.agent_id == by_task[task_id]
            assert attempt.outcome is not None and attempt.outcome.value == "completed"

    events = await runtime.store.read_events(after=0, limit=100_000)
    per_type = {
        kind: Counter(e.task_id for e in events if e.type == kind)
        for kind in ("task.assigned", "task.started", "task.completed")
    }
    for kind, seen in per_type.items():
        assert set(seen) == set(by_task), kind
        assert set(seen.values()) == {1}, (kind, [t for t, n in seen.items() if n != 1][:5])
    for e in events:
        if e.type == "task.completed":
            assert e.agent_id == by_task[e.task_id]

    agents = sorted(set(by_task.values()))
    for a in await runtime.store.get_agents(agents):
        assert a.active == 0, a
    r = await client.get("/api/v1/agents", params={"limit": 500}, headers=ADMIN)
    assert r.status_code == 200, r.text
    listed = {a["id"]: a["active_tasks"] for a in r.json()["items"]}
    assert all(listed[a] == 0 for a in agents), listed

    # Nothing is left for anyone.
    r = await client.post(
        "/api/v1/tasks/claim", json={"max_tasks": 100}, headers=as_agent(agents[0])
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"tasks": [], "reason": "no_tasks_available"}


@BOTH
async def test_concurrent_claimers_take_each_task_exactly_once(runtime: Runtime) -> None:
    async with _client(runtime) as client:
        by_task = await run_claimers([client])
        await check_outcome(runtime, client, by_task)


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_claimers_across_two_replicas_take_each_task_exactly_once(
    runtime: Runtime, replica: Runtime
) -> None:
    assert runtime.store is not replica.store
    async with _client(runtime) as one, _client(replica) as two:
        by_task = await run_claimers([one, two])
        await check_outcome(runtime, one, by_task)
        await check_outcome(replica, two, by_task)
