"""Costs on the runner's side, against a real broker with real agent subprocesses: the
Claude Code adapter reports what the CLI says a run cost, and a task whose cost crosses its
budget has its agent's process stopped, as a timeout or a cancellation does."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dispatchd.client import AsyncClient
from dispatchd.runner.adapters import ClaudeCode
from dispatchd.runner.runner import Runner
from dispatchd.runner.worker import Job, Worker
from tests.agent.conftest import LiveServer
from tests.agent.helpers import serving, settled
from tests.agent.test_runner import STANDIN_CLAUDE, runner_for
from tests.api.helpers import eventually

StartRunner = Callable[[Runner], Awaitable[asyncio.Task[None]]]

# An agent that writes its pid, reports its running cost through the local agent API
# (0.5 USD more each time, whatever the answer), then works on for a minute.
SPENDER = textwrap.dedent(
    """
    import json, os, sys, time, urllib.request
    api, task_id = os.environ["DISPATCH_URL"], os.environ["DISPATCH_TASK_ID"]
    open(sys.argv[-1], "w").write(str(os.getpid()))
    for i in range(1, 4):
        body = {"message": f"step {i}", "cost": {"usd": 0.5 * i, "input_tokens": 100 * i}}
        req = urllib.request.Request(
            f"{api}/tasks/{task_id}/progress", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req).read()
        except Exception as exc:
            print(f"progress refused: {exc}", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
async def start_runner() -> AsyncIterator[StartRunner]:
    async with serving() as start:
        yield start


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_budget_crossing_stops_the_agents_process(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    unique: str,
    tmp_path: Path,
) -> None:
    script = tmp_path / "spender.py"
    script.write_text(SPENDER)
    cap = f"spend-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(script)])
    runner.add_route(capabilities=[cap])
    await start_runner(runner)
    pid_file = tmp_path / "pid"
    task = await requester.create_task(
        "costly", prompt=str(pid_file), capabilities=[cap], max_cost_usd=1.2, max_attempts=3
    )
    await eventually(lambda: pid_file.exists() and pid_file.read_text(), "the agent to start")
    pid = int(pid_file.read_text())
    failed = await settled(requester, task.id, "failed")
    assert failed.error_code == "budget_exceeded"
    assert failed.cost.usd == 1.5 and failed.cost.input_tokens == 300
    assert [a.outcome for a in failed.attempts] == ["failed"]
    # The agent meant to work on for a minute: the runner stopped it.
    await eventually(lambda: not alive(pid), "the agent process to be stopped")
    comments = await eventually(
        lambda: _comments(requester, task.id), "the runner's note on the stopped task"
    )
    assert comments[0].startswith("agent stopped: budget exceeded"), comments
    # For good: the task is not offered again.
    await asyncio.sleep(0.5)
    assert (await requester.get_task(task.id)).attempt == 1


async def _comments(client: AsyncClient, task_id: str) -> list[str]:
    return [c.body for c in (await client.get_task(task_id)).comments]


async def test_claude_code_reports_what_the_run_cost(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    unique: str,
) -> None:
    cap = f"claude-{unique}"
    runner = runner_for(
        live_server, unique, [sys.executable, str(STANDIN_CLAUDE)], adapter=ClaudeCode()
    )
    runner.add_route(capabilities=[cap], args=["-p"])
    await start_runner(runner)
    task = await requester.create_task("feature", prompt="add the flag", capabilities=[cap])
    done = await settled(requester, task.id, "completed")
    # The stand-in prints the CLI's JSON: total_cost_usd 0.0123, usage 12 in, 48 out.
    assert done.cost.model_dump() == {"usd": 0.0123, "input_tokens": 12, "output_tokens": 48}
    assert [a.cost.usd for a in done.attempts] == [0.0123]


async def test_a_worker_handler_reports_cost_on_progress_and_completion(
    live_server: LiveServer, requester: AsyncClient, unique: str
) -> None:
    cap = f"worker-{unique}"
    async with AsyncClient(live_server.url, agent_id=f"worker-{unique}") as client:
        worker = Worker(client, claim_wait_s=2.0, heartbeat_s=1.0, grace_s=5.0)

        @worker.handler(cap)
        async def work(job: Job) -> None:
            await job.progress("thinking", cost={"usd": 0.02, "input_tokens": 500})
            await job.complete("done", "ok", cost={"usd": 0.05, "output_tokens": 70})

        async with serving() as start:
            await start(worker)
            task = await requester.create_task("w", capabilities=[cap])
            done = await settled(requester, task.id, "completed")
    assert done.cost.model_dump() == {"usd": 0.05, "input_tokens": 500, "output_tokens": 70}
    usd = await requester.create_task("budgeted", capabilities=[f"none-{unique}"], max_cost_usd=2)
    assert usd.max_cost_usd == 2.0
