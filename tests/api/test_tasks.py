"""Task routes: create, batch, list with filters and pagination, detail, patch, actions."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import BOTH, create_task

pytestmark = BOTH


async def collect(client: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        url = f"/api/v1/tasks?{query}" + (f"&cursor={cursor}" if cursor else "")
        r = await client.get(url)
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def test_create_returns_the_task_shape(client: httpx.AsyncClient) -> None:
    task = await create_task(
        client,
        title="Fix login CSS",
        prompt="The button overlaps",
        capabilities=["code", "css"],
        priority="high",
        owner="team-a",
        scope="#web",
        labels=["bug"],
        context={"repo": "web", "nested": {"a": [1, 2]}},
        timeout_s=120,
        max_attempts=5,
        due_at="2030-01-01T00:00:00Z",
    )
    for key in (
        "id",
        "title",
        "prompt",
        "status",
        "priority",
        "capabilities",
        "requester",
        "assignee",
        "owner",
        "scope",
        "attempt",
        "max_attempts",
        "context",
        "result",
        "error",
        "created_at",
        "updated_at",
    ):
        assert key in task
    assert task["status"] == "pending"
    assert task["requester"] == "alice"
    assert task["assignee"] is None and task["attempt"] == 0 and task["max_attempts"] == 5
    assert task["capabilities"] == ["code", "css"]
    assert task["context"] == {"repo": "web", "nested": {"a": [1, 2]}}
    assert task["due_at"] == "2030-01-01T00:00:00.000000Z"
    assert task["created_at"].endswith("Z")


async def test_description_is_accepted_as_the_prompt(client: httpx.AsyncClient) -> None:
    task = await create_task(client, description="from Mission Control")
    assert task["prompt"] == "from Mission Control"


async def test_idempotency_key_header_and_field(client: httpx.AsyncClient) -> None:
    first = await client.post(
        "/api/v1/tasks", json={"title": "x"}, headers={"Idempotency-Key": "k1"}
    )
    again = await client.post(
        "/api/v1/tasks", json={"title": "x"}, headers={"Idempotency-Key": "k1"}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    by_field = await client.post("/api/v1/tasks", json={"title": "x", "idempotency_key": "k1"})
    assert by_field.status_code == 200 and by_field.json()["id"] == first.json()["id"]
    # Keys belong to their requester: another requester's "k1" is a new task.
    other = await client.post(
        "/api/v1/tasks", json={"title": "x"}, headers={"Idempotency-Key": "k1", "X-Agent-ID": "bob"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


async def test_concurrent_idempotent_creates_make_one_task(client: httpx.AsyncClient) -> None:
    results = await asyncio.gather(
        *(
            client.post(
                "/api/v1/tasks", json={"title": "once"}, headers={"Idempotency-Key": "race"}
            )
            for _ in range(10)
        )
    )
    assert sorted(r.status_code for r in results) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in results}) == 1
    assert len(await collect(client, "limit=50")) == 1


async def test_batch_creates_all_in_one_transaction(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    r = await client.post(
        "/api/v1/tasks/batch", json={"tasks": [{"title": f"t{i}"} for i in range(5)]}
    )
    assert r.status_code == 201, r.text
    assert [t["title"] for t in r.json()["items"]] == [f"t{i}" for i in range(5)]
    bad = await client.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"title": "ok"}, {"title": "dep", "depends_on": ["nope"]}]},
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "unknown_dependency"
    assert len(await collect(client, "limit=50")) == 5


async def test_batch_can_chain_dependencies_on_existing_tasks(client: httpx.AsyncClient) -> None:
    parent = await create_task(client, title="parent")
    r = await client.post(
        "/api/v1/tasks/batch", json={"tasks": [{"title": "child", "depends_on": [parent["id"]]}]}
    )
    assert r.status_code == 201
    assert r.json()["items"][0]["status"] == "blocked"


async def test_list_filters(client: httpx.AsyncClient, register) -> None:
    await register("w1", ["code"])
    a = await create_task(
        client, capabilities=["code"], priority="high", owner="o1", scope="#a", labels=["x"]
    )
    b = await create_task(client, capabilities=["research"], priority="low", owner="o2", scope="#b")
    c = await create_task(client, capabilities=["code"], assigned_to="w1")
    d = (
        await client.post(
            "/api/v1/tasks",
            json={"title": "bob's", "capabilities": ["writing"]},
            headers={"X-Agent-ID": "bob"},
        )
    ).json()

    async def ids(query: str) -> set[str]:
        return {t["id"] for t in await collect(client, query)}

    assert await ids("capability=code") == {a["id"], c["id"]}
    assert await ids("priority=high") == {a["id"]}
    assert await ids("priority=high,low") == {a["id"], b["id"]}
    assert await ids("priority=high&priority=low") == {a["id"], b["id"]}
    assert await ids("owner=o2") == {b["id"]}
    assert await ids("scope=%23a") == {a["id"]}
    assert await ids("label=x") == {a["id"]}
    assert await ids("assignee=w1") == {c["id"]}
    assert await ids("status=assigned") == {c["id"]}
    assert await ids("status=pending,assigned") == {a["id"], b["id"], c["id"], d["id"]}
    assert await ids("requester=bob") == {d["id"]}
    assert await ids("requester=alice&capability=code&status=pending") == {a["id"]}


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_cursor_pagination_visits_every_task_once(
    client: httpx.AsyncClient, order: str
) -> None:
    r = await client.post(
        "/api/v1/tasks/batch", json={"tasks": [{"title": f"t{i}"} for i in range(23)]}
    )
    created = [t["id"] for t in r.json()["items"]]
    seen = [t["id"] for t in await collect(client, f"limit=5&order={order}")]
    assert len(seen) == 23 and set(seen) == set(created)
    assert seen == sorted(seen, reverse=order == "desc")


async def test_detail_has_attempts_progress_and_comments(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    w1 = as_agent("w1")
    await client.post(f"/api/v1/tasks/{task['id']}/start", headers=w1)
    await client.post(
        f"/api/v1/tasks/{task['id']}/progress", json={"message": "half", "percent": 50}, headers=w1
    )
    r = await client.post(f"/api/v1/tasks/{task['id']}/comments", json={"body": "looks good"})
    assert r.status_code == 201 and r.json()["author"] == "alice"
    detail = (await client.get(f"/api/v1/tasks/{task['id']}")).json()
    assert detail["progress"] == {"message": "half", "percent": 50.0}
    assert [(p["message"], p["percent"], p["attempt"]) for p in detail["progress_log"]] == [
        ("half", 50.0, 1)
    ]
    assert [c["body"] for c in detail["comments"]] == ["looks good"]
    assert detail["attempts"][0]["agent_id"] == "w1" and detail["attempts"][0]["started_at"]
    assert detail["lease_expires_at"] is not None


async def test_patch_merges_context_changes_priority_and_cancels(client: httpx.AsyncClient) -> None:
    task = await create_task(client, context={"a": 1, "b": {"c": 2, "d": 3}})
    r = await client.patch(
        f"/api/v1/tasks/{task['id']}", json={"context": {"b": {"c": None, "e": 4}, "f": 5}}
    )
    assert r.status_code == 200
    assert r.json()["context"] == {"a": 1, "b": {"d": 3, "e": 4}, "f": 5}
    r = await client.patch(f"/api/v1/tasks/{task['id']}", json={"priority": "critical"})
    assert r.json()["priority"] == "critical"
    r = await client.patch(
        f"/api/v1/tasks/{task['id']}", json={"status": "cancelled", "reason": "dup"}
    )
    assert r.json()["status"] == "cancelled"
    r = await client.patch(f"/api/v1/tasks/{task['id']}", json={"priority": "low"})
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "cancelled"
    r = await client.patch(f"/api/v1/tasks/{task['id']}", json={})
    assert r.status_code == 422
    events = (await client.get(f"/api/v1/tasks/{task['id']}/events")).json()["events"]
    assert [e["type"] for e in events] == [
        "task.created",
        "task.updated",
        "task.updated",
        "task.cancelled",
    ]


async def test_illegal_transition_is_409_naming_the_state(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    r = await client.post(f"/api/v1/tasks/{task['id']}/complete", json={}, headers=as_agent("w1"))
    assert r.status_code == 200  # assigned → running → completed, implicitly started
    r = await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("w1"))
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "invalid_transition"
    assert error["details"]["current_state"] == "completed"
    assert "completed" in error["message"]


async def test_fail_retries_then_fails_for_good(client: httpx.AsyncClient, register) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1", max_attempts=1)
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/fail", json={"error": "boom"}, headers=as_agent("w1")
    )
    assert r.json()["status"] == "failed" and r.json()["error"] == "boom"
    # A manual retry grants another attempt.
    r = await client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert (
        r.status_code == 200 and r.json()["status"] == "pending" and r.json()["max_attempts"] == 2
    )

    retrying = await create_task(client, assigned_to="w1", max_attempts=3)
    r = await client.post(
        f"/api/v1/tasks/{retrying['id']}/fail", json={"error": "flaky"}, headers=as_agent("w1")
    )
    body = r.json()
    assert body["status"] == "pending" and body["assignee"] is None and body["retry_at"] is not None
    assert body["attempt"] == 1

    final = await create_task(client, assigned_to="w1", max_attempts=3)
    r = await client.post(
        f"/api/v1/tasks/{final['id']}/fail",
        json={"error": "bad input", "retryable": False},
        headers=as_agent("w1"),
    )
    assert r.json()["status"] == "failed"


async def test_input_request_and_answer(client: httpx.AsyncClient, register) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    w1 = as_agent("w1")
    await client.post(f"/api/v1/tasks/{task['id']}/start", headers=w1)
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/input-request", json={"question": "Proceed?"}, headers=w1
    )
    assert r.json()["status"] == "waiting_input" and r.json()["question"] == "Proceed?"
    r = await client.post(f"/api/v1/tasks/{task['id']}/input", json={"answer": "yes"})
    assert r.json()["status"] == "running"
    assert r.json()["context"]["answers"] == [
        {"question": "Proceed?", "answer": "yes", "by": "alice"}
    ]


async def test_review_approve_and_reject(client: httpx.AsyncClient, register) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, assigned_to="w1", review=True, reviewer={"capability": "review"}
    )
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/complete", json={"result": "v1"}, headers=as_agent("w1")
    )
    assert r.json()["status"] == "review"
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/review", json={"verdict": "approved"}, headers=as_agent("w1")
    )
    assert r.status_code == 403  # nobody reviews their own work
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/review",
        json={"verdict": "rejected", "feedback": "add tests"},
        headers=as_agent("rev"),
    )
    assert r.json()["status"] == "pending" and r.json()["context"]["feedback"] == "add tests"


async def test_dependencies_block_and_fail_children(client: httpx.AsyncClient, register) -> None:
    await register("w1")
    parent = await create_task(client, assigned_to="w1")
    child = await create_task(client, depends_on=[parent["id"]])
    assert child["status"] == "blocked"
    await client.patch(f"/api/v1/tasks/{parent['id']}", json={"status": "cancelled"})
    late = await create_task(client, depends_on=[parent["id"]])
    assert late["status"] == "failed" and parent["id"] in late["error"]


async def test_completed_parents_feed_inputs(client: httpx.AsyncClient, register) -> None:
    await register("w1")
    parent = await create_task(client, assigned_to="w1")
    await client.post(
        f"/api/v1/tasks/{parent['id']}/complete", json={"result": {"n": 42}}, headers=as_agent("w1")
    )
    child = await create_task(client, depends_on=[parent["id"]])
    # Not blocked: ready at once, and given to w1 in its creation's commit when the assigner
    # has already seen w1's slot free up.
    assert child["status"] in ("pending", "assigned")
    assert child["context"]["inputs"] == {parent["id"]: {"n": 42}}


async def test_a_batch_naming_an_agent_twice_respects_its_capacity(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", max_concurrent=1)
    response = await client.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"title": f"t{i}", "assigned_to": "w1"} for i in range(2)]},
    )
    assert response.status_code == 201, response.text
    tasks = response.json()["items"]
    # One slot: the batch's two reservations are checked together, so neither is handed
    # over in the batch's commit; both wait for the assigner, which gives w1 one.
    assert [t["assigned_to"] for t in tasks] == ["w1", "w1"]
    statuses = [t["status"] for t in tasks]
    assert statuses.count("assigned") <= 1, statuses
    agent = (await client.get("/api/v1/agents/w1")).json()
    assert agent["active_tasks"] <= 1, agent


async def test_run_at_in_the_future_blocks(client: httpx.AsyncClient) -> None:
    task = await create_task(client, run_at="2099-01-01T00:00:00+00:00")
    assert task["status"] == "blocked"
    past = await create_task(client, run_at="2000-01-01T00:00:00+00:00")
    assert past["status"] == "pending"


async def test_manual_assignment_respects_drain_and_capacity(
    client: httpx.AsyncClient, register, admin: dict[str, str]
) -> None:
    await register("w1", max_concurrent=1)
    first = await create_task(client, assigned_to="w1")
    second = await create_task(client, assigned_to="w1")
    assert first["status"] == "assigned"
    assert second["status"] == "pending" and second["assigned_to"] == "w1"
    await register("w2")
    await client.post("/api/v1/agents/w2/drain", headers=admin)
    drained = await create_task(client, assigned_to="w2")
    assert drained["status"] == "pending"
    unknown = await create_task(client, assigned_to="ghost")
    assert unknown["status"] == "pending"
