"""Many writers at once: every request answered 2xx, nothing lost, counts exact."""

from __future__ import annotations

import asyncio

import httpx

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import BOTH

pytestmark = BOTH


async def test_concurrent_writers_never_fail(
    client: httpx.AsyncClient, register, runtime: Runtime
) -> None:
    workers = [f"w{i}" for i in range(8)]
    for w in workers:
        await register(w, max_concurrent=100)

    async def lifecycle(n: int) -> None:
        w = workers[n % len(workers)]
        r = await client.post("/api/v1/tasks", json={"title": f"t{n}", "assigned_to": w})
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
        for step, body in (
            ("start", None),
            ("progress", {"percent": 50}),
            ("complete", {"result": n}),
        ):
            r = await client.post(f"/api/v1/tasks/{task_id}/{step}", json=body, headers=as_agent(w))
            assert r.status_code == 200, r.text

    async def chatter(n: int) -> None:
        for _ in range(5):
            r = await client.post(
                f"/api/v1/agents/{workers[n]}/heartbeat", json={}, headers=as_agent(workers[n])
            )
            assert r.status_code == 200, r.text

    await asyncio.gather(
        *(lifecycle(n) for n in range(120)), *(chatter(n) for n in range(len(workers)))
    )
    counts = await runtime.store.counts()
    assert counts.tasks_by_status.get("completed") == 120
    assert sum(counts.tasks_by_status.values()) == 120
    events = await runtime.store.read_events(after=0, limit=10_000)
    assert len([e for e in events if e.type == "task.completed"]) == 120
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
