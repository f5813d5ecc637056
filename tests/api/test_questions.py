"""Questions wait for people (SPEC §4 Rooms, docs/lifecycle.md#questions): while a task is
`waiting_input` its run timeout and lease stop counting, and start again from where they
were when the answer arrives; an optional input timeout fails a question nobody answers.

Deadlines are short here (a 2 s run timeout, a 1 s lease) and the waits far longer, so a
clock that kept counting would time the task out or requeue it during the wait.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.api.conftest import as_agent, make_settings
from tests.api.helpers import (
    BOTH,
    Register,
    act,
    assert_error,
    create_code_task,
    detail,
    heartbeat,
    task_events,
    ts,
    wait_assigned,
    wait_task,
)


def config(*, lease_ms: int = 1000, input_timeout_ms: int | None = None) -> dict[str, Any]:
    assignment: dict[str, Any] = {"lease_ms": lease_ms, "tick_interval_ms": 200}
    if input_timeout_ms is not None:
        assignment["input_timeout_ms"] = input_timeout_ms
    return {"assignment": assignment, "retry": {"backoff_base_ms": 50, "backoff_cap_ms": 200}}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return config()


async def start_on_w1(client: httpx.AsyncClient, register: Register, **body: Any) -> str:
    await register("w1", ["code"])
    task = await create_code_task(client, **body)
    await wait_assigned(client, task["id"], "w1", attempt=1)
    await act(client, task["id"], "start", "w1")
    return str(task["id"])


@BOTH
async def test_a_question_outlasts_the_run_timeout_and_the_task_completes(
    client: httpx.AsyncClient, register: Register
) -> None:
    """timeout_s 2, lease 1 s, nobody answers for 5 s: the task is still waiting (no
    timeout, no requeue, no heartbeat needed); the answer arrives and it runs on."""
    task_id = await start_on_w1(client, register, timeout_s=2, max_attempts=1)
    await asyncio.sleep(0.5)
    asked = await act(client, task_id, "input-request", "w1", question="Proceed?")
    assert asked["status"] == "waiting_input"
    assert asked["deadline_at"] is None and asked["lease_expires_at"] is None
    left = asked["run_left_ms"]
    assert 0 < left <= 1600

    await asyncio.sleep(5)
    waiting = await detail(client, task_id)
    assert waiting["status"] == "waiting_input" and waiting["attempt"] == 1
    assert waiting["requeues"] == 0 and waiting["question"] == "Proceed?"

    answered = await act(client, task_id, "input", "alice", answer="yes")
    assert answered["status"] == "running"
    # The run time left when it asked counts on from the answer, not from zero.
    assert ts(answered["deadline_at"]) - ts(answered["updated_at"]) == timedelta(milliseconds=left)
    assert answered["run_left_ms"] is None and answered["lease_expires_at"] is not None
    done = await act(client, task_id, "complete", "w1", result={"restarted": True})
    assert done["status"] == "completed"
    assert done["context"]["answers"] == [{"question": "Proceed?", "answer": "yes", "by": "alice"}]
    for kind in ("task.timed_out", "task.retrying", "task.requeued", "task.failed"):
        assert await task_events(client, task_id, kind) == []


@BOTH
async def test_the_run_timeout_fires_after_the_answer_when_the_agent_overruns(
    client: httpx.AsyncClient, register: Register
) -> None:
    task_id = await start_on_w1(client, register, timeout_s=2, max_attempts=1, assigned_to="w1")
    await act(client, task_id, "input-request", "w1", question="Proceed?")
    await asyncio.sleep(2.5)
    answered = await act(client, task_id, "input", "alice", answer="yes")
    # Heartbeats keep the lease: only the run timeout may end it.
    loop = asyncio.get_running_loop()
    until = loop.time() + 10
    while loop.time() < until:
        now = await detail(client, task_id)
        if now["status"] != "running":
            break
        await heartbeat(client, "w1")
        await asyncio.sleep(0.2)
    ended = await detail(client, task_id)
    assert ended["status"] == "timed_out"
    (final,) = await task_events(client, task_id, "task.timed_out")
    assert ts(final["created_at"]) >= ts(answered["deadline_at"])


@BOTH
async def test_heartbeats_during_the_wait_give_no_lease_and_nothing_requeues(
    client: httpx.AsyncClient, register: Register
) -> None:
    """An agent that goes quiet while waiting (its process blocked on the answer) and one
    that heartbeats: neither gets a lease to lose; both tasks keep waiting."""
    await register("w2", ["code"])
    quiet = await start_on_w1(client, register, assigned_to="w1")
    chatty = await create_code_task(client, assigned_to="w2")
    await act(client, chatty["id"], "start", "w2")
    for task_id, agent in ((quiet, "w1"), (chatty["id"], "w2")):
        await act(client, task_id, "input-request", agent, question="Which branch?")
    for _ in range(10):
        r = await client.post("/api/v1/agents/w2/heartbeat", json={}, headers=as_agent("w2"))
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.25)
    for task_id in (quiet, chatty["id"]):
        now = await detail(client, task_id)
        assert now["status"] == "waiting_input", now
        assert now["lease_expires_at"] is None and now["requeues"] == 0
        assert await task_events(client, task_id, "task.requeued") == []


@BOTH
async def test_an_unanswered_question_fails_the_task_at_its_input_timeout(
    client: httpx.AsyncClient, register: Register
) -> None:
    task_id = await start_on_w1(client, register, input_timeout_s=1, max_attempts=3)
    asked = await act(client, task_id, "input-request", "w1", question="Proceed?")
    assert ts(asked["deadline_at"]) - ts(asked["updated_at"]) == timedelta(seconds=1)
    failed = await wait_task(client, task_id, lambda t: t["status"] != "waiting_input", "fail")
    # Final at once, though attempts are left: another attempt would only ask again.
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert failed["error"].startswith("input_timeout")
    assert failed["question"] is None and failed["deadline_at"] is None
    (event,) = await task_events(client, task_id, "task.failed")
    assert event["data"]["code"] == "input_timeout" and event["data"]["final"] is True
    assert event["data"]["question"] == "Proceed?"
    assert ts(event["created_at"]) >= ts(asked["deadline_at"])
    late = await client.post(f"/api/v1/tasks/{task_id}/input", json={"answer": "yes"})
    assert_error(late, 409, None)


@pytest.mark.parametrize("settings_overrides", [config(input_timeout_ms=1000)], ids=["1s"])
async def test_the_input_timeout_defaults_from_configuration(
    client: httpx.AsyncClient, register: Register
) -> None:
    task_id = await start_on_w1(client, register)
    asked = await act(client, task_id, "input-request", "w1", question="Proceed?")
    assert ts(asked["deadline_at"]) - ts(asked["updated_at"]) == timedelta(seconds=1)
    failed = await wait_task(client, task_id, lambda t: t["status"] == "failed", "fail")
    assert failed["error"].startswith("input_timeout")


async def test_a_question_answered_in_time_is_not_failed_by_its_input_timeout(
    client: httpx.AsyncClient, register: Register
) -> None:
    task_id = await start_on_w1(client, register, input_timeout_s=1, timeout_s=60)
    await act(client, task_id, "input-request", "w1", question="Proceed?")
    answered = await act(client, task_id, "input", "alice", answer="yes")
    assert ts(answered["deadline_at"]) > ts(answered["updated_at"]) + timedelta(seconds=50)
    for _ in range(6):  # past the input timeout, the lease kept by heartbeats
        await heartbeat(client, "w1")
        await asyncio.sleep(0.25)
    now = await detail(client, task_id)
    assert now["status"] == "running" and now["error"] is None


async def test_a_bad_input_timeout_is_refused(client: httpx.AsyncClient, tmp_path: Path) -> None:
    for bad in (0, -1, "soon", 10**9):
        r = await client.post("/api/v1/tasks", json={"title": "t", "input_timeout_s": bad})
        assert_error(r, 422, None)
    with pytest.raises(ValidationError, match="input_timeout_ms"):
        make_settings(tmp_path, assignment={"input_timeout_ms": 10})
