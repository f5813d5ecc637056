"""The room tools over stdio: status, history, dispatch into a room, answering a room's
question, interrupting a room, and the errors of each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from dispatchd.client import AsyncClient
from mcp import Client
from tests.agent.conftest import LiveServer
from tests.mcp.helpers import call, call_error, stdio_session


def controller(live_server: LiveServer, cwd: Path) -> AbstractAsyncContextManager[Client]:
    env = {"DISPATCH_ADMIN_TOKEN": live_server.admin_token}
    return stdio_session(live_server.url, cwd=cwd, env=env, args=("--as", "dispatch"))


@pytest.fixture
async def room(admin: AsyncClient, unique: str) -> str:
    room_id = f"ops-{unique}"
    await admin.create_room(room_id, name=f"#{room_id}", workspace="~/ops/servers")
    return room_id


@pytest.fixture
async def resident(live_server: LiveServer, room: str) -> AsyncIterator[AsyncClient]:
    """An agent living in the room, driven by the test."""
    async with AsyncClient(live_server.url, agent_id=f"{room}-agent") as client:
        await client.register_agent(capabilities=["ops"], room=room, max_concurrent=3)
        yield client


async def test_a_room_is_seen_working_then_waiting_and_answered_by_room(
    live_server: LiveServer, tmp_path: Path, room: str, resident: AsyncClient
) -> None:
    async with controller(live_server, tmp_path) as session:
        idle = await call(session, "get_room_status", {"room": room})
        assert idle["room"]["agent_status"] == "idle"
        assert idle["room"]["agents"] == [f"{room}-agent"]
        assert idle["room"]["workspace"] == "~/ops/servers"
        assert idle["summary"].startswith(f"{room}: idle, last activity ")

        task = (
            await call(
                session,
                "dispatch_task",
                {"room": room, "prompt": "Check disk usage\non every server", "priority": "high"},
            )
        )["task"]
        assert (task["title"], task["room"], task["priority"]) == ("Check disk usage", room, "high")
        claim = await resident.claim(wait_s=10)
        assert [t.id for t in claim.tasks] == [task["id"]]
        await resident.report_progress(task["id"], "3/7")
        working = await call(session, "get_room_status", {"room": room})
        assert working["summary"] == f"{room}: working on 'Check disk usage' (3/7)"

        await resident.request_input(task["id"], "Delete the old logs?")
        waiting = await call(session, "list_rooms")
        line = next(r["line"] for r in waiting["rooms"] if r["id"] == room)
        assert line == f"{room}: waiting for an answer on 'Check disk usage': Delete the old logs?"
        answered = await call(session, "answer_question", {"room": room, "answer": "yes"})
        assert answered["task"]["id"] == task["id"]
        assert answered["task"]["status"] == "running"
        none_left = await call_error(session, "answer_question", {"room": room, "answer": "again"})
        assert "no task waiting for input" in none_left

        await resident.complete_task(task["id"], "12% used", "disks fine")
        listed = await call(session, "list_tasks", {"room": room})
        assert [t["id"] for t in listed["tasks"]] == [task["id"]]
        history = await call(session, "read_room_history", {"room": room, "limit": 10})
        tasks = [e for e in history["entries"] if e["kind"] == "task"]
        assert tasks[0]["line"] == f"'Check disk usage' ({task['id']}): completed: disks fine"
        types = [e["data"]["type"] for e in history["entries"] if e["kind"] == "event"]
        assert "task.input_received" in types and "task.completed" in types
        times = [e["at"] for e in history["entries"]]
        assert times == sorted(times, reverse=True)
        assert len(history["entries"]) <= 10


async def test_interrupting_a_room_cancels_its_work_and_an_idle_room_has_nothing_to_cancel(
    live_server: LiveServer, tmp_path: Path, room: str, resident: AsyncClient, admin: AsyncClient
) -> None:
    async with controller(live_server, tmp_path) as session:
        nothing = await call(session, "interrupt_room", {"room": room})
        assert nothing["cancelled"] == []
        assert nothing["summary"] == f"{room}: nothing was running"
        task = (await call(session, "dispatch_task", {"room": room, "prompt": "tail logs"}))["task"]
        await resident.claim(wait_s=10)
        stopped = await call(session, "interrupt_room", {"room": room, "reason": "stop the tail"})
        assert stopped["cancelled"] == [task["id"]]
        assert stopped["summary"] == f"{room}: interrupted, cancelled {task['id']}"
        assert (await admin.get_task(task["id"])).status == "cancelled"
        history = await call(session, "read_room_history", {"room": room})
        interrupted = [
            e
            for e in history["entries"]
            if e["kind"] == "event" and e["data"]["type"] == "room.interrupted"
        ]
        assert len(interrupted) == 1
        assert "stop the tail" in interrupted[0]["line"]


async def test_a_dispatched_room_task_waits_for_an_agent_of_the_room(
    live_server: LiveServer, tmp_path: Path, room: str, unique: str
) -> None:
    async with AsyncClient(live_server.url, agent_id=f"outsider-{unique}") as outsider:
        await outsider.register_agent(capabilities=["ops"])
        async with controller(live_server, tmp_path) as session:
            task = (await call(session, "dispatch_task", {"room": room, "prompt": "p"}))["task"]
            assert task["status"] == "pending"
            claim = await outsider.claim(wait_s=0.5)
            assert claim.tasks == []


async def test_room_tools_name_what_is_wrong(live_server: LiveServer, tmp_path: Path) -> None:
    async with controller(live_server, tmp_path) as session:
        for tool, arguments in [
            ("get_room_status", {"room": "no-such-room"}),
            ("read_room_history", {"room": "no-such-room"}),
            ("interrupt_room", {"room": "no-such-room"}),
            ("dispatch_task", {"room": "no-such-room", "prompt": "p"}),
            ("answer_question", {"room": "no-such-room", "answer": "yes"}),
        ]:
            error = await call_error(session, tool, arguments)
            assert "404" in error and "no-such-room" in error, (tool, error)
        assert "room" in await call_error(session, "get_room_status", {})
        assert "limit" in await call_error(session, "read_room_history", {"room": "r", "limit": 0})
        assert "room" in await call_error(session, "get_room_status", {"room": ""})
