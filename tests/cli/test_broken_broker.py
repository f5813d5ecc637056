"""A broker that fails (5xx) ends a command with exit 6 and the broker's message."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import run_in

pytestmark = pytest.mark.slow


class Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"error": {"code": "internal_error", "message": "the store fell over", "details": {}}}
        ).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def failing_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_failing_broker_exits_6(failing_url: str, tmp_path: Path) -> None:
    result = run_in(tmp_path, failing_url)("task", "list", "--json")
    assert result.code == 6
    assert result.out == ""
    assert result.err == "dispatchd: the store fell over (internal_error, HTTP 500)\n"
