"""Waking sleeping agents (SPEC §3.5): the wake call, its failures, and the wake timeout that
sends a task elsewhere and marks a silent agent offline."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent

BOTH = pytest.mark.parametrize("engine", ["sqlite", "postgres"], indirect=True)
SHORT_WAKE = pytest.mark.parametrize(
    "settings_overrides", [{"assignment": {"wake_timeout_ms": 300}}]
)
# For tests that act within the wake timeout: a margin for a slow machine.
WAKE_WITH_MARGIN = pytest.mark.parametrize(
    "settings_overrides", [{"assignment": {"wake_timeout_ms": 1000}}]
)

T = TypeVar("T")
Settle = Callable[[], Awaitable[None]]


# --- helpers ----------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T]], within: float = 10.0) -> T:
    """Poll `check` until it stops raising AssertionError; the last failure if it never does."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.01)


@pytest.fixture
def settle(runtime: Runtime) -> Settle:
    """A barrier: wait until the assigner has acted on every event committed so far."""
    handled = [runtime.assigner.cursor]
    original = runtime.assigner.handle

    async def handle(events: Any) -> None:
        await original(events)
        if events:
            handled[0] = max(handled[0], events[-1].id)

    runtime.assigner.handle = handle  # type: ignore[method-assign]

    async def wait() -> None:
        target = runtime.feed.latest

        async def caught_up() -> None:
            assert handled[0] >= target, f"assigner at {handled[0]}, log at {target}"

        await eventually(caught_up)

    return wait


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


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("title", "a task")
    r = await client.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def get(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/tasks/{task_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def assigned(client: httpx.AsyncClient, task_id: str, agent_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        task = await get(client, task_id)
        assert (task["status"], task["assignee"]) == ("assigned", agent_id), (
            task["status"],
            task["assignee"],
        )
        return task

    return await eventually(check)


async def agent_status(client: httpx.AsyncClient, agent_id: str) -> str:
    r = await client.get(f"/api/v1/agents/{agent_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


async def task_events(client: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/tasks/{task_id}/events")
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the wake call ----------------------------------------------------------------------


@BOTH
async def test_assigning_to_a_sleeping_agent_posts_to_its_wake_url(
    client: httpx.AsyncClient, register: Any, receiver: Receiver
) -> None:
    await register("w1", ["code"], status="sleeping", wake_url=receiver.url)
    task = await create(client, title="Wake up", capabilities=["code"], priority="high")
    got = await assigned(client, task["id"], "w1")

    async def woken() -> dict[str, Any]:
        seen = receiver.seen()
        assert len(seen) == 1, seen
        return seen[0]

    request = await eventually(woken)
    assert request["path"] == "/wake"
    assert request["content_type"] == "application/json"
    body = request["body"]
    assert set(body) == {"agent_id", "task_id", "title", "priority", "start_by"}
    assert body["agent_id"] == "w1"
    assert body["task_id"] == task["id"]
    assert body["title"] == "Wake up"
    assert body["priority"] == "high"
    # The agent must start by then: the wake timeout after the assignment.
    assert parse_time(body["start_by"]) == parse_time(got["lease_expires_at"])
    assigned_at = parse_time(got["attempts"][0]["assigned_at"])
    assert (parse_time(body["start_by"]) - assigned_at).total_seconds() == pytest.approx(30, abs=1)


@BOTH
async def test_a_ready_agent_is_not_woken(
    client: httpx.AsyncClient, register: Any, receiver: Receiver, settle: Settle
) -> None:
    await register("w1", ["code"], status="ready", wake_url=receiver.url)
    await register("w2", ["docs"], status="sleeping", wake_url=receiver.url)
    first = await create(client, capabilities=["code"])
    await assigned(client, first["id"], "w1")
    # A wake for w2 afterwards proves the receiver works and the first call was never made.
    second = await create(client, capabilities=["docs"])
    await assigned(client, second["id"], "w2")
    await settle()

    async def only_w2() -> None:
        assert [r["body"]["agent_id"] for r in receiver.seen()] == ["w2"]

    await eventually(only_w2)


async def test_a_sleeping_agent_without_a_wake_url_still_gets_the_task(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"], status="sleeping")
    task = await create(client, capabilities=["code"])
    await assigned(client, task["id"], "w1")


@BOTH
async def test_a_wake_url_answering_500_does_not_stop_assignment(
    client: httpx.AsyncClient, register: Any, receiver: Receiver
) -> None:
    receiver.status = 500
    await register("w1", ["code"], status="sleeping", wake_url=receiver.url, max_concurrent=5)
    first = await create(client, capabilities=["code"])
    await assigned(client, first["id"], "w1")

    async def tried() -> None:
        assert len(receiver.seen()) == 1

    await eventually(tried)
    # The assigner carries on: the next task is assigned (and woken for) as well.
    second = await create(client, capabilities=["code"])
    await assigned(client, second["id"], "w1")

    async def tried_again() -> None:
        assert [r["body"]["task_id"] for r in receiver.seen()] == [first["id"], second["id"]]

    await eventually(tried_again)
    # The agent can work the task as usual.
    r = await client.post(f"/api/v1/tasks/{first['id']}/start", headers=as_agent("w1"))
    assert r.status_code == 200, r.text


@BOTH
async def test_a_refused_wake_connection_does_not_stop_assignment(
    client: httpx.AsyncClient, register: Any, refused_url: str
) -> None:
    await register("w1", ["code"], status="sleeping", wake_url=refused_url, max_concurrent=5)
    ids = [(await create(client, capabilities=["code"]))["id"] for _ in range(3)]
    for task_id in ids:
        await assigned(client, task_id, "w1")


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

    async def enough() -> list[str]:
        events = await task_events(client, task_id)
        agents = [e["agent_id"] for e in events if e["type"] == "task.assigned"]
        assert len(agents) >= count, agents
        return agents[:count]

    return await eventually(enough)


@BOTH
@SHORT_WAKE
async def test_a_task_not_started_in_time_goes_to_another_agent_and_the_silent_one_goes_offline(
    client: httpx.AsyncClient, register: Any, receiver: Receiver, runtime: Runtime
) -> None:
    await register("a-silent", ["code"], status="sleeping", wake_url=receiver.url)
    # Busy scores below sleeping (0.5 against 0.8): it gets the task only once a-silent is out.
    await register("b-busy", ["code"], status="busy")
    task = await create(client, capabilities=["code"])
    assert await assignees(client, task["id"], 1) == ["a-silent"]

    async def moved() -> None:
        events = await task_events(client, task["id"])
        assert any(e["type"] == "task.assigned" and e["agent_id"] == "b-busy" for e in events)

    await eventually(moved)

    async def offline() -> None:
        assert await agent_status(client, "a-silent") == "offline"
        assert await offline_changes(runtime, "a-silent") == [("sleeping", "offline")]

    await eventually(offline)
    events = await task_events(client, task["id"])
    requeued = next(e for e in events if e["type"] == "task.requeued")
    assert requeued["agent_id"] == "a-silent"
    assert "wake timeout" in requeued["data"]["reason"]
    first = (await get(client, task["id"]))["attempts"][0]
    assert (first["agent_id"], first["outcome"]) == ("a-silent", "lost")


@BOTH
@SHORT_WAKE
async def test_a_task_not_started_in_time_never_goes_back_to_the_silent_agent(
    client: httpx.AsyncClient, register: Any, receiver: Receiver, runtime: Runtime
) -> None:
    await register("a-silent", ["code"], status="sleeping", wake_url=receiver.url)
    await register("b-busy", ["code"], status="busy")
    task = await create(client, capabilities=["code"])
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
    task = await create(client, capabilities=["code"])
    await assigned(client, task["id"], "w1")
    stop = asyncio.Event()

    async def keep_alive() -> None:
        while not stop.is_set():
            r = await client.post("/api/v1/agents/w1/heartbeat", json={}, headers=as_agent("w1"))
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.03)

    beating = asyncio.create_task(keep_alive())
    try:

        async def requeued() -> None:
            types = [e["type"] for e in await task_events(client, task["id"])]
            assert "task.requeued" in types

        await eventually(requeued)
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
    task = await create(client, capabilities=["code"])
    given = await assigned(client, task["id"], "w1")
    start_by = parse_time(given["lease_expires_at"])
    r = await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("w1"))
    assert r.status_code == 200, r.text

    async def swept_past_the_wake_timeout() -> None:
        assert runtime.sweeper.since > start_by

    await eventually(swept_past_the_wake_timeout)
    got = await get(client, task["id"])
    assert (got["status"], got["assignee"], got["attempt"]) == ("running", "w1", 1)
    assert await agent_status(client, "w1") == "sleeping"
