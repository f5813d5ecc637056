"""The local agent API against a real broker, driven by real agent scripts.

Each test registers a runner agent (the identity the local API forwards with), has a
requester create a task, claims it as the runner so it is running, and opens a scope for
it. The agents under `agents/` are Python scripts using only the standard library, run as
subprocesses with the scope's environment (`DISPATCH_URL`, `DISPATCH_TASK_ID`) and nothing
else: no broker address, no credential.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.client import AsyncClient
from dispatchd.client.models import Task, TaskStatus
from dispatchd.runner.local_api import LocalApi, TaskScope
from dispatchd.runner.local_seed import queue_kind, queue_slug
from tests.agent.conftest import LiveServer
from tests.api.helpers import eventually

AGENTS = Path(__file__).parent / "agents"


@dataclass
class Setup:
    runner: AsyncClient
    requester: AsyncClient
    api: LocalApi
    cap: str
    unique: str

    async def running_task(self, title: str = "pick a colour", **fields: Any) -> Task:
        """A task of the requester's, claimed by the runner: running, at attempt 1."""
        created = await self.requester.create_task(
            title, prompt="a prompt", capabilities=[self.cap], **fields
        )
        claim = await self.runner.claim(1, capabilities=[self.cap])
        assert [t.id for t in claim.tasks] == [created.id]
        assert claim.tasks[0].status == TaskStatus.RUNNING
        return claim.tasks[0]

    async def bystander(self) -> Task:
        """A task nobody can take, for the scope to be refused."""
        return await self.requester.create_task("not yours", capabilities=[f"nobody-{self.unique}"])


@pytest.fixture
async def setup(live_server: LiveServer, unique: str) -> AsyncIterator[Setup]:
    cap = f"colours-{unique}"
    runner = AsyncClient(live_server.url, agent_id=f"runner-{unique}")
    requester = AsyncClient(live_server.url, agent_id=f"requester-{unique}")
    await runner.register_agent(capabilities=[cap, f"spare-{unique}"], max_concurrent=1)
    status = {"active_agents": 1, "available_slots": 0, "running": ["t-1"]}
    api = LocalApi(runner, status=lambda: status)
    await api.start()
    try:
        yield Setup(runner, requester, api, cap, unique)
    finally:
        await api.close()
        await runner.aclose()
        await requester.aclose()


async def run_agent(scope: TaskScope, script: str, *args: str) -> dict[str, Any]:
    """Run an agent script with the scope's environment only; what it reported."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(AGENTS / script),
        *args,
        env=scope.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 40)
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return report


def local_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=10)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    return dict(error)


async def test_scope_env_points_at_its_own_address(setup: Setup) -> None:
    task = await setup.running_task()
    one, two = setup.api.open(task), setup.api.open(task)
    assert one.env() == {"DISPATCH_URL": one.url, "DISPATCH_TASK_ID": task.id}
    assert one.url.startswith(f"{setup.api.url}/s/")
    assert setup.api.url.startswith("http://127.0.0.1:")
    assert one.url != two.url
    assert (one.task_id, one.attempt, one.finished) == (task.id, task.attempt, None)
    assert one.secret not in repr(one)


async def test_agent_script_reads_comments_asks_follows_up_and_completes(setup: Setup) -> None:
    task = await setup.running_task()
    other = await setup.bystander()
    scope = setup.api.open(task)
    followup_cap = f"painting-{setup.unique}"

    async def answer_when_asked() -> None:
        async def waiting() -> bool:
            return (await setup.requester.get_task(task.id)).status == TaskStatus.WAITING_INPUT

        await eventually(waiting, "the agent's question", limit_s=20)
        await setup.requester.provide_input(task.id, "blue")

    answering = asyncio.create_task(answer_when_asked())
    seen = await run_agent(scope, "worker_agent.py", other.id, followup_cap)
    await answering

    # What the agent read: its task, with the board names beside ours.
    assert seen["own"]["id"] == seen["detail"]["id"] == task.id
    assert seen["own"]["status"] == "running"
    assert seen["own"]["name"] == seen["own"]["title"] == "pick a colour"
    assert seen["own"]["description"] == "a prompt"
    assert seen["own"]["assignees"] == [f"runner-{setup.unique}"]
    # Comment and progress went to the broker as the runner's agent.
    assert seen["comment"]["author"] == f"runner-{setup.unique}"
    assert seen["comment"]["text"] == seen["comment"]["body"] == "starting on it"
    assert seen["progress"]["progress"] == {"message": "half way", "percent": 50.0}
    # The question waited for the requester's answer.
    assert seen["asked"]["answer"] == "blue"
    assert seen["asked"]["task"]["status"] == "running"
    # The follow-up hands off from this task, and the agent may read it but not act on it.
    followup = seen["followup"]
    assert followup["depends_on"] == [task.id]
    assert followup["status"] == "blocked"
    assert followup["capabilities"] == [followup_cap]
    assert followup["priority"] == "high"
    assert followup["requester"] == f"runner-{setup.unique}"
    assert seen["followup_read"][0] == 200
    assert seen["followup_read"][1]["id"] == followup["id"]
    assert seen["followup_comment"] == 403
    # Another task is out of its scope.
    assert seen["other_read"][0] == seen["other_comment"][0] == 403
    assert seen["other_read"][1]["error"]["code"] == "out_of_scope"
    assert seen["done"]["status"] == "completed"
    assert scope.finished == "completed"

    final = await setup.requester.get_task(task.id)
    assert final.status == TaskStatus.COMPLETED
    result = {"colour": "blue", "followup": followup["id"]}
    assert final.result == result
    assert final.summary == "picked a colour"
    assert [(c.author, c.body) for c in final.comments] == [
        (f"runner-{setup.unique}", "starting on it")
    ]
    assert [(p.message, p.percent) for p in final.progress_log] == [("half way", 50.0)]
    assert [a["answer"] for a in final.context["answers"]] == ["blue"]

    # The follow-up starts once its parent completed, with the parent's result as input.
    async def unblocked() -> Task | None:
        t = await setup.requester.get_task(followup["id"])
        return t if t.status == TaskStatus.PENDING else None

    child = await eventually(unblocked, "the follow-up to be unblocked")
    assert child.context["inputs"] == {task.id: result}


async def test_agent_script_fails_its_task(setup: Setup) -> None:
    task = await setup.running_task()
    scope = setup.api.open(task)
    seen = await run_agent(scope, "failing_agent.py")
    assert seen["failed"]["status"] == "failed"
    assert scope.finished == "failed"
    final = await setup.requester.get_task(task.id)
    assert final.status == TaskStatus.FAILED
    assert final.error == "the input file is corrupt"


async def test_board_agent_works_unchanged(setup: Setup) -> None:
    task = await setup.running_task("Fix crash")
    scope = setup.api.open(task)
    queue = f"QA {setup.unique}"
    seen = await run_agent(scope, "board_agent.py", queue)

    assert seen["read"]["name"] == "Fix crash"
    assert seen["read"]["description"] == "a prompt"
    assert seen["read"]["comments"] == []
    assert seen["read"]["labels"] == []
    assert seen["moved_in_progress"]["status"] == "running"
    assert seen["moved_in_progress"]["moved"] == "active"
    assert "queue" not in seen["moved_in_progress"]["context"]
    # Board fields and a side queue are kept in the task's context.
    assert seen["patched"]["context"]["fields"] == {"labels": ["triaged"], "assignees": ["bot"]}
    assert seen["moved_aside"]["context"]["queue"] == "Project.Board.Needs Review"
    assert seen["moved_aside"]["status"] == "running"
    assert seen["commented"]["text"] == "Looked into it, writing a fix."
    # A card created in a queue requires that queue as a capability and follows this one.
    assert seen["created"]["title"] == "Write tests"
    assert seen["created"]["prompt"] == "for the fix"
    assert seen["created"]["capabilities"] == [f"QA-{setup.unique}"]
    assert seen["created"]["depends_on"] == [task.id]
    comments = seen["reread"]["comments"]
    assert [(c["author"], c["text"]) for c in comments] == [
        (f"runner-{setup.unique}", "Looked into it, writing a fix.")
    ]
    # Moving to Done completed the task.
    assert seen["moved_done"]["status"] == "completed"
    assert scope.finished == "completed"
    assert (await setup.requester.get_task(task.id)).status == TaskStatus.COMPLETED


async def test_move_to_a_failed_queue_fails_and_rejected_is_final(setup: Setup) -> None:
    task = await setup.running_task(max_attempts=3)
    scope = setup.api.open(task)
    async with local_http() as http:
        r = await http.post(f"{scope.url}/tasks/{task.id}/move", json={"target_queue": "rejected"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed"
    assert scope.finished == "failed"
    final = await setup.requester.get_task(task.id)
    assert final.status == TaskStatus.FAILED
    assert final.error == "the agent moved the task to rejected"


async def test_scope_refuses_other_tasks_closed_scopes_and_bad_input(setup: Setup) -> None:
    task = await setup.running_task()
    other = await setup.bystander()
    scope = setup.api.open(task)
    async with local_http() as http:
        for method, path, body in [
            ("GET", f"/tasks/{other.id}", None),
            ("POST", f"/tasks/{other.id}/complete", {"result": 1}),
            ("POST", f"/tasks/{other.id}/move", {"target_queue": "Done"}),
            ("PATCH", f"/tasks/{other.id}", {"name": "mine now"}),
        ]:
            r = await http.request(method, scope.url + path, json=body)
            error = assert_error(r, 403, "out_of_scope")
            assert error["details"]["task_id"] == other.id

        bad_json = await http.post(
            f"{scope.url}/tasks/{task.id}/comments",
            content=b'{"comment": ',
            headers={"Content-Type": "application/json"},
        )
        assert_error(bad_json, 422, "invalid_json")
        r = await http.post(f"{scope.url}/tasks/{task.id}/progress", json={"percent": "lots"})
        assert_error(r, 422, "validation_error")
        r = await http.post(f"{scope.url}/tasks/{task.id}/comments", json={"text": "hi"})
        assert_error(r, 422, "validation_error")
        r = await http.post(f"{scope.url}/tasks", json={"prompt": "no title"})
        assert_error(r, 422, "validation_error")
        r = await http.patch(f"{scope.url}/tasks/{task.id}", json={})
        assert_error(r, 422, "empty_patch")
        assert_error(await http.get(f"{scope.url}/nowhere"), 404, "not_found")

        assert_error(await http.get(f"{setup.api.url}/s/not-a-secret/task"), 404, "unknown_scope")
        assert (await http.get(f"{scope.url}/task")).status_code == 200
        setup.api.close_scope(scope)
        assert_error(await http.get(f"{scope.url}/task"), 404, "unknown_scope")

    untouched = await setup.requester.get_task(other.id)
    assert (untouched.status, untouched.comments, untouched.context) == (
        TaskStatus.PENDING,
        [],
        {},
    )


async def test_broker_errors_pass_through_with_their_status(setup: Setup) -> None:
    task = await setup.running_task()
    stale = setup.api.open(task.model_copy(update={"attempt": task.attempt + 1}))
    scope = setup.api.open(task)
    async with local_http() as http:
        r = await http.post(f"{stale.url}/tasks/{task.id}/complete", json={"result": "late"})
        assert_error(r, 409, "stale_attempt")
        assert stale.finished is None
        r = await http.post(f"{scope.url}/tasks/{task.id}/complete", json={"result": "first"})
        assert r.status_code == 200
        r = await http.post(f"{scope.url}/tasks/{task.id}/complete", json={"result": "again"})
        assert_error(r, 409, "invalid_transition")
    assert (await setup.requester.get_task(task.id)).result == "first"


async def test_unreachable_broker_is_a_502_in_the_error_form(setup: Setup) -> None:
    task = await setup.running_task()
    dead = AsyncClient("http://127.0.0.1:9", agent_id=f"runner-{setup.unique}", retries=0)
    async with dead, LocalApi(dead) as api:
        scope = api.open(task)
        async with local_http() as http:
            error = assert_error(await http.get(f"{scope.url}/task"), 502, "broker_unreachable")
    assert "could not reach the broker" in error["message"]


async def test_broker_failure_is_a_502_in_the_error_form(setup: Setup) -> None:
    task = await setup.running_task()

    def failing(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "internal_error", "message": "disk full", "details": {}}}
        return httpx.Response(500, json=body)

    broken = AsyncClient(
        "http://broker.invalid",
        agent_id=f"runner-{setup.unique}",
        retries=0,
        transport=httpx.MockTransport(failing),
    )
    async with broken, LocalApi(broken) as api:
        scope = api.open(task)
        async with local_http() as http:
            error = assert_error(await http.get(f"{scope.url}/task"), 502, "internal_error")
    assert error["details"]["broker_status"] == 500
    assert "disk full" in error["message"]


@pytest.mark.parametrize(
    ("queue", "kind"),
    [
        ("Done", "done"),
        ("My Project.My Board.Completed", "done"),
        ("  RESOLVED ", "done"),
        ("failed", "failed"),
        ("Error", "failed"),
        ("Cancelled", "rejected"),
        ("Won't Do", "rejected"),
        ("In Progress", "active"),
        ("in_progress", "active"),
        ("Board.WIP", "active"),
        ("Needs Review", "other"),
        ("Done.Later", "other"),
    ],
)
def test_queue_names_map_to_what_a_move_does(queue: str, kind: str) -> None:
    assert queue_kind(queue) == kind


def test_queue_names_become_capability_tags() -> None:
    assert queue_slug(" My Board, QA ") == "My-Board-QA"
    assert queue_slug("gpu") == "gpu"


async def test_question_without_an_answer_in_time(setup: Setup) -> None:
    task = await setup.running_task()
    scope = setup.api.open(task)
    question = f"{scope.url}/tasks/{task.id}/question"
    async with local_http() as http:
        r = await http.post(question, json={"question": "Anyone?"})
        assert r.status_code == 200, r.text
        assert r.json()["answer"] is None
        assert r.json()["task"]["status"] == "waiting_input"
        assert r.json()["task"]["question"] == "Anyone?"
        await setup.requester.provide_input(task.id, "yes")

        r = await http.post(question, json={"question": "Still there?", "wait_s": 0.5})
        assert r.status_code == 200, r.text
        assert r.json()["answer"] is None
        assert r.json()["task"]["status"] == "waiting_input"

        await setup.requester.provide_input(task.id, "yes again")

        # Closing the scope ends a wait for an answer.
        waiting = asyncio.create_task(http.post(question, json={"question": "x", "wait_s": 30}))

        async def asked() -> bool:
            return (await setup.requester.get_task(task.id)).question == "x"

        await eventually(asked, "the third question")
        setup.api.close_scope(scope)
        r = await asyncio.wait_for(waiting, 10)
        assert r.status_code == 200, r.text
        assert r.json()["answer"] is None


async def test_queues_and_status(setup: Setup) -> None:
    task = await setup.running_task()
    for n in range(2):
        await setup.requester.create_task(f"spare {n}", capabilities=[f"spare-{setup.unique}"])
    scope = setup.api.open(task)
    async with local_http() as http:
        queues = (await http.get(f"{scope.url}/queues")).json()["queues"]
        status = (await http.get(f"{scope.url}/status")).json()
    counts = {q["name"]: q["pending"] for q in queues}
    # The runner is at its one slot, so the spare tasks wait in their queue.
    assert counts == {setup.cap: 0, f"spare-{setup.unique}": 2}
    assert status == {
        "agent_id": f"runner-{setup.unique}",
        "active_agents": 1,
        "available_slots": 0,
        "running": ["t-1"],
    }


async def test_listening_beyond_loopback_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with AsyncClient("http://127.0.0.1:9", agent_id="w") as client:
        async with LocalApi(client, host="0.0.0.0") as api:
            assert api.url.startswith("http://")
        assert "beyond this machine" in caplog.text
        caplog.clear()
        async with LocalApi(client, host="127.0.0.1"):
            pass
        assert "beyond this machine" not in caplog.text


def test_a_start_cancelled_midway_leaves_no_socket_open() -> None:
    """A runner stopped while its local API starts: the server is stopped all the same.
    (Run in a loop of its own, closed before collecting, so that a listening socket left
    behind is reported here, under the suite's `error` warning filter.)"""

    async def cancel_the_start() -> None:
        async with AsyncClient("http://127.0.0.1:9", agent_id="w") as client:
            api = LocalApi(client)
            starting = asyncio.create_task(api.start())
            await asyncio.sleep(0)  # the server's task exists; it has not started yet
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            await api.close()

    asyncio.run(cancel_the_start())
    gc.collect()
