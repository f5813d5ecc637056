"""`dispatchd events watch` resumes after the broker goes away and comes back, from the
last event it printed: nothing missed, nothing twice."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from dispatchd.client import Client
from tests.cli.conftest import ADMIN, Lines, start, stop
from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_watch_resumes_where_it_left_off(tmp_path: Path) -> None:
    data = tmp_path / "broker"
    env = {"DISPATCH_ADMIN_TOKEN": ADMIN, "DISPATCH_PORT": str(free_port())}
    with ServerProcess(data, env=env) as first:
        url = first.api_url
        with Client(url, agent_id="tester", admin_token=ADMIN) as admin:
            after = admin.read_events("latest", limit=1).next_cursor
            before = admin.create_task("Before the restart")
        watch = start(tmp_path, url, "events", "watch", "--json", "--types", "task.created",
                      "--after", after)  # fmt: skip
        lines = Lines(watch.stdout)
        try:
            lines.wait_for(lambda line: before.id in line, timeout=60)
            assert first.stop() == 0, first.describe()

            with ServerProcess(data, env=env) as second:
                assert second.api_url == url
                with Client(url, agent_id="tester", admin_token=ADMIN) as admin:
                    after_restart = [admin.create_task(f"After {n}").id for n in range(3)]
                lines.wait_for(lambda line: after_restart[-1] in line, timeout=60)
                assert watch.poll() is None
        finally:
            err = stop(watch, lines)

    events = [json.loads(line) for line in lines.seen]
    assert [e["task_id"] for e in events] == [before.id, *after_restart]
    assert len({e["id"] for e in events}) == len(events)
    assert "lost" in err
