"""Waking sleeping agents (SPEC §3.5): the wake call, its failures, and the wake timeout that
sends a task elsewhere and marks a silent agent offline."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import (
    BOTH,
    Settle,
    agent_status,
    create_task,
    detail,
    eventually,
    heartbeat,
    task_events,
    track,
    ts,
    wait_assigned,
)

SHORT_WAKE = pytest.mark.parametrize(
    "settings_overrides", [{"assignment": {"wake_timeout_ms": 300}}]
)
# For tests that act within the wake timeout: a margin for a slow machine.
WAKE_WITH_MARGIN = pytest.mark.parametrize(
    "settings_overrides", [{"assignment": {"wake_timeout_ms": 1000}}]
)


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def settle(runtime: Runtime) -> Settle:
    return track(runtime)


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that records the requests it gets."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "content_type": self.headers.get("Content-Type"),
                            "body": json.loads(raw) if raw else None,
                        }
                    )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wake"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def seen(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/wake"


# --- the wake call ----------------------------------------------------------------------


@BOTH
async def test_assigning_to_a_sleeping_agent_posts_to_its_wake_url(
    client: httpx.AsyncClient, register: Any, receiver: Receiver
) -> None:
    await register("w1", ["code"], status="sleeping", wake_url=receiver.url)
    task = await create_task(client, title="Wake up", capabilities=["code"], priority="high")
    got = await wait_assigned(client, task["id"], "w1")

    def woken() -> dict[str, Any] | None:
        seen = receiver.seen()
        return seen[0] if len(seen) == 1 else None

    request = await eventually(woken, "the one wake call")
    assert request["path"] == "/wake"
    assert request["content_type"] == "application/json"
    body = request["body"]
    assert set(body) == {"agent_id", "task_id", "title", "priority", "start_by"}
    assert body["agent_id"] == "w1"
    assert body["task_id"] == task["id"]
    assert body["title"] == "Wake up"
    assert body["priority"] == "high"
    # The agent must start by then: the wake timeout after the assignment.
    assert ts(body["start_by"]) == ts(got["lease_expires_at"])
    assigned_at = ts(got["attempts"][0]["assigned_at"])
    assert (ts(body["start_by"]) - assigned_at).total_seconds() == pytest.approx(30, abs=1)


@BOTH
async def test_a_ready_agent_is_not_woken(
    client: httpx.AsyncClient, register: Any, receiver: Receiver, settle: Settle
) -> None:
    await register("w1", ["code"], status="ready", wake_url=receiver.url)
    await register("w2", ["docs"], status="sleeping", wake_url=receiver.url)
    first = await create_task(client, capabilities=["code"])
    await wait_assigned(client, first["id"], "w1")
    # A wake for w2 afterwards proves the receiver works and the first call was never made.
    second = await create_task(client, capabilities=["docs"])
    await wait_assigned(client, second["id"], "w2")
    await settle()

    def only_w2() -> bool:
        return [r["body"]["agent_id"] for r in receiver.seen()] == ["w2"]

    await eventually(only_w2, "the wake of w2, and of nobody else")


async def test_a_sleeping_agent_without_a_wake_url_still_gets_the_task(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"], status="sleeping")
    task = await create_task(client, capabilities=["code"])
    await wait_assigned(client, task["id"], "w1")


@BOTH
async def test_a_wake_url_answering_500_does_not_stop_assignment(
    client: httpx.AsyncClient, register: Any, receiver: Receiver
) -> None:
    receiver.status = 500
    await register("w1", ["code"], status="sleeping", wake_url=receiver.url, max_concurrent=5)
    first = await create_task(client, capabilities=["code"])
    await wait_assigned(client, first["id"], "w1")

    await eventually(lambda: len(receiver.seen()) == 1, "the wake call for the first task")
    # The assigner carries on: the next task is assigned (and woken for) as well.
    second = await create_task(client, capabilities=["code"])
    await wait_assigned(client, second["id"], "w1")

    def tried_again() -> bool:
        return [r["body"]["task_id"] for r in receiver.seen()] == [first["id"], second["id"]]

    await eventually(tried_again, "the wake calls for both tasks")
    # The agent can work the task as usual.
    r = await client.post(f"/api/v1/tasks/{first['id']}/start", headers=as_agent("w1"))
    assert r.status_code == 200, r.text


@BOTH
async def test_a_refused_wake_connection_does_not_stop_assignment(
    client: httpx.AsyncClient, register: Any, refused_url: str
) -> None:
    await register("w1", ["code"], status="sleeping", wake_url=refused_url, max_concurrent=5)
    ids = [(await create_task(client, capabilities=["code"]))["id"] for _ in range(3)]
    for task_id in ids:
        await wait_assigned(client, task_id, "w1")


# --- the wake timeout -------------------------------------------------------------------


async def offline_changes(runtime: Runtime, agent_id: str) -> list[tuple[str, str]]:
    log = await runtime.store.read_events(after=0, limit=1000)
    return [
        (e.data["previous"], e.data["status"])
        for e in log
        if e.type == "agent.status_changed" and e.agent_id == agent_id
    ]


async def assignees(client: httpx.AsyncClient, task_id: str, count: int) -> list[str]:
    """The agents of the task's first `count` assignments, once there are that many."""

    async def enough() -> list[str] | None:
        agents = [e["agent_id"] for e in await task_events(client, task_id, "task.assigned")]
        return agents[:count] if len(agents) >= count else None

    return await eventually(enough, f"{count} assignments of task {task_id}")


@BOTH
@SHORT_WAKE
async def test_a_task_not_started_in_time_goes_to_another_agent_and_the_silent_one_goes_offline(
    client: httpx.AsyncClient, register: Any, receiver: Receiver, runtime: Runtime
) -> None:
    await register("a-silent", ["code"], status="sleeping", wake_url=receiver.url)
    # Busy scores below sleeping (0.5 against 0.8): it gets the task only once a-silent is out.
    await register("b-busy", ["code"], status="busy")
    task = await create_task(client, capabilities=["code"])
    assert await assignees(client, task["id"], 1) == ["a-silent"]

    async def moved() -> bool:
        events = await task_events(client, task["id"], "task.assigned")
        return any(e["agent_id"] == "b-busy" for e in events)

    await eventually(moved, "the task to be assigned to b-busy")

    async def offline() -> bool:
        if await agent_status(client, "a-silent") != "offline":
            return False
        return await offline_changes(runtime, "a-silent") == [("sleeping", "offline")]

    await eventually(offline, "a-silent to go offline, once")
    events = await task_events(client, task["id"])
    requeued = next(e for e in events if e["type"] == "task.requeued")
    assert requeued["agent_id"] == "a-silent"
    assert "wake timeout" in requeued["data"]["reason"]
    first = (await detail(client, task["id"]))["attempts"][0]
    assert (first["agent_id"], first["outcome"]) == ("a-silent", "lost")


@BOTH
@SHORT_WAKE
async def test_a_task_not_started_in_time_never_goes_back_to_the_silent_agent(
    client: httpx.AsyncClient, register: Any, receiver: Receiver, runtime: Runtime
) -> None:
    await register("a-silent", ["code"], status="sleeping", wake_url=receiver.url)
    await register("b-busy", ["code"], status="busy")
    task = await create_task(client, capabilities=["code"])
    assert await assignees(client, task["id"], 2) == ["a-silent", "b-busy"]
    # The requeue and the offline mark are one commit: the assigner never sees the task
    # back in the queue while a-silent still looks available.
    log = await runtime.store.read_events(after=0, limit=1000)
    requeued = next(e for e in log if e.type == "task.requeued")
    offline = next(e for e in log if e.type == "agent.status_changed")
    assert (offline.agent_id, offline.data["status"]) == ("a-silent", "offline")
    assert requeued.id is not None and offline.id == requeued.id + 1


@BOTH
@WAKE_WITH_MARGIN
async def test_an_agent_that_heartbeats_is_not_marked_offline(
    client: httpx.AsyncClient, register: Any, runtime: Runtime
) -> None:
    await register("w1", ["code"], status="sleeping")
    task = await create_task(client, capabilities=["code"])
    await wait_assigned(client, task["id"], "w1")
    stop = asyncio.Event()

    async def keep_alive() -> None:
        while not stop.is_set():
            await heartbeat(client, "w1")
            await asyncio.sleep(0.03)

    beating = asyncio.create_task(keep_alive())
    try:

        async def requeued() -> bool:
            return bool(await task_events(client, task["id"], "task.requeued"))

        await eventually(requeued, "the task to be requeued")
    finally:
        stop.set()
        await beating
    assert await agent_status(client, "w1") == "sleeping"
    log = await runtime.store.read_events(after=0, limit=1000)
    assert not [e for e in log if e.type == "agent.status_changed"]


@BOTH
@WAKE_WITH_MARGIN
async def test_a_task_started_in_time_stays_with_its_agent(
    client: httpx.AsyncClient, register: Any, runtime: Runtime
) -> None:
    await register("w1", ["code"], status="sleeping")
    await register("w2", ["code"], status="busy")
    task = await create_task(client, capabilities=["code"])
    given = await wait_assigned(client, task["id"], "w1")
    start_by = ts(given["lease_expires_at"])
    r = await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("w1"))
    assert r.status_code == 200, r.text

    await eventually(lambda: runtime.sweeper.since > start_by, "a sweep past the wake timeout")
    got = await detail(client, task["id"])
    assert (got["status"], got["assignee"], got["attempt"]) == ("running", "w1", 1)
    assert await agent_status(client, "w1") == "sleeping"
