from __future__ import annotations

import httpx

from tests.api.conftest import as_agent


async def test_create_assign_start_complete(client: httpx.AsyncClient, register) -> None:
    await register("worker-1")
    r = await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "worker-1"})
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["status"] == "assigned" and task["assignee"] == "worker-1" and task["attempt"] == 1
    r = await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("worker-1"))
    assert r.json()["status"] == "running"
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/complete",
        json={"result": {"ok": 1}},
        headers=as_agent("worker-1"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    detail = (await client.get(f"/api/v1/tasks/{task['id']}")).json()
    assert [a["outcome"] for a in detail["attempts"]] == ["completed"]
    events = (await client.get(f"/api/v1/tasks/{task['id']}/events")).json()["events"]
    assert [e["type"] for e in events] == [
        "task.created",
        "task.assigned",
        "task.started",
        "task.completed",
    ]
