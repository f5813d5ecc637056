"""Agent adapters: placeholders, the pass-through command line and outcome, and the Claude
Code adapter against a stand-in CLI that prints the real CLI's JSON result (first run,
resume on retry and after review with the feedback, error results, output that is not JSON).
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client.models import Task
from dispatchd.runner.adapters import (
    AgentAdapter,
    ClaudeCode,
    Invocation,
    Outcome,
    PassThrough,
    adapter_for,
    fill,
)
from dispatchd.runner.process import AgentProcess, ProcessResult, ProcessSpec

STANDIN = Path(__file__).parent / "standins" / "claude.py"


def make_task(**fields: Any) -> Task:
    now = "2026-01-01T00:00:00Z"
    data: dict[str, Any] = {
        "id": "t-1",
        "title": "Fix the crash",
        "prompt": "The app crashes on start.",
        "status": "running",
        "priority": "medium",
        "capabilities": ["code"],
        "requester": "alice",
        "assignee": "runner-1",
        "assigned_to": None,
        "owner": None,
        "scope": None,
        "attempt": 1,
        "max_attempts": 3,
        "context": {},
        "result": None,
        "summary": None,
        "error": None,
        "depends_on": [],
        "run_at": None,
        "due_at": None,
        "timeout_s": None,
        "review": False,
        "reviewer": None,
        "escalate_to": None,
        "model": None,
        "model_routed": False,
        "labels": [],
        "question": None,
        "progress": None,
        "requeues": 0,
        "review_cycles": 0,
        "escalated": False,
        "retry_at": None,
        "lease_expires_at": None,
        "deadline_at": None,
        "started_at": now,
        "finished_at": None,
        "created_at": now,
        "updated_at": now,
    }
    data.update(fields)
    return Task.model_validate(data)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


async def execute(
    adapter: AgentAdapter,
    task: Task,
    command: list[str],
    tmp_path: Path,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> tuple[Outcome, ProcessResult, list[str]]:
    """What the runner does with an adapter: prompt, argv, run, outcome."""
    result_file = tmp_path / f"result-{task.id}-{task.attempt}.json"
    prompt = adapter.prompt(task, fill("{title}: {prompt}", task, task.prompt))
    inv = Invocation(task, command, args, prompt, result_file)
    argv = adapter.argv(inv)
    spec = ProcessSpec(
        argv,
        env={"DISPATCH_TASK_ID": task.id, "DISPATCH_RESULT_FILE": str(result_file), **(env or {})},
        timeout_s=timeout_s,
        grace_s=0.5,
    )
    result = await AgentProcess(spec).run()
    return adapter.outcome(inv, result), result, argv


# --- placeholders ----------------------------------------------------------------------


def test_fill_replaces_known_placeholders_only() -> None:
    task = make_task(model="opus", context={"feedback": "add a test"})
    template = '{id}|{title}|{prompt}|{model}|{feedback}|{unknown}|{"json": 1}|{{id}}'
    assert fill(template, task, "do {id}") == (
        't-1|Fix the crash|do {id}|opus|add a test|{unknown}|{"json": 1}|{t-1}'
    )
    assert fill("[{model}][{feedback}]", make_task(), "p") == "[][]"


# --- pass-through ----------------------------------------------------------------------


def test_pass_through_appends_the_prompt_unless_placed() -> None:
    task = make_task()
    inv = Invocation(task, ["agent", "--flag"], ["--agent", "eng", "--task={id}"], "go", Path("r"))
    assert PassThrough().argv(inv) == ["agent", "--flag", "--agent", "eng", "--task=t-1", "go"]
    placed = Invocation(task, ["agent"], ["--input", "{prompt}", "-v"], "go", Path("r"))
    assert PassThrough().argv(placed) == ["agent", "--input", "go", "-v"]
    assert PassThrough().prompt(make_task(context={"feedback": "x"}), "same") == "same"


async def test_pass_through_result_file_json_text_or_stdout(tmp_path: Path) -> None:
    code = """
        import os, sys
        mode = sys.argv[1]  # the prompt follows it
        print("working...\\nall done")
        path = os.environ["DISPATCH_RESULT_FILE"]
        if mode == "json":
            open(path, "w").write('{"answer": 42, "summary": "found it"}')
        elif mode == "text":
            open(path, "w").write("Plain answer\\nwith details")
        elif mode == "empty":
            open(path, "w").close()
    """
    results: dict[str, Outcome] = {}
    for mode in ("json", "text", "empty", "none"):
        task = make_task(id=f"t-{mode}")
        outcome, _, _ = await execute(PassThrough(), task, [*py(code), mode], tmp_path)
        results[mode] = outcome
    assert all(o.ok for o in results.values())
    assert results["json"].result == {"answer": 42, "summary": "found it"}
    assert results["json"].summary == "found it"
    assert results["text"].result == "Plain answer\nwith details"
    assert results["text"].summary == "Plain answer"
    assert results["empty"].result == "working...\nall done"
    assert results["none"].result == "working...\nall done"
    assert results["none"].summary == "working..."
    assert results["none"].context is None


async def test_pass_through_failure_uses_the_error_tail(tmp_path: Path) -> None:
    stderr_code = "import sys; print('out'); print('boom: disk full', file=sys.stderr); sys.exit(2)"
    stdout_code = "import sys; print('only stdout here'); sys.exit(5)"
    quiet_code = "import sys; sys.exit(7)"
    task = make_task()
    with_stderr, _, _ = await execute(PassThrough(), task, py(stderr_code), tmp_path)
    with_stdout, _, _ = await execute(PassThrough(), task, py(stdout_code), tmp_path)
    quiet, _, _ = await execute(PassThrough(), task, py(quiet_code), tmp_path)
    assert not with_stderr.ok and with_stderr.retryable
    assert with_stderr.error == "exit code 2: boom: disk full"
    assert with_stdout.error == "exit code 5: only stdout here"
    assert quiet.error == "exit code 7 (no output)"


async def test_pass_through_timeout_stop_and_missing_executable(tmp_path: Path) -> None:
    task = make_task()
    ignore_term = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
    """
    timed_out, result, _ = await execute(
        PassThrough(), task, py(ignore_term), tmp_path, timeout_s=0.5
    )
    assert result.timed_out and result.killed
    assert not timed_out.ok and timed_out.retryable
    assert timed_out.error == "timed out after 0.5 s (stopped with KILL)"

    honour_term, _, _ = await execute(
        PassThrough(), task, ["/bin/sh", "-c", "sleep 60", "sh"], tmp_path, timeout_s=0.5
    )
    assert honour_term.error == "timed out after 0.5 s (stopped with TERM)"

    missing, result, _ = await execute(PassThrough(), task, [str(tmp_path / "nope")], tmp_path)
    assert result.exit_code is None
    assert not missing.ok and not missing.retryable
    assert missing.error is not None and "nope" in missing.error

    stopped = PassThrough().outcome(
        Invocation(task, ["x"], [], "p", tmp_path / "r"),
        ProcessResult(-15, "", "", False, True, False, 0.1, stop_reason="task cancelled"),
    )
    assert not stopped.ok
    assert stopped.error == "stopped: task cancelled"


def test_a_long_error_is_cut_to_its_tail() -> None:
    result = ProcessResult(1, "", "x" * 50_000 + "THE CAUSE", False, False, False, 1.0)
    outcome = PassThrough().outcome(Invocation(make_task(), ["a"], [], "p", Path("r")), result)
    assert outcome.error is not None
    assert len(outcome.error) <= 16_000
    assert outcome.error.endswith("THE CAUSE")


# --- Claude Code: command line ---------------------------------------------------------


def claude_inv(task: Task, args: tuple[str, ...] = (), prompt: str = "do it") -> Invocation:
    return Invocation(task, ["claude"], args, prompt, Path("r"))


def test_claude_first_run_command_line() -> None:
    argv = ClaudeCode().argv(claude_inv(make_task(), ("--model", "{model}")))
    assert argv == ["claude", "--output-format", "json", "--model", "", "-p", "do it"]
    # The seed's style: `-p` last among the route's args, the prompt after it.
    seed = ClaudeCode().argv(claude_inv(make_task(), ("--agent", "engineer", "-p")))
    assert seed == ["claude", "--output-format", "json", "--agent", "engineer", "-p", "do it"]
    # A route that chose its own format and placed the prompt keeps both.
    own = ClaudeCode().argv(
        claude_inv(make_task(), ("--output-format=stream-json", "-p", "{prompt}"))
    )
    assert own == ["claude", "--output-format=stream-json", "-p", "do it"]


@pytest.mark.parametrize(
    ("attempt", "context", "resumes"),
    [
        (1, {}, False),
        (1, {"session_id": "s-1"}, False),  # a first attempt starts fresh
        (2, {"session_id": "s-1"}, True),  # a retry resumes
        (1, {"session_id": "s-1", "feedback": "add tests"}, True),  # after a rejected review
        (2, {}, False),  # nothing to resume
        (2, {"session_id": ""}, False),
    ],
)
def test_claude_resumes_only_a_known_session_on_retry_or_review(
    attempt: int, context: dict[str, Any], resumes: bool
) -> None:
    argv = ClaudeCode().argv(claude_inv(make_task(attempt=attempt, context=context)))
    assert (argv[3:5] == ["--resume", "s-1"]) is resumes
    assert ("--resume" in argv) is resumes


def test_claude_prompt_carries_the_review_feedback() -> None:
    task = make_task(context={"feedback": "Handle the empty list."})
    prompt = ClaudeCode().prompt(task, "Sort the list.")
    assert "Handle the empty list." in prompt and "Sort the list." in prompt
    assert "rejected in review" in prompt
    # A template that already placed {feedback} is left as it is.
    placed = fill("{prompt} (review: {feedback})", task, "Sort the list.")
    assert ClaudeCode().prompt(task, placed) == placed
    assert ClaudeCode().prompt(make_task(), "Sort the list.") == "Sort the list."


def test_adapter_for_picks_by_executable_name() -> None:
    assert isinstance(adapter_for(["claude"]), ClaudeCode)
    assert isinstance(adapter_for(["/usr/local/bin/claude", "--verbose"]), ClaudeCode)
    assert isinstance(adapter_for(["python", "agent.py"]), PassThrough)
    assert isinstance(adapter_for(["claude-wrapper"]), PassThrough)
    assert isinstance(adapter_for([]), PassThrough)


# --- Claude Code: against the stand-in CLI ---------------------------------------------


@pytest.fixture
def claude(tmp_path: Path) -> list[str]:
    """An executable named `claude` that runs the stand-in."""
    path = tmp_path / "bin" / "claude"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return [str(path)]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_claude_first_run_then_resume_with_feedback(
    claude: list[str], tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    env = {"STANDIN_CLAUDE_RECORD": str(record)}
    adapter = adapter_for(claude)
    assert isinstance(adapter, ClaudeCode)

    first_task = make_task()
    first, _, _ = await execute(
        adapter, first_task, claude, tmp_path, args=("--agent", "eng"), env=env
    )
    assert first.ok, first.error
    assert first.result == "stand-in reply to: Fix the crash: The app crashes on start."
    assert first.summary == first.result
    assert first.context is not None
    session = first.context["session_id"]
    assert isinstance(session, str) and session
    assert first.context["claude"] == {
        "total_cost_usd": 0.0123,
        "num_turns": 1,
        "duration_ms": 1532,
    }

    # The runner merged the context into the task; then a reviewer rejected the result.
    rejected = make_task(attempt=2, context={"session_id": session, "feedback": "Add a test."})
    second, _, argv = await execute(
        adapter, rejected, claude, tmp_path, args=("--agent", "eng"), env=env
    )
    assert second.ok, second.error
    assert second.context is not None and second.context["session_id"] == session
    assert isinstance(second.result, str) and second.result.endswith(f"(resumed {session})")
    assert "Add a test." in second.result

    calls = records(record)
    assert [c["resume"] for c in calls] == [None, session]
    assert calls[0]["argv"] == [
        "--output-format",
        "json",
        "--agent",
        "eng",
        "-p",
        calls[0]["prompt"],
    ]
    assert calls[1]["argv"][:4] == ["--output-format", "json", "--resume", session]
    assert argv[1:] == calls[1]["argv"]
    assert "Add a test." in calls[1]["prompt"]
    assert calls[1]["env"]["DISPATCH_TASK_ID"] == "t-1"


async def test_claude_prefers_a_result_file(claude: list[str], tmp_path: Path) -> None:
    task = make_task(id="t-file")
    (tmp_path / "result-t-file-1.json").write_text('{"patch": "diff --git"}')
    outcome, _, _ = await execute(ClaudeCode(), task, claude, tmp_path)
    assert outcome.ok
    assert outcome.result == {"patch": "diff --git"}
    assert outcome.context is not None and "session_id" in outcome.context


@pytest.mark.parametrize("subtype", ["error_max_turns", "error_during_execution"])
async def test_claude_error_result_fails_but_keeps_the_session(
    claude: list[str], tmp_path: Path, subtype: str
) -> None:
    env = {"STANDIN_CLAUDE_MODE": subtype}
    outcome, result, _ = await execute(ClaudeCode(), make_task(), claude, tmp_path, env=env)
    assert result.exit_code == 1
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and outcome.error.startswith(f"claude reported {subtype}")
    assert outcome.context is not None and outcome.context["session_id"]
    assert outcome.context["claude"]["num_turns"] == 7


async def test_claude_tolerates_lines_before_the_json(claude: list[str], tmp_path: Path) -> None:
    env = {"STANDIN_CLAUDE_MODE": "noise"}
    outcome, result, _ = await execute(ClaudeCode(), make_task(), claude, tmp_path, env=env)
    assert result.stdout_tail.startswith("[warn]")
    assert outcome.ok
    assert isinstance(outcome.result, str) and outcome.result.startswith("stand-in reply to:")
    assert outcome.context is not None and outcome.context["session_id"]


async def test_claude_output_that_is_not_json_falls_back_to_pass_through(
    claude: list[str], tmp_path: Path
) -> None:
    env = {"STANDIN_CLAUDE_MODE": "garbage"}
    outcome, _, _ = await execute(ClaudeCode(), make_task(), claude, tmp_path, env=env)
    assert outcome.ok
    assert outcome.result == "Something went sideways; here is plain text instead of JSON."
    assert outcome.context is None


async def test_claude_cli_failure_without_json_fails_with_stderr(tmp_path: Path) -> None:
    # The stand-in refuses to run without -p, as the real CLI needs a prompt in print mode.
    inv = Invocation(make_task(), [sys.executable, str(STANDIN)], (), "", tmp_path / "r")
    argv = ClaudeCode().argv(inv)
    result = await AgentProcess(ProcessSpec(argv)).run()
    outcome = ClaudeCode().outcome(inv, result)
    assert not outcome.ok
    assert (
        outcome.error
        == "exit code 1: Error: Input must be provided either through stdin or as a prompt"
    )
