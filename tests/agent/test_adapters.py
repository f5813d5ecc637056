"""Agent adapters: placeholders, the pass-through command line and outcome, and the Claude
Code adapter against a stand-in CLI that prints the real CLI's JSON result (first run,
resume on retry and after review with the feedback, only on the session's host, error
results, output that is not JSON), and the bounds on what they report: a result always fits
the broker's 1 MiB body limit, an error text is never empty nor longer than 16 000 characters.
"""

from __future__ import annotations

import json
import socket
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
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
from tests.agent.helpers import make_task

STANDIN = Path(__file__).parent / "standins" / "claude.py"


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


MiB = 1024 * 1024


def complete_body(outcome: Outcome) -> int:
    """Bytes of the body that completes the task with `outcome`, as the client sends it."""
    body = {"result": outcome.result, "summary": outcome.summary, "attempt": 1}
    return len(httpx.Request("POST", "http://broker/", json=body).content)


@pytest.mark.parametrize(
    ("content", "size"),
    [
        (b"line of the report\n" * 200_000, 3_800_000),  # far beyond any limit
        (b"x" * MiB, MiB),  # exactly the broker's body limit
        (b'"' + b"y" * (MiB - 2) + b'"', MiB),  # a JSON string just as large
    ],
)
async def test_a_large_result_file_is_reported_as_its_head_with_a_note(
    tmp_path: Path, content: bytes, size: int
) -> None:
    (tmp_path / "result-t-1-1.json").write_bytes(content)  # where `execute` points the agent
    outcome, result, _ = await execute(PassThrough(), make_task(), py("pass"), tmp_path)
    assert result.exit_code == 0, result.stderr_tail
    assert outcome.ok
    assert isinstance(outcome.result, str)
    note = f"\n\n[result file truncated: {size} bytes, first 512 KiB kept]"
    assert outcome.result.endswith(note)
    assert outcome.result == content[: 512 * 1024].decode() + note
    assert complete_body(outcome) < MiB


@pytest.mark.parametrize(
    ("content", "cut"),
    [
        (b"\x01" * 500_000, True),  # within 512 KiB, but each byte becomes "\\u0001" in JSON
        (b"\xff" * 500_000, True),  # not UTF-8: each byte becomes a 3-byte replacement character
        (b"[" + b"1e5," * 130_000 + b"1]", False),  # JSON that grows when parsed and re-encoded
    ],
)
def test_a_result_file_that_grows_when_encoded_still_fits(
    tmp_path: Path, content: bytes, cut: bool
) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(content)
    inv = Invocation(make_task(), ["agent"], [], "p", path)
    outcome = PassThrough().outcome(inv, ProcessResult(0, "", "", False, False, False, 1.0))
    assert outcome.ok
    assert isinstance(outcome.result, str)
    if cut:
        assert f"[result file truncated: {len(content)} bytes, first " in outcome.result
    else:  # reported whole, as the text it is
        assert outcome.result == content.decode()
    assert complete_body(outcome) < MiB


def test_a_result_from_a_large_output_keeps_its_tail_and_fits() -> None:
    output = "\x02" * (3 * MiB) + "THE END"  # an output cap of several MiB
    result = ProcessResult(0, output, "", False, False, False, 1.0)
    for adapter in (PassThrough(), ClaudeCode()):
        inv = Invocation(make_task(), ["agent"], [], "p", Path("/nonexistent/result"))
        outcome = adapter.outcome(inv, result)
        assert outcome.ok
        assert isinstance(outcome.result, str)
        assert outcome.result.startswith("[output truncated: last ")
        assert outcome.result.endswith("THE END")
        assert complete_body(outcome) < MiB


def failing_results() -> list[ProcessResult]:
    long = "z" * 50_000
    return [
        ProcessResult(None, "", "", False, False, False, 0.0, spawn_error=f"cannot start {long}"),
        ProcessResult(None, "", "", False, False, False, 0.0, spawn_error=""),
        ProcessResult(-15, "", "", False, True, False, 1.0, stop_reason=long),
        ProcessResult(-9, "", long, True, False, True, 1.0, timeout_s=1.0),
        ProcessResult(3, long, long, False, False, False, 1.0),
        ProcessResult(4, "", " \n ", False, False, False, 1.0),
        ProcessResult(1, json.dumps({"type": "result", "subtype": "error_x", "is_error": True,
                                     "errors": [long]}), "", False, False, False, 1.0),
    ]  # fmt: skip


@pytest.mark.parametrize("adapter", [PassThrough(), ClaudeCode()], ids=["pass", "claude"])
@pytest.mark.parametrize("result", failing_results())
def test_every_error_text_is_clipped_and_never_empty(
    adapter: AgentAdapter, result: ProcessResult
) -> None:
    outcome = adapter.outcome(Invocation(make_task(), ["a"], [], "p", Path("r")), result)
    assert not outcome.ok
    assert outcome.error is not None
    assert len(outcome.error.strip()) > 0 and len(outcome.error) <= 16_000


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


@pytest.mark.parametrize(
    ("host", "resumes"),
    [
        (socket.gethostname(), True),  # the machine that holds the session
        ("another-machine.example", False),  # its CLI has no such session
        (None, True),  # recorded before hosts were: resumed as it always was
    ],
)
def test_claude_resumes_a_session_only_on_its_host(host: str | None, resumes: bool) -> None:
    context: dict[str, Any] = {"session_id": "s-1", "feedback": "add tests"}
    if host is not None:
        context["session_host"] = host
    argv = ClaudeCode().argv(claude_inv(make_task(attempt=2, context=context)))
    assert ("--resume" in argv) is resumes
    assert ("s-1" in argv) is resumes


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
    assert first.context["session_host"] == socket.gethostname()
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


async def test_claude_on_another_host_starts_afresh_with_the_feedback(
    claude: list[str], tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    context = {
        "session_id": "s-elsewhere",
        "session_host": "another-machine.example",
        "feedback": "Cover the empty input.",
    }
    task = make_task(attempt=2, context=context)
    outcome, _, argv = await execute(
        ClaudeCode(), task, claude, tmp_path, env={"STANDIN_CLAUDE_RECORD": str(record)}
    )
    assert "--resume" not in argv
    (call,) = records(record)
    assert call["resume"] is None
    assert "Cover the empty input." in call["prompt"]
    assert outcome.ok, outcome.error
    assert outcome.context is not None
    assert outcome.context["session_id"] not in ("", "s-elsewhere")
    assert outcome.context["session_host"] == socket.gethostname()


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
