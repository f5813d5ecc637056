"""AgentProcess with real subprocesses: arguments, environment, exit codes, output caps,
timeouts (TERM honoured or ignored), the whole process group, stop(), cancellation and
rate-limited output callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from dispatchd.runner.process import AgentProcess, ProcessSpec
from tests.api.helpers import eventually

# Short enough to keep the file fast, long enough for a loaded machine to start a shell.
TIMEOUT = 0.5
GRACE = 0.5


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def running(pid: int) -> bool:
    """Whether the process runs; a zombie (dead, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat[stat.rfind(")") + 2] not in "ZX"


async def read_pid(path: Path) -> int:
    def probe() -> str | None:
        return path.read_text().strip() or None if path.exists() else None

    return int(await eventually(probe, f"a pid in {path}"))


# --- arguments, environment, exit codes -------------------------------------------------


async def test_environment_reaches_the_child_with_stdin_closed(tmp_path: Path) -> None:
    env = {
        "DISPATCH_URL": "http://127.0.0.1:9/scope/abc",
        "DISPATCH_TASK_ID": "task-1",
        "DISPATCH_RESULT_FILE": str(tmp_path / "result.json"),
    }
    code = """
        import json, os, sys
        keys = ["DISPATCH_URL", "DISPATCH_TASK_ID", "DISPATCH_RESULT_FILE", "PATH"]
        print(json.dumps({k: os.environ.get(k) for k in keys}))
        print(json.dumps({"stdin": sys.stdin.read(), "cwd": os.getcwd()}))
    """
    result = await AgentProcess(ProcessSpec(py(code), env=env, cwd=tmp_path)).run()
    assert result.exit_code == 0, result.stderr_tail
    seen, io = (json.loads(line) for line in result.stdout_tail.splitlines())
    assert {k: seen[k] for k in env} == env
    assert seen["PATH"] == os.environ["PATH"]  # the parent's environment is kept
    assert io == {"stdin": "", "cwd": str(tmp_path)}


async def test_arguments_arrive_verbatim_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    keep = tmp_path / "keep"
    keep.write_text("still here")
    hostile = [
        f"; rm -rf {tmp_path}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "two words",
        "*",
        "quote ' and \" and \\",
        "",
    ]
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    result = await AgentProcess(ProcessSpec(py(code, *hostile), cwd=tmp_path)).run()
    assert json.loads(result.stdout_tail) == hostile
    assert not marker.exists()
    assert keep.exists()


async def test_exit_codes_and_separate_streams() -> None:
    code = """
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
        sys.exit(int(sys.argv[1]))
    """
    ok = await AgentProcess(ProcessSpec(py(code, "0"))).run()
    failed = await AgentProcess(ProcessSpec(py(code, "3"))).run()
    assert (ok.exit_code, failed.exit_code) == (0, 3)
    for result in (ok, failed):
        assert result.stdout_tail == "to stdout\n"
        assert result.stderr_tail == "to stderr\n"
        assert not (result.timed_out or result.stopped or result.killed)
        assert result.spawn_error is None


async def test_missing_or_unrunnable_executable_gives_a_result(tmp_path: Path) -> None:
    missing = await AgentProcess(ProcessSpec([str(tmp_path / "no-such-agent"), "x"])).run()
    assert missing.exit_code is None
    assert missing.spawn_error is not None and "no-such-agent" in missing.spawn_error
    assert "No such file" in missing.spawn_error

    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    denied = await AgentProcess(ProcessSpec([str(script)])).run()
    assert denied.exit_code is None
    assert denied.spawn_error is not None and "Permission denied" in denied.spawn_error

    no_cwd = await AgentProcess(ProcessSpec(["true"], cwd=tmp_path / "gone")).run()
    assert no_cwd.exit_code is None
    assert no_cwd.spawn_error is not None and no_cwd.spawn_error.endswith(str(tmp_path / "gone"))


async def test_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        AgentProcess(ProcessSpec([]))


# --- output caps -----------------------------------------------------------------------


async def test_output_is_capped_to_its_tail_with_bounded_memory() -> None:
    # 16 MiB on each stream, in lines numbered so the tail is known.
    code = """
        import sys
        line = "x" * 1000
        for i in range(16 * 1024):
            sys.stdout.write(f"{i:08d} {line}\\n")
            sys.stderr.write(f"{i:08d} {line}\\n")
        sys.stdout.write("THE END")
    """
    cap = 4096
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    # Measured from here, so that a run already tracing (PYTHONTRACEMALLOC, to find where
    # a leaked object was made) counts only what this run holds.
    tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    baseline, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    try:
        proc = AgentProcess(
            ProcessSpec(py(code), output_cap=cap), on_output=collect, progress_interval_s=0.2
        )
        result = await proc.run()
        _, peak = tracemalloc.get_traced_memory()
        peak -= baseline
    finally:
        if not tracing:
            tracemalloc.stop()
    assert result.exit_code == 0
    assert len(result.stdout_tail.encode()) <= cap
    assert result.stdout_tail.endswith("x\nTHE END")
    assert len(result.stderr_tail.encode()) <= cap
    assert result.stderr_tail.endswith(f"{16 * 1024 - 1:08d} {'x' * 1000}\n")
    # What reached the callback is capped the same way between two calls.
    assert all(len(chunk) <= cap for chunk in chunks)
    assert chunks[-1].endswith("THE END")
    # 32 MiB went through; far less was ever held at once.
    assert peak < 4 * 1024 * 1024


async def test_a_tail_cut_inside_a_character_decodes_cleanly() -> None:
    code = "import sys; sys.stdout.write('é' * 1000)"  # two bytes each
    result = await AgentProcess(ProcessSpec(py(code), output_cap=101)).run()
    assert result.stdout_tail == "é" * 50


# --- timeouts and the process group ----------------------------------------------------


async def test_timeout_with_term_honoured_is_not_a_kill() -> None:
    script = "trap 'echo cleaned up; exit 0' TERM; echo started; while :; do sleep 0.05; done"
    spec = ProcessSpec(sh(script), timeout_s=TIMEOUT, grace_s=10.0)
    result = await AgentProcess(spec).run()
    assert result.timed_out and not result.killed and not result.stopped
    assert result.stop_reason == "timeout"
    assert result.timeout_s == TIMEOUT
    assert result.stdout_tail == "started\ncleaned up\n"
    assert result.exit_code == 0


async def test_timeout_with_term_ignored_ends_in_kill() -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring TERM", flush=True)
        time.sleep(60)
    """
    result = await AgentProcess(ProcessSpec(py(code), timeout_s=TIMEOUT, grace_s=GRACE)).run()
    assert result.timed_out and result.killed
    assert result.exit_code == -9
    assert result.stdout_tail == "ignoring TERM\n"


async def test_timeout_kills_the_agents_children_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell honours TERM; its child ignores it and must be killed with the group.
    script = f"(trap '' TERM; exec sleep 60) & echo $! > {pid_file}; while :; do sleep 0.05; done"
    proc = AgentProcess(ProcessSpec(sh(script), timeout_s=TIMEOUT, grace_s=GRACE))
    run = asyncio.create_task(proc.run())
    child = await read_pid(pid_file)
    assert running(child)
    result = await run
    assert result.timed_out and result.killed
    assert not running(child)


async def test_children_left_behind_by_a_finished_agent_are_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The agent exits at once; its child keeps standard output open.
    script = f"sleep 60 & echo $! > {pid_file}; echo done"
    result = await AgentProcess(ProcessSpec(sh(script), grace_s=GRACE)).run()
    assert result.exit_code == 0
    assert result.stdout_tail == "done\n"
    assert not (result.timed_out or result.stopped)
    assert not running(int(pid_file.read_text()))


# --- stop and cancellation -------------------------------------------------------------


async def test_stop_ends_the_process_and_run_reports_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    proc = AgentProcess(ProcessSpec(sh(script), grace_s=GRACE))
    run = asyncio.create_task(proc.run())
    child = await read_pid(pid_file)
    await proc.stop("room interrupted")
    assert run.done()  # stop() returns once run() has finished
    result = run.result()
    assert result.stopped and not result.timed_out and not result.killed
    assert result.stop_reason == "room interrupted"
    assert result.exit_code == -15
    assert not running(child)
    await proc.stop("again")  # stopping a finished process is harmless


async def test_stop_before_run_never_starts_the_process(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = AgentProcess(ProcessSpec(sh(f"touch {marker}")))
    await proc.stop("cancelled")
    result = await proc.run()
    assert result.stopped and result.exit_code is None
    assert result.stop_reason == "cancelled"
    assert not marker.exists()


def deaf_parent(pid_file: Path) -> str:
    """An agent that ignores TERM and starts a child, whose pid it writes to `pid_file`."""
    return f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """


async def test_cancelling_run_stops_the_group_then_propagates(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    proc = AgentProcess(ProcessSpec(py(deaf_parent(pid_file)), grace_s=GRACE))
    run = asyncio.create_task(proc.run())
    child = await read_pid(pid_file)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert proc.pid is not None
    assert not running(proc.pid)
    assert not running(child)


async def test_cancelled_while_starting_the_group_is_stopped_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a busy machine the agent (and its children) can be running before the start has
    # returned to the runner: a cancel in that moment must still stop the whole group.
    pid_file = tmp_path / "child.pid"
    real = asyncio.create_subprocess_exec
    gate = asyncio.Event()

    async def slow_start(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        started = await real(*args, **kwargs)
        await gate.wait()
        return started

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_start)
    proc = AgentProcess(ProcessSpec(py(deaf_parent(pid_file)), grace_s=GRACE))
    run = asyncio.create_task(proc.run())
    child = await read_pid(pid_file)
    assert proc.pid is None  # the start has not returned yet
    run.cancel()
    await asyncio.sleep(0.05)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert proc.pid is not None
    assert not running(proc.pid)
    assert not running(child)


async def test_a_second_cancel_during_the_grace_still_kills_the_group(tmp_path: Path) -> None:
    pid_file, marker = tmp_path / "child.pid", tmp_path / "child.term"
    # The leader dies on TERM; its child notes TERM and carries on, outliving it.
    child_code = f"""
        import os, signal, time
        def noted(*_):
            with open({str(marker)!r}, "a") as f:
                f.write("TERM\\n")
        signal.signal(signal.SIGTERM, noted)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        while True:
            time.sleep(0.05)
    """
    script = f"{shlex.join(py(child_code))} & wait"
    proc = AgentProcess(ProcessSpec(sh(script), grace_s=60.0))
    run = asyncio.create_task(proc.run())
    child = await read_pid(pid_file)
    try:
        run.cancel()  # TERM to the group, then a long grace period
        await eventually(marker.exists, "the child to receive TERM")
        assert proc.pid is not None
        leader = proc.pid
        await eventually(lambda: not Path(f"/proc/{leader}").exists(), "the leader to be reaped")
        run.cancel()  # cancelled again while waiting out the grace period
        with pytest.raises(asyncio.CancelledError):
            await run
        await eventually(lambda: not running(child), "the child to be killed", limit_s=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


async def test_run_only_once() -> None:
    proc = AgentProcess(ProcessSpec(sh("true")))
    await proc.run()
    with pytest.raises(RuntimeError):
        await proc.run()


# --- output callback -------------------------------------------------------------------


async def test_output_callback_is_rate_limited_and_loses_nothing() -> None:
    code = """
        import time
        for i in range(120):
            print(f"line {i}", flush=True)
            time.sleep(0.01)
    """
    interval = 0.3
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    proc = AgentProcess(ProcessSpec(py(code)), on_output=collect, progress_interval_s=interval)
    result = await proc.run()
    assert result.exit_code == 0
    assert "".join(chunks) == result.stdout_tail
    # At most one call per interval while it ran, plus the first and the final flush;
    # far fewer than the 120 writes.
    assert 2 <= len(chunks) <= result.duration_s / interval + 2
    assert len(chunks) < 60


async def test_a_slow_callback_does_not_stall_reading(tmp_path: Path) -> None:
    done = tmp_path / "done"
    # 4 MiB is far more than a pipe holds: the writer only finishes if someone reads.
    code = f"""
        import sys
        for _ in range(4096):
            sys.stdout.write("y" * 1023 + "\\n")
        sys.stdout.flush()
        open({str(done)!r}, "w").close()
        print("bye")
    """
    gate = asyncio.Event()
    calls: list[str] = []

    async def blocked(text: str) -> None:
        calls.append(text)
        await gate.wait()

    proc = AgentProcess(ProcessSpec(py(code)), on_output=blocked, progress_interval_s=0.05)
    run = asyncio.create_task(proc.run())
    await eventually(done.exists, "the writer finished while the callback was blocked")
    assert len(calls) == 1  # the first call still blocks
    gate.set()
    result = await run
    assert result.exit_code == 0
    assert result.stdout_tail.endswith("y\nbye\n")
    assert calls[-1].endswith("bye\n")


async def test_a_failing_callback_does_not_end_the_run() -> None:
    async def broken(text: str) -> None:
        raise RuntimeError("progress endpoint down")

    proc = AgentProcess(ProcessSpec(sh("echo one; echo two")), on_output=broken)
    result = await proc.run()
    assert result.exit_code == 0
    assert result.stdout_tail == "one\ntwo\n"
