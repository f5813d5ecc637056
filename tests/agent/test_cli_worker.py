"""`dispatchd worker -- <command>` as a real process: it takes tasks for its capability,
runs the command for each, feeds a JSON board, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dispatchd.client import AsyncClient, NotFound
from tests.agent.conftest import LiveServer
from tests.agent.helpers import settled
from tests.api.helpers import eventually
from tests.integration.server import clean_env, dispatchd_command, run_cli

AGENT = textwrap.dedent(
    """
    import os, sys
    print(f"{os.environ['DISPATCH_TASK_ID']}: {' '.join(sys.argv[1:])}")
    """
)


async def test_worker_command_runs_tasks_feeds_a_board_and_stops_on_sigterm(
    live_server: LiveServer, requester: AsyncClient, unique: str, tmp_path: Path
) -> None:
    cap = f"cli-{unique}"
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    board = tmp_path / "board.json"
    card = {"id": "c1", "name": "From the board", "description": "card text", "labels": []}
    board.write_text(json.dumps({"queues": {"Todo": [card], "In Progress": [], "Done": []}}))
    agent_id = f"cli-worker-{unique}"
    process = await asyncio.create_subprocess_exec(
        *dispatchd_command(
            "worker",
            "--url",
            live_server.url,
            "--agent-id",
            agent_id,
            "--capability",
            cap,
            "--max-concurrent",
            "2",
            "--timeout",
            "30",
            "--progress-interval",
            "0.2",
            "--board",
            str(board),
            "--",
            sys.executable,
            str(agent),
            "--title",
            "{title}",
        ),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        tasks = [
            await requester.create_task(f"t{i}", prompt=f"prompt {i}", capabilities=[cap])
            for i in range(2)
        ]
        for i, task in enumerate(tasks):
            finished = await settled(requester, task.id, "completed")
            assert finished.result == f"{task.id}: --title t{i} prompt {i}"

        def card_done() -> bool:
            queues = json.loads(board.read_text())["queues"]
            return [c["id"] for c in queues["Done"]] == ["c1"]

        await eventually(card_done, "the board card to reach Done", limit_s=30)
        done_card = json.loads(board.read_text())["queues"]["Done"][0]
        assert any("--title From the board card text" in str(c) for c in done_card["comments"])
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    with pytest.raises(NotFound):
        await requester.get_agent(agent_id)


def test_worker_command_needs_a_command() -> None:
    out = run_cli("worker", "--capability", "code")
    assert out.returncode == 2
    assert "COMMAND" in out.stderr


def test_worker_help_shows_the_one_line_example() -> None:
    out = run_cli("worker", "--help")
    assert out.returncode == 0
    assert "-- claude -p {prompt}" in out.stdout
    assert "DISPATCH_RESULT_FILE" in out.stdout
