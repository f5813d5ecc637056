"""Agent routes: register, list, read, patch, delete, heartbeat, drain, undrain."""

from __future__ import annotations

from typing import Any

import httpx

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import BOTH, assert_error

pytestmark = BOTH


async def test_register_returns_token_once_then_updates(client: httpx.AsyncClient) -> None:
    body = {
        "capabilities": {"code": 1.0, "review": 0.5},
        "owner": "team-a",
        "max_concurrent": 2,
        "room": "#web",
        "dispatch_model": "opus",
        "description": "coder",
    }
    r = await client.post("/api/v1/agents", json=body, headers=as_agent("w1"))
    assert r.status_code == 201
    assert r.json()["token"]
    agent = r.json()["agent"]
    assert agent["capabilities"] == {"code": 1.0, "review": 0.5}
    assert agent["status"] == "ready" and agent["draining"] is False and agent["active_tasks"] == 0
    assert (agent["owner"], agent["max_concurrent"], agent["room"]) == ("team-a", 2, "#web")

    r = await client.post("/api/v1/agents", json={"capabilities": ["code"]}, headers=as_agent("w1"))
    assert r.status_code == 200
    assert r.json().get("token") is None
    assert r.json()["agent"]["capabilities"] == {"code": 1.0}
    assert r.json()["agent"]["owner"] == "team-a"  # fields not sent are kept


async def test_an_agent_id_with_a_slash_is_refused(client: httpx.AsyncClient) -> None:
    """Agents are addressed by id in paths; a requester may still call itself `ci/nightly`."""
    r = await client.post("/api/v1/agents", json={}, headers=as_agent("team/coder"))
    assert_error(r, 422, "invalid_agent_id")
    r = await client.post("/api/v1/agents", json={"id": "team/coder"}, headers=as_agent("ops"))
    assert_error(r, 422, "invalid_agent_id")
    r = await client.get("/api/v1/agents/ops", headers=as_agent("ops"))
    assert_error(r, 404, "not_found")
    r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=as_agent("ci/nightly"))
    assert r.status_code == 201 and r.json()["requester"] == "ci/nightly"


async def test_list_is_a_capability_map_with_load(
    client: httpx.AsyncClient, register, admin: dict[str, str]
) -> None:
    await register("w1", ["code"])
    await register("w2", ["research"], owner="o2")
    await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "w1"})
    items = (await client.get("/api/v1/agents", headers=admin)).json()["items"]
    load = {a["id"]: a["active_tasks"] for a in items}
    assert load == {"w1": 1, "w2": 0}
    only = (await client.get("/api/v1/agents?capability=research", headers=admin)).json()["items"]
    assert [a["id"] for a in only] == ["w2"]
    owned = (await client.get("/api/v1/agents?owner=o2", headers=admin)).json()["items"]
    assert [a["id"] for a in owned] == ["w2"]


async def test_list_paginates(client: httpx.AsyncClient, register, admin: dict[str, str]) -> None:
    for i in range(7):
        await register(f"w{i}")
    seen: list[str] = []
    cursor = None
    while True:
        url = "/api/v1/agents?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=admin)).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"w{i}" for i in range(7)]


async def test_read_and_patch(client: httpx.AsyncClient, register) -> None:
    await register("w1")
    r = await client.patch(
        "/api/v1/agents/w1",
        json={"max_concurrent": 5, "capabilities": ["a", "b"]},
        headers=as_agent("w1"),
    )
    assert r.status_code == 200
    got = (await client.get("/api/v1/agents/w1")).json()
    assert got["max_concurrent"] == 5 and got["capabilities"] == {"a": 1.0, "b": 1.0}
    r = await client.patch("/api/v1/agents/w1", json={"status": "offline"}, headers=as_agent("w1"))
    assert r.status_code == 422


async def test_heartbeat_sets_status_and_renews_leases(
    client: httpx.AsyncClient, register, runtime: Runtime
) -> None:
    await register("w1")
    task = (await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "w1"})).json()
    started = (
        await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("w1"))
    ).json()
    r = await client.post(
        "/api/v1/agents/w1/heartbeat", json={"status": "busy"}, headers=as_agent("w1")
    )
    assert r.status_code == 200 and r.json()["status"] == "busy"
    renewed = (await client.get(f"/api/v1/tasks/{task['id']}")).json()
    assert renewed["lease_expires_at"] > started["lease_expires_at"]
    events = await runtime.store.read_events(after=0, limit=100)
    changes = [e for e in events if e.type == "agent.status_changed"]
    assert [(e.data["previous"], e.data["status"]) for e in changes] == [("ready", "busy")]
    # A heartbeat with the same status writes no status event.
    await client.post(
        "/api/v1/agents/w1/heartbeat", json={"status": "busy"}, headers=as_agent("w1")
    )
    events = await runtime.store.read_events(after=0, limit=100)
    assert len([e for e in events if e.type == "agent.status_changed"]) == 1


async def test_drain_and_undrain(
    client: httpx.AsyncClient, register, admin: dict[str, str]
) -> None:
    await register("w1")
    r = await client.post("/api/v1/agents/w1/drain", headers=admin)
    assert r.status_code == 200 and r.json()["draining"] is True
    held = (await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "w1"})).json()
    assert held["status"] == "pending"
    r = await client.post("/api/v1/agents/w1/undrain", headers=admin)
    assert r.json()["draining"] is False
    ok = (await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "w1"})).json()
    assert ok["status"] == "assigned"


async def test_delete_requeues_held_tasks(
    client: httpx.AsyncClient, register, admin: dict[str, str]
) -> None:
    await register("w1")
    ids: list[str] = []
    for _ in range(2):
        ids.append(
            (await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "w1"})).json()[
                "id"
            ]
        )
    await client.post(f"/api/v1/tasks/{ids[0]}/start", headers=as_agent("w1"))
    r = await client.delete("/api/v1/agents/w1", headers=as_agent("w1"))
    assert r.status_code == 200
    assert sorted(r.json()["requeued"]) == sorted(ids)
    for task_id in ids:
        task: dict[str, Any] = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        assert task["status"] == "pending" and task["assignee"] is None and task["requeues"] == 1
        assert task["attempts"][0]["outcome"] == "lost"
    assert (await client.get("/api/v1/agents/w1")).status_code == 404


async def test_a_null_status_or_limit_leaves_them_as_they_are(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1")
    r = await client.patch(
        "/api/v1/agents/w1", json={"status": "busy", "max_concurrent": 4}, headers=as_agent("w1")
    )
    assert r.status_code == 200
    again = await client.post(
        "/api/v1/agents",
        json={"id": "w1", "status": None, "max_concurrent": None},
        headers=as_agent("w1"),
    )
    assert again.status_code == 200, again.text
    assert again.json()["agent"]["status"] == "busy"
    assert again.json()["agent"]["max_concurrent"] == 4
