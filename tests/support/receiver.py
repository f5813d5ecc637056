"""A local webhook receiver for the tests: a real HTTP server in a thread that records every
request and answers as it is told (succeed, fail the next n requests, fail always)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time() when it arrived
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    @property
    def delivery(self) -> str:
        return self.headers["x-dispatch-delivery"]

    @property
    def attempt(self) -> int:
        return int(self.headers["x-dispatch-attempt"])


class Receiver:
    """Use as a context manager; `url(path)` is where to point a webhook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._fail_next = 0
        self._fail_always = False
        self._fail_status = 500
        self._fail_path: str | None = None
        self._hold = threading.Event()
        self._hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender died mid-request: nothing was delivered
                status = receiver._answer(self.path)
                with receiver._lock:
                    receiver._requests.append(
                        Received(
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                            at=time.time(),
                            answered=status,
                        )
                    )
                receiver._hold.wait(30)
                payload = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender killed mid-request (the restart tests do that on purpose)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hold.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def url(self, path: str = "/hook") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def _answer(self, path: str) -> int:
        with self._lock:
            if self._fail_path is not None and path != self._fail_path:
                return 200
            if self._fail_always:
                return self._fail_status
            if self._fail_next > 0:
                self._fail_next -= 1
                return self._fail_status
            return 200

    # --- telling it how to answer -------------------------------------------------------

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail_next, self._fail_always, self._fail_status = n, False, status
            self._fail_path = None

    def fail_always(self, status: int = 500, path: str | None = None) -> None:
        """Fail every request (only those to `path`, if given)."""
        with self._lock:
            self._fail_always, self._fail_status, self._fail_path = True, status, path

    def hold(self) -> None:
        """Keep every answer back (the request is recorded) until `release`."""
        self._hold.clear()

    def release(self) -> None:
        self._hold.set()

    def succeed(self) -> None:
        with self._lock:
            self._fail_next, self._fail_always, self._fail_path = 0, False, None

    # --- what it got --------------------------------------------------------------------

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]
