"""What the peers benchmark starts around the brokers: the peers' virtualenv, subprocesses
that are always stopped, a private Redis, a private PostgreSQL, and the stamps files.

Every process is started in a session of its own and stopped by its process group (TERM,
then KILL after a grace period) when its `with` block ends, also on an error or Ctrl-C.
Servers listen on loopback only, on ports found free just before they start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

PEERS_DIR = Path(__file__).resolve().parent
VENV = PEERS_DIR / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = PEERS_DIR / "requirements.txt"
STAMP = VENV / ".installed"
STOP_GRACE_S = 10.0


# --- the peers' own virtualenv -----------------------------------------------------------


def ensure_venv() -> Path:
    """bench/peers/.venv with requirements.txt installed; (re)made when missing or older
    than that file. Celery and pgqueuer live there, never in dispatchd's environment."""
    if STAMP.exists() and STAMP.stat().st_mtime >= REQUIREMENTS.stat().st_mtime:
        return VENV_PYTHON
    print(f"# installing the peers into {VENV.relative_to(PEERS_DIR.parent.parent)}", flush=True)
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    pip = subprocess.run(
        [
            str(VENV_PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if pip.returncode != 0:  # only then is pip's chatter worth showing
        raise RuntimeError(f"pip install -r {REQUIREMENTS} failed:\n{pip.stdout}{pip.stderr}")
    STAMP.touch()
    return VENV_PYTHON


# --- subprocesses ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """One subprocess with its output in a log file; its process group is stopped on exit."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(grace)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def run_json(
    name: str,
    command: Sequence[str],
    log_dir: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run a producer to completion (killed at `timeout`) and parse the JSON it prints last."""
    with Proc(name, command, log_dir, env, cwd) as proc:
        assert proc.process is not None
        try:
            code = proc.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{name} did not finish within {timeout:.0f} s") from None
    text = proc.log_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{name} exited with {code}:\n{proc.log_tail()}")
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    raise RuntimeError(f"{name} printed no result:\n{proc.log_tail()}")


def wait_stamps(
    path: Path, count: int, timeout: float, watch: Sequence[Proc] = ()
) -> list[list[float]]:
    """The rows a worker wrote to `path` once it holds `count` of them (see _stamps.py).
    Fails when the time runs out or a watched process dies first."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            rows: list[list[float]] = json.loads(path.read_text())["rows"]
            if len(rows) >= count:
                return rows
        for proc in watch:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{count} tasks not done within {timeout:.0f} s; "
                + "; ".join(f"{p.name}: {p.log_tail(5)}" for p in watch)
            )
        time.sleep(0.02)


# --- Redis -----------------------------------------------------------------------------------

REDIS_INSTALL_HINT = (
    "redis-server not found: install Debian's package (`apt-get install -y redis-server`, "
    "which `make bench-peers` does when run as root), or leave Celery out with "
    "`--peers dispatchd`"
)


@contextlib.contextmanager
def redis_server(data_dir: Path, log_dir: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port; its URL. Persistence is left at
    Redis's defaults (RDB snapshots on its save points into `data_dir`, no append-only
    file): an acknowledged message is in memory only until the next snapshot."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise RuntimeError(REDIS_INSTALL_HINT)
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    with Proc("redis", command, log_dir) as proc:
        deadline = time.monotonic() + 15
        while not _redis_ping(port):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{proc.log_tail()}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_pid(url: str) -> int | None:
    """The pid of the redis-server listening at `url` (for the CPU meter)."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.sendall(b"INFO server\r\n")
        data = b""
        while b"process_id:" not in data or not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
    return None


# --- PostgreSQL ------------------------------------------------------------------------------

# How the private cluster writes, by name (see README.md). The test server's own settings
# turn durability off; the default here gives PostgreSQL the guarantee dispatchd's SQLite
# store has as shipped (WAL, synchronous=NORMAL): a commit survives a killed process, and
# the last ones may be lost on a power failure, never corrupting the database.
PG_SETTINGS: dict[str, dict[str, str] | None] = {
    "async-commit": {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "off"},
    "shipped": {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"},
    "test": None,  # tests/support/postgres.py as it is: no fsync, RAM disk when there is room
}


@contextlib.contextmanager
def postgres_server(settings: str = "async-commit") -> Iterator[tuple[str, int]]:
    """A private PostgreSQL cluster (initdb in a temporary directory, a free loopback port),
    as the tests start one: the URL of its `postgres` database, for creating others, and
    the postmaster's pid (for the CPU meter)."""
    from tests.support import postgres

    server = postgres.PostgresServer()
    overrides = PG_SETTINGS[settings]
    with contextlib.ExitStack() as patches:
        if overrides is not None:  # on disk, where a flush costs what it costs
            patches.enter_context(mock.patch.dict(postgres.SERVER_SETTINGS, overrides))
            patches.enter_context(mock.patch.object(postgres, "_scratch_dir", lambda: None))
        server.start()
    try:
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        yield server.url("postgres"), postmaster
    finally:
        server.stop()


class ClusterMeter:
    """CPU seconds used by a PostgreSQL cluster over an interval: the postmaster and every
    backend under it, including those that started during the interval (they come and go
    with connections, so a fixed list of pids would miss them)."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self._start: dict[int, float] = {}

    def _pids(self) -> list[int]:
        pids = [self.postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    def _cpu(self) -> dict[int, float]:
        from _common import proc_cpu_s

        out = {}
        for pid in self._pids():
            with contextlib.suppress(OSError):
                out[pid] = proc_cpu_s(pid)
        return out

    def start(self) -> ClusterMeter:
        self._start = self._cpu()
        return self

    def stop_s(self) -> float:
        """CPU seconds since start (a backend that exited meanwhile is not counted)."""
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._cpu().items())
