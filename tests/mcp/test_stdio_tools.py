"""The control-plane tools through a real MCP client session: the `mcp` SDK's client over
stdio against a `dispatchd mcp` process, against a real `dispatchd serve`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import AsyncClient
from mcp import Client
from tests.agent.conftest import LiveServer
from tests.api.helpers import eventually
from tests.mcp.helpers import call, call_error, stdio_session

TOOLS = {
    "list_rooms",
    "get_room_status",
    "read_room_history",
    "dispatch_task",
    "check_task",
    "interrupt_room",
    "list_tasks",
    "answer_question",
    "get_notifications",
}


def controller(live_server: LiveServer, cwd: Path) -> AbstractAsyncContextManager[Client]:
    """An MCP session as the control-plane agent `dispatch`, with the admin token. (A
    context manager in each test, not a fixture: the session's task group must close in
    the task that opened it.)"""
    env = {"DISPATCH_ADMIN_TOKEN": live_server.admin_token}
    return stdio_session(live_server.url, cwd=cwd, env=env, args=("--as", "dispatch"))


@pytest.fixture
async def agent(live_server: LiveServer, unique: str) -> AsyncIterator[AsyncClient]:
    """A worker agent with the capability `cap-<unique>`, driven by the test."""
    async with AsyncClient(live_server.url, agent_id=f"agent-{unique}") as client:
        await client.register_agent(capabilities=[f"cap-{unique}"], max_concurrent=5)
        yield client


async def test_the_tools_are_listed_with_descriptions_and_schemas(
    live_server: LiveServer, tmp_path: Path
) -> None:
    async with controller(live_server, tmp_path) as session:
        listed = (await session.list_tools()).tools
        assert {t.name for t in listed} == TOOLS
        for tool in listed:
            assert tool.description is not None and len(tool.description) > 60, tool.name
            assert tool.output_schema is not None, tool.name
            assert "summary" in tool.output_schema["properties"], tool.name
        schemas = {t.name: t.input_schema for t in listed}
        assert schemas["dispatch_task"]["required"] == ["prompt"]
        assert set(schemas["dispatch_task"]["properties"]) == {
            "room",
            "prompt",
            "title",
            "priority",
            "depends_on",
            "capabilities",
        }
        assert set(schemas["answer_question"]["properties"]) == {"task_id", "room", "answer"}
        assert set(schemas["get_notifications"]["properties"]) == {"after", "wait_s"}
        assert set(schemas["list_tasks"]["properties"]) == {"status", "room", "limit"}
        assert schemas["check_task"]["required"] == ["task_id"]
        assert "ctx" not in schemas["check_task"]["properties"]


async def test_a_requester_dispatches_background_work_and_waits_for_it_with_check_task(
    live_server: LiveServer, tmp_path: Path, agent: AsyncClient, unique: str
) -> None:
    """Seed 002: the main loop dispatches heavy work, stays free, and is woken by the
    task's changes instead of polling."""
    async with controller(live_server, tmp_path) as session:
        dispatched = await call(
            session,
            "dispatch_task",
            {"prompt": "Research RAG papers\nRead them all.", "capabilities": [f"cap-{unique}"]},
        )
        task = dispatched["task"]
        assert task["title"] == "Research RAG papers"
        assert task["requester"] == "dispatch"
        assert dispatched["summary"].startswith(f"dispatched: 'Research RAG papers' ({task['id']})")

        async def work() -> None:
            claim = await agent.claim(wait_s=10)
            assert [t.id for t in claim.tasks] == [task["id"]]
            await agent.complete_task(task["id"], {"papers": 7}, "7 papers read")

        worker = asyncio.create_task(work())
        checks: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while not checks or checks[-1]["task"]["status"] != "completed":
                checks.append(
                    await call(session, "check_task", {"task_id": task["id"], "wait_s": 30})
                )
        await worker
        # Each answer came with a change (none ran out its 30 s), so the waits were few:
        # assigned → running → completed at most.
        assert len(checks) <= 3
        for check in checks:
            # Each answered on a change, or at once for a task already finished when the
            # check began; none waited out its 30 s.
            assert check["changed"] or check["task"]["status"] == "completed"
            assert check["changed"] == (check["task"]["status"] != check["previous_status"])
            assert check["waited_s"] < 30
        done = checks[-1]
        assert done["task"]["result"] == {"papers": 7}
        assert done["summary"] == f"'Research RAG papers' ({task['id']}): completed: 7 papers read"


async def test_check_task_waits_out_its_wait_when_nothing_changes(
    live_server: LiveServer, tmp_path: Path, unique: str
) -> None:
    async with controller(live_server, tmp_path) as session:
        queued = await call(
            session, "dispatch_task", {"prompt": "nobody can", "capabilities": [f"none-{unique}"]}
        )
        task_id = queued["task"]["id"]
        check = await call(session, "check_task", {"task_id": task_id, "wait_s": 1})
        assert check["changed"] is False
        assert check["task"]["status"] == "pending"
        assert check["waited_s"] >= 0.9
        assert check["summary"].endswith("(no change in 1s)")


async def test_check_task_of_a_finished_task_answers_at_once(
    live_server: LiveServer, tmp_path: Path, agent: AsyncClient, unique: str
) -> None:
    async with controller(live_server, tmp_path) as session:
        task = (
            await call(
                session, "dispatch_task", {"prompt": "quick", "capabilities": [f"cap-{unique}"]}
            )
        )["task"]
        claim = await agent.claim(wait_s=10)
        await agent.complete_task(claim.tasks[0].id, "done")
        check = await call(session, "check_task", {"task_id": task["id"], "wait_s": 120})
        assert check["task"]["status"] == "completed"
        assert check["waited_s"] < 10


async def test_dispatch_with_dependencies_and_list_tasks_by_status(
    live_server: LiveServer, tmp_path: Path, unique: str
) -> None:
    async with controller(live_server, tmp_path) as session:
        first = (
            await call(
                session, "dispatch_task", {"prompt": "gather", "capabilities": [f"none-{unique}"]}
            )
        )["task"]
        second = await call(
            session,
            "dispatch_task",
            {
                "prompt": "summarize the findings",
                "title": "Summary",
                "priority": "high",
                "depends_on": [first["id"]],
                "capabilities": [f"none-{unique}"],
            },
        )
        assert second["task"]["status"] == "blocked"
        assert second["task"]["priority"] == "high"
        assert second["task"]["depends_on"] == [first["id"]]
        assert f"until {first['id']} complete" in second["summary"]
        blocked = await call(session, "list_tasks", {"status": "blocked", "limit": 200})
        assert second["task"]["id"] in [t["id"] for t in blocked["tasks"]]
        assert all(t["status"] == "blocked" for t in blocked["tasks"])
        either = await call(session, "list_tasks", {"status": ["blocked", "pending"], "limit": 200})
        ids = [t["id"] for t in either["tasks"]]
        assert first["id"] in ids and second["task"]["id"] in ids
        assert f"'Summary' ({second['task']['id']}): blocked" in either["summary"]


async def test_answer_question_by_task_id_lets_the_agent_run_on(
    live_server: LiveServer, tmp_path: Path, agent: AsyncClient, admin: AsyncClient, unique: str
) -> None:
    async with controller(live_server, tmp_path) as session:
        task = (
            await call(
                session,
                "dispatch_task",
                {"prompt": "restart nginx", "capabilities": [f"cap-{unique}"]},
            )
        )["task"]
        claim = await agent.claim(wait_s=10)
        await agent.request_input(task["id"], "Should I proceed with the nginx restart?")
        waiting = await call(session, "check_task", {"task_id": task["id"]})
        assert waiting["task"]["question"] == "Should I proceed with the nginx restart?"
        assert waiting["summary"].endswith("asking: Should I proceed with the nginx restart?")
        answered = await call(
            session, "answer_question", {"task_id": task["id"], "answer": "yes, proceed"}
        )
        assert answered["task"]["status"] == "running"
        assert answered["summary"].startswith(f"answered {task['id']}:")
        events = await admin.task_events(task["id"])
        received = [e for e in events if e.type == "task.input_received"]
        assert [e.data.get("answer") for e in received] == ["yes, proceed"]
        assert claim.tasks[0].id == task["id"]


async def test_answer_question_takes_exactly_one_of_task_id_and_room(
    live_server: LiveServer, tmp_path: Path
) -> None:
    async with controller(live_server, tmp_path) as session:
        for arguments in ({"answer": "yes"}, {"answer": "yes", "task_id": "t", "room": "infra"}):
            error = await call_error(session, "answer_question", arguments)
            assert "task_id" in error and "room" in error


async def test_answering_a_task_that_asks_nothing_is_the_apis_conflict(
    live_server: LiveServer, tmp_path: Path, unique: str
) -> None:
    async with controller(live_server, tmp_path) as session:
        task = (
            await call(
                session, "dispatch_task", {"prompt": "x", "capabilities": [f"none-{unique}"]}
            )
        )["task"]
        error = await call_error(
            session, "answer_question", {"task_id": task["id"], "answer": "yes"}
        )
        assert "409" in error


async def test_notifications_give_failures_at_once_and_completions_in_a_digest(
    live_server: LiveServer, tmp_path: Path, agent: AsyncClient, unique: str
) -> None:
    async with controller(live_server, tmp_path) as session:
        start = await call(session, "get_notifications", {"after": None})
        cursor = start["next_cursor"]
        cap = f"cap-{unique}"
        broken = (await call(session, "dispatch_task", {"prompt": "break", "capabilities": [cap]}))[
            "task"
        ]
        fine = (await call(session, "dispatch_task", {"prompt": "work", "capabilities": [cap]}))[
            "task"
        ]
        claim = await agent.claim(max_tasks=2, wait_s=10)
        assert {t.id for t in claim.tasks} == {broken["id"], fine["id"]}
        await agent.fail_task(broken["id"], "disk full", retryable=False)
        await agent.complete_task(fine["id"], "ok", "all fine")
        seen: list[dict[str, Any]] = []

        async def digest_arrived() -> bool:
            nonlocal cursor
            page = await call(session, "get_notifications", {"after": cursor, "wait_s": 10})
            seen.extend(page["notifications"])
            cursor = page["next_cursor"]
            return any(
                n["kind"] == "digest"
                and fine["id"] in [c["task_id"] for c in n["data"]["completed"]]
                for n in seen
            )

        await eventually(digest_arrived, "the completion's digest", limit_s=20)
        failed = [n for n in seen if n["kind"] == "failed" and n["task_id"] == broken["id"]]
        assert len(failed) == 1
        assert "disk full" in failed[0]["message"]
        # Read on from the cursor: nothing is given twice.
        again = await call(session, "get_notifications", {"after": cursor})
        assert not {n["id"] for n in again["notifications"]} & {n["id"] for n in seen}


async def test_errors_are_tool_errors_with_the_apis_message_and_the_server_lives_on(
    live_server: LiveServer,
    tmp_path: Path,
) -> None:
    async with controller(live_server, tmp_path) as session:
        missing = await call_error(session, "check_task", {"task_id": "no-such-task"})
        assert "no task no-such-task" in missing and "404" in missing
        assert "prompt" in await call_error(session, "dispatch_task", {})
        assert "wait_s" in await call_error(
            session, "check_task", {"task_id": "t", "wait_s": "soon"}
        )
        assert "wait_s" in await call_error(
            session, "check_task", {"task_id": "t", "wait_s": 10_000}
        )
        assert "priority" in await call_error(
            session, "dispatch_task", {"prompt": "x", "priority": "urgent"}
        )
        assert "status" in await call_error(session, "list_tasks", {"status": "sleeping"})
        assert "limit" in await call_error(session, "list_tasks", {"limit": 0})
        invalid = await call_error(
            session, "dispatch_task", {"prompt": "x", "capabilities": ["a b"]}
        )
        assert "422" in invalid and "capabilities" in invalid
        assert "no_such_tool" in await call_error(session, "no_such_tool", {})
        # A misspelt argument is refused, not dropped (which would dispatch unscoped work).
        typo = await call_error(
            session, "dispatch_task", {"prompt": "misspelt room", "rooom": "infra"}
        )
        assert "'rooom'" in typo and "room" in typo
        recent = await call(session, "list_tasks", {"limit": 200})
        assert "misspelt room" not in [t["title"] for t in recent["tasks"]]
        alive = await call(session, "list_tasks", {"limit": 1})
        assert len(alive["tasks"]) <= 1
