"""The room calls of the SDK against a real server, and a real `dispatchd worker --room`
whose agent process an interrupt of its room stops."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dispatchd.client import AsyncClient, BadRequest, Client, Conflict, Forbidden, NotFound
from dispatchd.client.models import (
    Page,
    Room,
    RoomAgentStatus,
    RoomHistory,
    RoomRemoved,
    Task,
    TaskStatus,
)
from tests.agent.conftest import LiveServer
from tests.agent.helpers import settled
from tests.api.helpers import eventually
from tests.integration.server import clean_env, dispatchd_command

# An agent that says where it runs, then works until it is stopped.
AGENT = textwrap.dedent(
    """
    import os, sys, time
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(120)
    """
)


async def test_room_calls(live_server: LiveServer, requester: AsyncClient, unique: str) -> None:
    room_id = f"r-{unique}"
    made = await requester.create_room(room_id, workspace="~/ops/servers")
    assert isinstance(made, Room)
    assert made.id == room_id and made.name == f"#{room_id}"
    assert made.workspace == "~/ops/servers"
    assert made.agent_status is RoomAgentStatus.ERROR and made.agents == []

    agent = AsyncClient(live_server.url, agent_id=f"in-{unique}")
    async with agent:
        await agent.register_agent(capabilities=[f"cap-{unique}"], room=room_id)
        status = await requester.get_room(room_id)
        assert status.agent_status is RoomAgentStatus.IDLE
        assert status.agents == [f"in-{unique}"]

        task = await requester.dispatch(
            room_id, "Check disk usage\non every host", priority="high", context={"n": 1}
        )
        assert isinstance(task, Task)
        assert task.scope == room_id and task.title == "Check disk usage"
        claim = await agent.claim()
        assert [t.id for t in claim.tasks] == [task.id]
        await agent.report_progress(task.id, message="3/7 hosts")
        working = await requester.get_room(room_id)
        assert working.agent_status is RoomAgentStatus.WORKING
        assert working.current_task is not None and working.current_task.id == task.id
        assert working.current_task.progress == {"message": "3/7 hosts", "percent": None}

        page = await requester.list_rooms(limit=500)
        assert isinstance(page, Page) and room_id in [r.id for r in page.items]
        assert room_id in [r.id async for r in requester.iter_rooms(limit=1)]

        changed = await requester.update_room(room_id, name="#ops", clear_workspace=True)
        assert changed.name == "#ops" and changed.workspace is None

        with pytest.raises(Conflict) as busy:
            await requester.delete_room(room_id)
        assert busy.value.code == "room_busy"

        cancelled = await requester.interrupt_room(room_id, reason="enough")
        assert cancelled == [task.id]
        assert await requester.interrupt_room(room_id) == []
        assert (await requester.get_task(task.id)).status is TaskStatus.CANCELLED

        history = await requester.room_history(room_id, limit=50)
        assert isinstance(history, RoomHistory)
        assert [t.id for t in history.tasks] == [task.id]
        assert history.tasks[0].status is TaskStatus.CANCELLED
        kinds = [e.type for e in history.events]
        assert kinds[0] == "room.interrupted" and kinds[-1] == "room.created"

        # Only the admin changes rooms.
        with pytest.raises(Forbidden):
            await agent.create_room(f"x-{unique}")
        with pytest.raises(Forbidden):
            await agent.interrupt_room(room_id)

    removed = await requester.delete_room(room_id)
    assert isinstance(removed, RoomRemoved) and removed.id == room_id
    with pytest.raises(NotFound):
        await requester.get_room(room_id)
    with pytest.raises(NotFound):
        await requester.dispatch(room_id, "anything")
    with pytest.raises(BadRequest):
        await requester.create_room("Not A Slug")


def test_room_calls_blocking(live_server: LiveServer, unique: str) -> None:
    room_id = f"b-{unique}"
    with Client(
        live_server.url, agent_id="requester", admin_token=live_server.admin_token
    ) as client:
        assert client.create_room(room_id, name="#blocking").name == "#blocking"
        assert client.get_room(room_id).pending == 0
        task = client.dispatch(room_id, "queued work", title="Queued")
        assert task.title == "Queued" and task.scope == room_id
        assert client.get_room(room_id).pending == 1
        assert room_id in [r.id for r in client.iter_rooms()]
        assert [t.id for t in client.room_history(room_id).tasks] == [task.id]
        assert client.update_room(room_id, workspace="~/w").workspace == "~/w"
        assert client.interrupt_room(room_id) == []
        client.cancel_task(task.id)
        assert client.delete_room(room_id).id == room_id
        assert client.list_rooms(limit=500).items is not None


async def test_interrupting_a_room_stops_its_workers_agent(
    live_server: LiveServer, requester: AsyncClient, unique: str, tmp_path: Path
) -> None:
    room_id = f"w-{unique}"
    cap = f"room-{unique}"
    agent_id = f"room-worker-{unique}"
    await requester.create_room(room_id)
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    pid_file = tmp_path / "pid"
    process = await asyncio.create_subprocess_exec(
        *dispatchd_command(
            "worker",
            "--url",
            live_server.url,
            "--agent-id",
            agent_id,
            "--capability",
            cap,
            "--room",
            room_id,
            "--grace",
            "1",
            "--",
            sys.executable,
            str(agent),
            str(pid_file),
        ),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        async def joined() -> bool:
            return (await requester.get_room(room_id)).agents == [agent_id]

        await eventually(joined, "the worker to join its room", limit_s=30)
        task = await requester.dispatch(room_id, "long work", capabilities=[cap])
        await eventually(
            lambda: pid_file.exists() and pid_file.read_text(), "the agent to start", limit_s=30
        )
        pid = int(pid_file.read_text())
        assert (await requester.get_room(room_id)).agent_status is RoomAgentStatus.WORKING

        assert await requester.interrupt_room(room_id, reason="stop now") == [task.id]

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        await eventually(gone, "the agent process to be stopped", limit_s=30)
        done = await settled(requester, task.id, "cancelled")
        assert done.status is TaskStatus.CANCELLED
        history = await requester.room_history(room_id)
        interrupted = [e for e in history.events if e.type == "room.interrupted"]
        assert len(interrupted) == 1 and interrupted[0].data["cancelled"] == [task.id]
        assert (await requester.get_room(room_id)).agent_status is RoomAgentStatus.IDLE
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
