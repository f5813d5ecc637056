"""A worker that lost the answer to start, complete or fail sends it again: when that very
attempt already did it, the repeat is answered as the first call was (200 with the task)
and changes nothing; another attempt, or another outcome, is still a 409."""

from __future__ import annotations

from typing import Any

import httpx

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import Register, assert_error, create_task, task_events


async def post(
    client: httpx.AsyncClient, task_id: str, action: str, agent: str, body: Any = None
) -> httpx.Response:
    return await client.post(
        f"/api/v1/tasks/{task_id}/{action}", json=body, headers=as_agent(agent)
    )


async def everything(client: httpx.AsyncClient, runtime: Runtime, task_id: str) -> Any:
    r = await client.get(f"/api/v1/tasks/{task_id}")
    assert r.status_code == 200
    return r.json(), await task_events(client, task_id), await runtime.store.get_agent("w1")


async def test_start_again_answers_the_running_task(
    client: httpx.AsyncClient, runtime: Runtime, register: Register
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    first = await post(client, task["id"], "start", "w1")
    assert first.status_code == 200 and first.json()["status"] == "running"
    before = await everything(client, runtime, task["id"])
    for body in (None, {"attempt": 1}):
        again = await post(client, task["id"], "start", "w1", body)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert await everything(client, runtime, task["id"]) == before
    # Another attempt's start is not a repeat.
    assert_error(await post(client, task["id"], "start", "w1", {"attempt": 2}), 409, None)


async def test_complete_again_answers_the_completed_task(
    client: httpx.AsyncClient, runtime: Runtime, register: Register
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    body = {"result": {"answer": 42}, "summary": "done"}
    first = await post(client, task["id"], "complete", "w1", body)
    assert first.status_code == 200 and first.json()["status"] == "completed"
    before = await everything(client, runtime, task["id"])
    for sent in (body, {**body, "attempt": 1}):
        again = await post(client, task["id"], "complete", "w1", sent)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert await everything(client, runtime, task["id"]) == before
    assert len(await task_events(client, task["id"], "task.completed")) == 1
    # Another result, another outcome, another attempt or another agent: a conflict.
    other = {"result": {"answer": 41}, "summary": "done"}
    assert_error(await post(client, task["id"], "complete", "w1", other), 409, None)
    failing = {"error": "boom", "retryable": False}
    assert_error(await post(client, task["id"], "fail", "w1", failing), 409, None)
    assert_error(
        await post(client, task["id"], "complete", "w1", {**body, "attempt": 2}), 409, None
    )
    await register("w2")
    r = await post(client, task["id"], "complete", "w2", body)
    assert r.status_code in (403, 409)
    assert await everything(client, runtime, task["id"]) == before


async def test_fail_again_answers_the_failed_task(
    client: httpx.AsyncClient, runtime: Runtime, register: Register
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1", max_attempts=1)
    body = {"error": "the build broke", "retryable": False}
    first = await post(client, task["id"], "fail", "w1", body)
    assert first.status_code == 200 and first.json()["status"] == "failed"
    before = await everything(client, runtime, task["id"])
    again = await post(client, task["id"], "fail", "w1", {**body, "attempt": 1})
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await everything(client, runtime, task["id"]) == before
    other = {"error": "something else", "retryable": False}
    assert_error(await post(client, task["id"], "fail", "w1", other), 409, None)
    done = {"result": 1}
    assert_error(await post(client, task["id"], "complete", "w1", done), 409, None)
    assert await everything(client, runtime, task["id"]) == before


async def test_a_retried_fail_of_an_attempt_since_retried_answers_the_task(
    client: httpx.AsyncClient, runtime: Runtime, register: Register
) -> None:
    """A retryable failure put the task back in the queue; the same report again, from
    the same attempt, is still that report, not a conflict."""
    await register("w1")
    task = await create_task(client, assigned_to="w1", max_attempts=3)
    body = {"error": "flaky", "retryable": True, "attempt": 1}
    first = await post(client, task["id"], "fail", "w1", body)
    assert first.status_code == 200, first.text
    again = await post(client, task["id"], "fail", "w1", body)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == task["id"]
    assert len(await task_events(client, task["id"], "task.retrying")) == 1


async def test_a_batch_completion_sent_again_answers_each_task(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", max_concurrent=5)
    tasks = [await create_task(client, assigned_to="w1", title=f"t{i}") for i in range(2)]
    items = [{"task_id": t["id"], "result": {"n": i}} for i, t in enumerate(tasks)]
    first = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    assert first.status_code == 200 and all(o["ok"] for o in first.json()["items"])
    again = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    assert again.status_code == 200
    assert [o["task"] for o in again.json()["items"]] == [o["task"] for o in first.json()["items"]]
    other = [{**items[0], "result": "something else"}]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": other}, headers=as_agent("w1")
    )
    [out] = r.json()["items"]
    assert not out["ok"] and out["error"]["code"] == "invalid_transition"
    for t in tasks:
        assert len(await task_events(client, t["id"], "task.completed")) == 1
