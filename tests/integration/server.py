"""A real `dispatchd` process for the integration tests.

`ServerProcess` starts `python -m dispatchd serve` with a clean `DISPATCH_*` environment,
reads the bound ports from what it prints, and stops it by SIGTERM (`stop`) or SIGKILL
(`kill`). Its output is drained by threads, so a chatty server never blocks on a full pipe,
and kept for the tests to read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

_API_LINE = re.compile(r"^dispatchd listening on (http://\S+:(\d+)) \(API\)$")
_OPS_LINE = re.compile(r"^operations on (http://\S+:(\d+)) \(/health, /metrics\)$")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment without any DISPATCH_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def dispatchd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dispatchd", *args]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a short `dispatchd` command to completion."""
    return subprocess.run(
        dispatchd_command(*args),
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


class _Output:
    """Lines of one stream, collected by a thread; waiters are woken on each new line."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._pump, args=(stream,), name=f"dispatchd-{name}", daemon=True
        )
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        finally:
            stream.close()
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """The first line matching `predicate`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class ServerProcess:
    """One `dispatchd serve` process. Use as a context manager, which always kills it."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.env = {
            "DISPATCH_PORT": "0",
            "DISPATCH_METRICS_PORT": "0",
            "DISPATCH_DATA_DIR": str(data_dir),
            **(env or {}),
        }
        self.args = list(args)
        self.process: subprocess.Popen[str] | None = None
        self.stdout: _Output | None = None
        self.stderr: _Output | None = None
        self.api_url = ""
        self.ops_url = ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        """Start the server and wait until it has printed both addresses."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            dispatchd_command("serve", *self.args),
            env=clean_env(self.env),
            cwd=self.data_dir,  # away from any dispatchd.yaml in the working tree
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so kill() reaches everything
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout = _Output(self.process.stdout, "stdout")
        self.stderr = _Output(self.process.stderr, "stderr")
        try:
            api = self.stdout.wait_for(lambda line: bool(_API_LINE.match(line)), timeout)
            ops = self.stdout.wait_for(lambda line: bool(_OPS_LINE.match(line)), timeout)
            if api is None or ops is None:
                raise RuntimeError(f"dispatchd serve did not start:\n{self.describe()}")
        except BaseException:
            self.kill()
            raise
        api_match, ops_match = _API_LINE.match(api), _OPS_LINE.match(ops)
        assert api_match is not None and ops_match is not None
        self.api_url, self.ops_url = api_match.group(1), ops_match.group(1)
        return self

    def wait_for_stdout(self, predicate: Callable[[str], bool], timeout: float = 10) -> str | None:
        assert self.stdout is not None
        return self.stdout.wait_for(predicate, timeout)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for the exit code; SIGKILL if it does not stop in time."""
        process = self._require()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"dispatchd did not stop within {timeout}s of SIGTERM:\n{self.describe()}"
            ) from None
        self._drain()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it. Safe to call more than once."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
        self._drain()

    def _drain(self) -> None:
        for output in (self.stdout, self.stderr):
            if output is not None:
                output.join(5)

    def _require(self) -> subprocess.Popen[str]:
        assert self.process is not None, "server not started"
        return self.process

    def describe(self) -> str:
        out = self.stdout.text if self.stdout else ""
        err = self.stderr.text if self.stderr else ""
        return f"exit code: {self.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
