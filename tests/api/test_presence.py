"""Agent presence: an agent not heard from (heartbeat or claim) for
`assignment.offline_after_ms` is marked offline, is not chosen for new work while it is,
and comes back by its next heartbeat or claim. Sleeping agents are left alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import BOTH, create_code_task, detail, eventually, heartbeat

pytestmark = BOTH


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"assignment": {"offline_after_ms": 1000}}


async def status_of(client: httpx.AsyncClient, agent_id: str) -> str:
    r = await client.get(f"/api/v1/agents/{agent_id}", headers=as_agent(agent_id))
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


async def test_a_silent_agent_goes_offline_and_comes_back(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("silent", ["code"])
    await register("alive", ["code"])
    await register("asleep", ["code"], status="sleeping")
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            await heartbeat(client, "alive")
            await asyncio.sleep(0.1)

    beating = asyncio.create_task(beat())
    try:

        async def silent_offline() -> bool:
            return await status_of(client, "silent") == "offline"

        await eventually(silent_offline, "the silent agent to be marked offline", limit_s=10)
        assert await status_of(client, "alive") == "ready"
        assert await status_of(client, "asleep") == "sleeping"
        log = await runtime.store.read_events(after=0, limit=10_000)
        [marked] = [e for e in log if e.type == "agent.status_changed" and e.agent_id == "silent"]
        assert marked.data["status"] == "offline" and marked.data["previous"] == "ready"
        assert marked.data["reason"] == "not heard from for 1s"
        assert marked.data["by"] == "dispatchd"

        # New work goes to the agent that is there, never to the one that is not.
        for i in range(3):
            task = await create_code_task(client, title=f"t{i}")

            async def taken(task_id: str = task["id"]) -> dict[str, Any] | None:
                seen = await detail(client, task_id)
                return seen if seen["assignee"] else None

            assigned = await eventually(taken, f"task t{i} to be assigned")
            assert assigned["assignee"] == "alive", assigned
    finally:
        stop.set()
        await beating

    await heartbeat(client, "silent")
    assert await status_of(client, "silent") == "ready"


async def test_an_agent_that_only_claims_stays_present(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    await register("puller", ["ops"])
    await register("quiet", ["ops"])
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5  # well past the threshold, claiming all along

    while loop.time() < until:
        r = await client.post(
            "/api/v1/tasks/claim", json={"wait_s": 0.3}, headers=as_agent("puller")
        )
        assert r.status_code == 200, r.text

    assert await status_of(client, "quiet") == "offline"
    assert await status_of(client, "puller") == "ready"
    log = await runtime.store.read_events(after=0, limit=10_000)
    assert not [e for e in log if e.type == "agent.status_changed" and e.agent_id == "puller"]


async def test_an_agent_holding_work_is_left_to_its_leases(
    client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
) -> None:
    """Its leases (renewed by progress too) say whether it is alive, not its heartbeats."""
    await register("busy", ["deep"])
    await register("idle", ["deep"])
    task = await create_code_task(client, title="long", capabilities=["deep"], assigned_to="busy")
    r = await client.post("/api/v1/tasks/claim", json={}, headers=as_agent("busy"))
    claimed = r.json()["tasks"]
    assert [t["id"] for t in claimed] == [task["id"]] and claimed[0]["status"] == "running"

    async def idle_offline() -> bool:
        return await status_of(client, "idle") == "offline"

    await eventually(idle_offline, "the idle agent to be marked offline", limit_s=10)
    await asyncio.sleep(1.5)  # past the threshold again, with progress only
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/progress", json={"message": "m"}, headers=as_agent("busy")
    )
    assert r.status_code == 200, r.text
    assert await status_of(client, "busy") == "ready"
