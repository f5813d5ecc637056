"""The subprocess Runner (SPEC §5) against a real broker, with real agent subprocesses:
results from a result file or the output, failures from the error output, timeouts,
cancellation, agents that report themselves, routes, and the Claude Code adapter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import AsyncClient
from dispatchd.client.models import Task
from dispatchd.runner.adapters import ClaudeCode
from dispatchd.runner.runner import Runner
from tests.agent.conftest import LiveServer
from tests.agent.helpers import serving, settled
from tests.api.helpers import eventually

STANDIN_CLAUDE = Path(__file__).parent / "standins" / "claude.py"
StartRunner = Callable[[Runner], Awaitable[asyncio.Task[None]]]

# An agent that shows what it got, then does what its prompt says.
AGENT = textwrap.dedent(
    """
    import json, os, sys, time, urllib.request
    prompt = sys.argv[-1]
    api, task_id = os.environ["DISPATCH_URL"], os.environ["DISPATCH_TASK_ID"]
    if prompt.startswith("pid:"):
        open(prompt[4:], "w").write(str(os.getpid()))
        time.sleep(60)
    if prompt == "ignore-term":
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring TERM", flush=True)
        time.sleep(60)
    if prompt == "sleep":
        time.sleep(60)
    if prompt == "ask":
        body = json.dumps({"question": "Proceed?", "wait_s": 30}).encode()
        req = urllib.request.Request(
            f"{api}/tasks/{task_id}/question", data=body, method="POST",
            headers={"Content-Type": "application/json"})
        print("answer=" + str(json.load(urllib.request.urlopen(req))["answer"]), flush=True)
        sys.exit(0)
    if prompt == "chatty":
        for i in range(50):
            print(f"step {i}", flush=True)
        sys.exit(0)
    if prompt == "fail":
        print("some output", flush=True)
        print("it broke: no such file", file=sys.stderr)
        sys.exit(3)
    if prompt == "self-report":
        body = json.dumps({"result": {"by": "agent"}, "summary": "reported myself"}).encode()
        req = urllib.request.Request(
            f"{api}/tasks/{task_id}/complete", data=body, method="POST",
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
        print("after reporting")
        sys.exit(0)
    if prompt == "result-file":
        with open(os.environ["DISPATCH_RESULT_FILE"], "w") as f:
            json.dump({"task": task_id, "args": sys.argv[1:]}, f)
        print("stdout is not the result")
        sys.exit(0)
    task = json.load(urllib.request.urlopen(f"{api}/tasks/{task_id}"))
    print(f"title={task['title']} id_env={task_id == task['id']} args={sys.argv[1:]}")
    """
)


@pytest.fixture
def agent_script(tmp_path: Path) -> Path:
    path = tmp_path / "agent.py"
    path.write_text(AGENT)
    return path


@pytest.fixture
async def start_runner() -> AsyncIterator[StartRunner]:
    async with serving() as start:
        yield start


def runner_for(live_server: LiveServer, unique: str, command: list[str], **kw: Any) -> Runner:
    kw.setdefault("claim_wait_s", 2.0)
    kw.setdefault("heartbeat_s", 1.0)
    kw.setdefault("kill_grace_s", 0.5)
    kw.setdefault("stop_grace_s", 5.0)
    kw.setdefault("progress_interval_s", 0.2)
    return Runner(command, url=live_server.url, agent_id=f"runner-{unique}", **kw)


async def test_exit_zero_completes_with_the_tail_of_the_output(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    cap = f"run-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])
    runner.add_route(capabilities=[cap], args=["--task", "{id}", "; rm -rf / $(boom)"])
    await start_runner(runner)
    task = await requester.create_task("hello", prompt="say hi", capabilities=[cap])
    done = await settled(requester, task.id, "completed")
    expected_args = ["--task", task.id, "; rm -rf / $(boom)", "say hi"]
    assert done.result == f"title=hello id_env=True args={expected_args}"
    assert done.assignee == runner.agent_id


async def test_a_result_file_is_the_result(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    cap = f"file-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])

    @runner.route(capabilities=[cap])
    def build(task: Task) -> str:
        return task.prompt

    await start_runner(runner)
    task = await requester.create_task("file", prompt="result-file", capabilities=[cap])
    done = await settled(requester, task.id, "completed")
    assert done.result == {"task": task.id, "args": ["result-file"]}


async def test_output_streams_as_progress_and_failure_carries_stderr(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    cap = f"chat-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])
    runner.add_route(capabilities=[cap], prompt="{prompt}")
    await start_runner(runner)
    chatty = await requester.create_task("chatty", prompt="chatty", capabilities=[cap])
    done = await settled(requester, chatty.id, "completed")
    # Fifty lines in a burst make a report or two (the latest lines), not fifty.
    assert 1 <= len(done.progress_log) <= 3
    assert "step 49" in (done.progress_log[-1].message or "")
    assert done.result is not None and str(done.result).endswith("step 49")

    failing = await requester.create_task(
        "fails", prompt="fail", capabilities=[cap], max_attempts=1
    )
    failed = await settled(requester, failing.id, "failed")
    assert failed.error is not None
    assert "it broke: no such file" in failed.error and "3" in failed.error
    assert "some output" not in failed.error


async def test_the_agents_timeout_stops_while_it_waits_for_an_answer(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    """A route timeout of 1.5 s, a question answered after 3 s: the agent was not stopped
    meanwhile, and runs on with the answer."""
    cap = f"ask-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])
    runner.add_route(capabilities=[cap], timeout=1.5)
    await start_runner(runner)
    task = await requester.create_task("asks", prompt="ask", capabilities=[cap], max_attempts=1)
    await settled(requester, task.id, "waiting_input")
    await asyncio.sleep(3)
    assert (await requester.get_task(task.id)).status.value == "waiting_input"
    await requester.provide_input(task.id, "yes")
    done = await settled(requester, task.id, "completed", "failed")
    assert done.status.value == "completed", (done.error, [c.body for c in done.comments])
    assert "answer=yes" in str(done.result)


async def test_a_timeout_stops_the_agent_and_says_so(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    cap, stubborn_cap = f"slow-{unique}", f"stubborn-{unique}"
    agent = [sys.executable, str(agent_script)]
    runner = runner_for(live_server, unique, agent)
    runner.add_route(capabilities=[cap], timeout=0.5)
    # TERM is ignored from before the agent starts (the disposition survives `exec`): a
    # Python slower to start than the timeout on a busy machine would die of TERM before
    # it could ignore it.
    ignore_term = ["sh", "-c", 'trap "" TERM; exec "$0" "$@"', *agent]
    runner.add_route(capabilities=[stubborn_cap], timeout=1, command=ignore_term)
    await start_runner(runner)
    polite = await requester.create_task(
        "sleeps", prompt="sleep", capabilities=[cap], max_attempts=1
    )
    stubborn = await requester.create_task(
        "ignores TERM", prompt="ignore-term", capabilities=[stubborn_cap], max_attempts=1
    )
    first = await settled(requester, polite.id, "failed")
    assert first.error is not None and "timed out" in first.error
    assert [c.body for c in first.comments] == ["agent timed out after 0.5s and was stopped (TERM)"]
    second = await settled(requester, stubborn.id, "failed")
    assert [c.body for c in second.comments] == [
        "agent timed out after 1s and was stopped (TERM, then KILL)"
    ]


async def test_cancelling_a_task_stops_its_agent(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
    tmp_path: Path,
) -> None:
    cap = f"stop-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])
    runner.add_route(capabilities=[cap])
    await start_runner(runner)
    pid_file = tmp_path / "pid"
    task = await requester.create_task("long", prompt=f"pid:{pid_file}", capabilities=[cap])
    await eventually(lambda: pid_file.exists() and pid_file.read_text(), "the agent to start")
    pid = int(pid_file.read_text())
    await requester.cancel_task(task.id, reason="not needed")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await eventually(gone, "the agent process to be stopped")
    detail = await requester.get_task(task.id)
    assert detail.status.value == "cancelled"
    await eventually(
        lambda: _comments(requester, task.id), "the runner's note on the cancelled task"
    )
    assert (await _comments(requester, task.id))[0].startswith("agent stopped: cancelled")


async def _comments(client: AsyncClient, task_id: str) -> list[str]:
    return [c.body for c in (await client.get_task(task_id)).comments]


async def test_an_agent_that_reports_itself_is_not_reported_again(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    cap = f"self-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])
    runner.add_route(capabilities=[cap])
    await start_runner(runner)
    task = await requester.create_task("self", prompt="self-report", capabilities=[cap])
    done = await settled(requester, task.id, "completed")
    assert done.result == {"by": "agent"} and done.summary == "reported myself"
    # The task is not completed a second time by the runner with the output.
    events = [e.type for e in await requester.task_events(task.id)]
    assert events.count("task.completed") == 1


async def test_routes_choose_by_capability_and_template(
    live_server: LiveServer,
    requester: AsyncClient,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
) -> None:
    code, docs = f"code-{unique}", f"docs-{unique}"
    runner = runner_for(live_server, unique, [sys.executable, str(agent_script)])
    runner.add_route(capabilities=[code], args=["code"], prompt="fix: {title}")
    runner.add_route(capabilities=[docs], args=["docs"], priority=1)
    await start_runner(runner)
    a = await requester.create_task("bug", prompt="p1", capabilities=[code])
    b = await requester.create_task("readme", prompt="p2", capabilities=[docs])
    assert str((await settled(requester, a.id, "completed")).result).endswith(
        "args=['code', 'fix: bug']"
    )
    assert str((await settled(requester, b.id, "completed")).result).endswith("args=['docs', 'p2']")
    status = runner.status()
    assert [r["capabilities"] for r in status["routes"]] == [[code], [docs]]


async def test_claude_code_sessions_resume_after_a_rejected_review(
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
    task = await requester.create_task(
        "feature", prompt="add the flag", capabilities=[cap], review=True
    )
    review = await settled(requester, task.id, "review")
    session = review.context.get("session_id")
    assert isinstance(session, str) and session
    assert "add the flag" in str(review.result)
    await requester.review_task(task.id, "rejected", "also update the docs")
    again = await settled(requester, task.id, "review")
    assert again.attempt == 2
    assert f"(resumed {session})" in str(again.result)
    assert "also update the docs" in str(again.result)


@pytest.fixture
def killed_runners_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory as a runner killed with SIGKILL mid-task left it: its
    task's folder is still there (an hour old); the path of that folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    left = Path(holder.stdout.readline().strip())
    holder.kill()
    holder.wait(10)
    holder.stdout.close()
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))
    assert left.is_dir()
    return left


async def test_a_runner_starting_removes_the_folders_of_killed_runners(
    live_server: LiveServer,
    start_runner: StartRunner,
    agent_script: Path,
    unique: str,
    killed_runners_folder: Path,
) -> None:
    await start_runner(runner_for(live_server, unique, [sys.executable, str(agent_script)]))
    assert not await asyncio.to_thread(killed_runners_folder.exists)


HOLD_FOLDER = """
import sys, time
from pathlib import Path
from dispatchd.runner.workdirs import task_dir
with task_dir(Path(sys.argv[1])) as path:
    print(path, flush=True)
    time.sleep(120)
"""
