"""A throwaway NATS server for the tests: the real `nats-server` binary (Debian's package).

`NatsServer` starts it on a free loopback port with JetStream on, its storage in a
temporary directory, and waits until it says it is ready. `stop()` ends it (an outage) and
`start()` brings it back on the same port with the same storage, so clients that reconnect
find it where it was and JetStream streams keep what they had.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
READY_LINE = "Server is ready"


class NatsUnavailable(RuntimeError):
    """The nats-server binary is missing."""


def find_binary() -> Path:
    """`nats-server` on PATH, else where Debian's package puts it."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
    if found is None:
        raise NatsUnavailable(
            "nats-server not found on PATH or in /usr/sbin; install it "
            "(e.g. `apt-get install nats-server`)"
        )
    return Path(found)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """One server. `start()` again after `stop()` restarts it on the same port."""

    def __init__(self, binary: Path | None = None) -> None:
        self.binary = binary or find_binary()
        self.host = "127.0.0.1"
        self.port = 0
        self._root = Path(tempfile.mkdtemp(prefix="dispatchd-nats-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self.port, "server never started"
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self._root / f"nats-{self._starts}.log"

    def start(self) -> None:
        """Start the server; after a stop, on the port it had."""
        assert not self.running, "already running"
        if self.port:
            if not self._launch(self.port):
                raise RuntimeError(
                    f"nats-server did not restart on port {self.port}; its log:\n{self._log_tail()}"
                )
            return
        for _ in range(3):  # another process may take the port between probe and bind
            if self._launch(_free_port()):
                return
        raise RuntimeError(f"nats-server did not start; its log:\n{self._log_tail()}")

    def stop(self) -> None:
        """End the server at once (clients see the connection drop)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop and delete its storage."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def _launch(self, port: int) -> bool:
        self._starts += 1
        command = [
            str(self.binary),
            "-a",
            self.host,
            "-p",
            str(port),
            "-js",
            "-sd",
            str(self._root / "jetstream"),
            "-l",
            str(self.log_path),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            if READY_LINE in self._log_tail() and self._accepts(port):
                self.port = port
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"nats-server was not ready within {START_TIMEOUT_S}s; its log:\n{self._log_tail()}"
        )

    def _accepts(self, port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, port), 1) as sock:
            return sock.recv(5) == b"INFO "
        return False

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
