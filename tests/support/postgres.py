"""A throwaway PostgreSQL server for the tests.

`PostgresServer` runs `initdb` into a temporary directory (on /dev/shm when it has room)
and starts `postgres` on a free loopback port, tuned for speed rather than durability.
Tests get a fresh database each: a template is created and migrated once, then cloned per
test with `CREATE DATABASE … TEMPLATE`, which takes milliseconds. A bare, unmigrated
database is available too, for tests that start a real server process that migrates by
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import psycopg

from dispatchd.store.postgres import PostgresStore

SUPERUSER = "postgres"
TEMPLATE = "dispatchd_template"
START_TIMEOUT_S = 30.0
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    # Less WAL to write, and a bounded amount of it: the cluster may live in memory.
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "256MB",
}
# Cloning a database writes a few megabytes of files; on a RAM disk that takes ~20 ms
# instead of ~300 ms on some virtual disks, so the cluster goes there when there is room.
RAM_DISK = Path("/dev/shm")
RAM_DISK_MIN_FREE = 2 * 1024**3


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (or a user allowed to run them) are missing."""


def find_bindir() -> Path:
    """The directory holding initdb, postgres and pg_ctl: PATH first, then the newest
    Debian-style `/usr/lib/postgresql/<version>/bin`."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(versioned, key=_version_key, reverse=True))
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "postgres", "pg_ctl")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin; install them (e.g. `apt-get install postgresql`)"
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _scratch_dir() -> str | None:
    try:
        if os.access(RAM_DISK, os.W_OK) and shutil.disk_usage(RAM_DISK).free >= RAM_DISK_MIN_FREE:
            return str(RAM_DISK)
    except OSError:
        pass
    return None  # the default temporary directory


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One temporary cluster. Use `start()`/`stop()` or `with PostgresServer() as server:`."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.host = "127.0.0.1"
        self.port = 0
        self._as_root = os.geteuid() == 0
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        assert self._root is not None, "server not started"
        return self._root / "data"

    @property
    def log_path(self) -> Path:
        assert self._root is not None, "server not started"
        return self._root / "postgres.log"

    def start(self) -> None:
        if self._as_root:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError as exc:
                raise PostgresUnavailable(
                    f"running as root, and PostgreSQL refuses to; no {SUPERUSER!r} user to run "
                    "it as (installing the postgresql package creates one)"
                ) from exc
        self._root = Path(tempfile.mkdtemp(prefix="dispatchd-pg-", dir=_scratch_dir()))
        try:
            (self._root / "sock").mkdir()
            if self._as_root:
                shutil.chown(self._root, SUPERUSER)
                shutil.chown(self._root / "sock", SUPERUSER)
            self._initdb()
            self._launch()
            self._prepare_template()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self._run_tool(
                        "pg_ctl",
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                        timeout=30,
                    )
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        return ["runuser", "-u", SUPERUSER, "--", *command] if self._as_root else command

    def _run_tool(self, tool: str, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            self._command(tool, *args), capture_output=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n{output}")

    def _initdb(self) -> None:
        common = [
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
        ]
        # Prefer a linguistic collation, as production databases usually have one: it shows
        # up code that silently relies on byte order. Fall back where ICU is missing.
        try:
            self._run_tool(
                "initdb",
                *common,
                "--locale=C.UTF-8",
                "--locale-provider=icu",
                "--icu-locale=en-US",
            )
        except RuntimeError:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._run_tool("initdb", *common, "--locale=C")

    def _launch(self) -> None:
        assert self._root is not None
        for _ in range(3):
            self.port = _free_port()
            settings = [arg for k, v in SERVER_SETTINGS.items() for arg in ("-c", f"{k}={v}")]
            command = self._command(
                "postgres",
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self._root / "sock"),
                *settings,
            )
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            if self._wait_ready():
                return
            # Most likely another process took the port between probe and bind: try again.
            self._process.wait(timeout=10)
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self._log_tail()}")

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(
            f"PostgreSQL did not accept connections within {START_TIMEOUT_S}s; its log:\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- databases ------------------------------------------------------------------------

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def _prepare_template(self) -> None:
        self._admin(f'CREATE DATABASE "{TEMPLATE}"')
        _run_async(_migrate(self.url(TEMPLATE)))
        # Nobody may connect to a template while it is being cloned.
        self._admin(f'ALTER DATABASE "{TEMPLATE}" WITH ALLOW_CONNECTIONS false')

    def _new_name(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_{next(self._names)}"

    def create_database(self) -> str:
        """A fresh database with the schema applied (cloned from the template); its URL."""
        name = self._new_name("test")
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        return self.url(name)

    def create_empty_database(self) -> str:
        """A fresh database without any migration applied; its URL."""
        name = self._new_name("empty")
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _migrate(url: str) -> None:
    store = PostgresStore(url, pool_size=1)
    await store.open()
    try:
        await store.migrate()
    finally:
        await store.close()


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion from sync code, even if an event loop is running here."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="postgres-template")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
