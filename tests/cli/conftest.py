"""The `dispatchd` executable run against a real broker: one server per test module,
each command a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import Client
from tests.integration.server import ServerProcess, clean_env

ADMIN = "cli-admin-token-0123456789abcdef"


def executable() -> str:
    script = Path(sys.executable).parent / "dispatchd"
    if not script.exists():
        pytest.fail(f"no console script at {script}: is the package installed (pip install -e .)?")
    return str(script)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.err == "", self.err
        return json.loads(self.out)

    def lines(self) -> list[Any]:
        """Standard output as JSON lines."""
        return [json.loads(line) for line in self.out.splitlines()]


Run = Callable[..., Result]


def environment(url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = clean_env({"DISPATCH_API_URL": url, "DISPATCH_ADMIN_TOKEN": ADMIN, "COLUMNS": "200"})
    env.update(extra or {})
    return env


def run_in(cwd: Path, url: str) -> Run:
    def run(
        *args: str, env: Mapping[str, str] | None = None, stdin: str = "", timeout: float = 60
    ) -> Result:
        done = subprocess.run(
            [executable(), *args],
            env=environment(url, env),
            cwd=cwd,  # away from any ./.dispatchd/admin_token
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return run


def start(cwd: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """A long-running command (`--wait`, `events watch`)."""
    return subprocess.Popen(
        [executable(), *args],
        env=environment(url, {"PYTHONUNBUFFERED": "1"}),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as on a terminal, whatever the test runner's workers do with SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("broker")
    with ServerProcess(data, env={"DISPATCH_ADMIN_TOKEN": ADMIN}) as process:
        yield process


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def cli(server: ServerProcess, workdir: Path) -> Run:
    return run_in(workdir, server.api_url)


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.api_url, agent_id="tester", admin_token=ADMIN) as client:
        yield client


class Agent:
    """An agent in a thread of the test: once a task labelled with its name exists, takes
    it (create it `--assigned-to` the agent: an agent's own assignments come before the
    other tasks in the queue) and works it as told, so that a command waiting for the task
    sees it move."""

    def __init__(self, url: str, name: str) -> None:
        self.client = Client(url, agent_id=name)
        self.client.register_agent(capabilities=[name], max_concurrent=1)
        self.name = name
        self.errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def _task_id(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            page = self.client.list_tasks(label=self.name, limit=1)
            if page.items:
                return page.items[0].id
            time.sleep(0.1)
        raise AssertionError(f"no task labelled {self.name} came")

    def work(self, outcome: str, then: Callable[[str], object] | None = None) -> None:
        """Take the task and complete or fail it; then `then(task_id)`, if given."""

        def run() -> None:
            try:
                expected = self._task_id()
                claim = self.client.claim(1, wait_s=10)
                task = claim.tasks[0]
                assert task.id == expected, (task, expected)
                self.client.report_progress(task.id, "halfway", 50)
                self.client.add_comment(task.id, "on it")
                if outcome == "complete":
                    self.client.complete_task(task.id, {"answer": 42}, "the answer")
                else:
                    self.client.fail_task(task.id, "it broke", retryable=False)
                if then is not None:
                    then(task.id)
            except BaseException as exc:
                self.errors.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(60)
        assert not self.errors, self.errors

    def close(self) -> None:
        self.client.close()


class Lines:
    """The lines a running command prints, read by a thread so that a test can wait for one
    with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join(10)

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.seen.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.seen:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise AssertionError(f"no such line in {self.seen}")
                self._cond.wait(remaining)


def stop(process: subprocess.Popen[str], *readers: Lines, sig: int = signal.SIGTERM) -> str:
    """Stop a long-running command (SIGTERM, or `sig`) and close its pipes; what it wrote
    on standard error."""
    process.send_signal(sig)
    process.wait(30)
    for reader in readers:
        reader.join()
    assert process.stderr is not None and process.stdout is not None
    err = process.stderr.read()
    process.stderr.close()
    process.stdout.close()
    return err
