"""POST /api/v1/tasks/batch/complete: many completions in one call, each answering for itself."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import as_agent
from tests.api.helpers import BOTH

pytestmark = BOTH


async def claim(client: httpx.AsyncClient, agent: str, n: int) -> list[dict[str, Any]]:
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": n}, headers=as_agent(agent))
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


async def test_completes_every_held_task_in_one_call(client: httpx.AsyncClient, register) -> None:
    await register("w1", ["batch"], max_concurrent=10)
    r = await client.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"title": f"t{i}", "capabilities": ["batch"]} for i in range(5)]},
    )
    assert r.status_code == 201
    held = await claim(client, "w1", 5)
    assert len(held) == 5
    items = [{"task_id": t["id"], "result": {"n": i}, "summary": "ok"} for i, t in enumerate(held)]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert [o["task_id"] for o in out] == [t["id"] for t in held]
    assert all(o["ok"] and o["task"]["status"] == "completed" for o in out)
    for i, t in enumerate(held):
        detail = (await client.get(f"/api/v1/tasks/{t['id']}")).json()
        assert detail["result"] == {"n": i}
        assert detail["attempts"][0]["outcome"] == "completed"
    agent = (await client.get("/api/v1/agents/w1", headers=as_agent("w1"))).json()
    assert agent["active_tasks"] == 0


async def test_each_item_answers_for_itself(client: httpx.AsyncClient, register) -> None:
    await register("w1", ["solo"], max_concurrent=10)
    await register("w2", ["other"], max_concurrent=10)
    mine = (
        await client.post("/api/v1/tasks", json={"title": "m", "capabilities": ["solo"]})
    ).json()
    theirs = (
        await client.post("/api/v1/tasks", json={"title": "o", "capabilities": ["other"]})
    ).json()
    assert len(await claim(client, "w1", 1)) == 1
    assert len(await claim(client, "w2", 1)) == 1
    before = (await client.get(f"/api/v1/tasks/{theirs['id']}")).json()
    items = [
        {"task_id": mine["id"], "result": "done"},
        {"task_id": theirs["id"], "result": "stolen"},
        {"task_id": "no-such-task"},
        {"task_id": mine["id"] + "x", "attempt": 1},
    ]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert out[0]["ok"] and out[0]["task"]["status"] == "completed"
    assert not out[1]["ok"] and out[1]["error"]["code"] == "not_assignee"
    assert not out[2]["ok"] and out[2]["error"]["code"] == "not_found"
    assert not out[3]["ok"] and out[3]["error"]["code"] == "not_found"
    # The refused item changed nothing.
    assert (await client.get(f"/api/v1/tasks/{theirs['id']}")).json() == before


async def test_a_task_named_twice_answers_as_a_repeat(client: httpx.AsyncClient, register) -> None:
    """The same completion twice is a retried one: both items answer ok with the task, and
    it completes once. Another completion of the same task is that item's error alone."""
    await register("w1", ["twice"], max_concurrent=10)
    r = await client.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"title": f"t{i}", "capabilities": ["twice"]} for i in range(2)]},
    )
    assert r.status_code == 201
    a, b = await claim(client, "w1", 2)
    items = [
        {"task_id": a["id"], "result": {"n": 1}},
        {"task_id": b["id"], "result": "b"},
        {"task_id": a["id"], "result": {"n": 1}},
        {"task_id": b["id"], "result": "other"},
    ]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert [o["task_id"] for o in out] == [a["id"], b["id"], a["id"], b["id"]]
    assert out[0]["ok"] and out[2]["ok"] and out[0]["task"] == out[2]["task"]
    assert out[1]["ok"] and out[1]["task"]["result"] == "b"
    assert not out[3]["ok"] and out[3]["error"]["code"] == "duplicate_task"
    for task, result in ((a, {"n": 1}), (b, "b")):
        detail = (await client.get(f"/api/v1/tasks/{task['id']}")).json()
        assert (detail["status"], detail["result"]) == ("completed", result)
        events = (await client.get(f"/api/v1/tasks/{task['id']}/events")).json()["events"]
        assert [e["type"] for e in events].count("task.completed") == 1


async def test_bad_batches_are_refused_whole(client: httpx.AsyncClient, register) -> None:
    await register("w1", ["dup"])
    task = (await client.post("/api/v1/tasks", json={"title": "d", "capabilities": ["dup"]})).json()
    assert len(await claim(client, "w1", 1)) == 1
    for body, code in (
        ({"items": []}, "validation_error"),
        ({"items": [{"task_id": task["id"], "bogus": 1}]}, "validation_error"),
        ({"items": [{"task_id": "x"}] * 501}, "validation_error"),
    ):
        r = await client.post("/api/v1/tasks/batch/complete", json=body, headers=as_agent("w1"))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code
    detail = (await client.get(f"/api/v1/tasks/{task['id']}")).json()
    assert detail["status"] == "running"
