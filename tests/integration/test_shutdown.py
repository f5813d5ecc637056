"""A stopping server answers its long-polls at once instead of holding the shutdown up for
their whole wait: a waiting claim gets an empty answer, a waiting event read its cursor,
an SSE stream ends, and the process exits well inside `ServerProcess.stop`'s limit
(15 s, against waits of 60 s)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow

WAIT_S = 60


def test_sigterm_answers_waiting_claims_reads_and_streams(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        api = f"{server.api_url}/api/v1"
        headers = {"X-Agent-ID": "sleeper"}
        with httpx.Client(timeout=WAIT_S + 30) as http:
            r = http.post(f"{api}/agents", json={"capabilities": ["code"]}, headers=headers)
            assert r.status_code == 201, r.text
            cursor = http.get(f"{api}/events", params={"after": "latest"}, headers=headers)
            head = cursor.json()["next_cursor"]

            def claim() -> httpx.Response:
                return http.post(f"{api}/tasks/claim", json={"wait_s": WAIT_S}, headers=headers)

            def read() -> httpx.Response:
                params: dict[str, Any] = {"after": head, "wait_s": WAIT_S}
                return http.get(f"{api}/events", params=params, headers=headers)

            def stream() -> list[str]:
                lines = []
                with http.stream("GET", f"{api}/events/stream?after={head}", headers=headers) as s:
                    for line in s.iter_lines():
                        lines.append(line)
                return lines

            with ThreadPoolExecutor(3) as pool:
                claimed, events, streamed = (
                    pool.submit(claim),
                    pool.submit(read),
                    pool.submit(stream),
                )
                # Time for the three requests to reach the server and start waiting.
                time.sleep(1.0)
                assert server.stop() == 0
                assert claimed.result().json() == {"tasks": [], "reason": "no_tasks_available"}
                assert events.result().json() == {"events": [], "next_cursor": head}
                assert not [line for line in streamed.result() if line.startswith("data:")]
