"""Events to NATS against a real nats-server started by the tests.

A consumer subscribed to `dispatch.>` gets every event of the log, in log order, as the API
shows it; a NATS outage and a dispatchd crash only delay delivery (the publisher resumes
from the cursor it keeps in the store); on PostgreSQL one replica publishes at a time and
another takes over when it goes. Each check compares what NATS delivered with the event log
read from the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from dispatchd.api.app import create_app
from dispatchd.api.schemas.events import EventOut
from dispatchd.domain.models import Event
from dispatchd.runtime import Runtime
from dispatchd.store.base import Store
from tests.api.conftest import ADMIN_TOKEN, as_agent, make_settings
from tests.api.helpers import eventually
from tests.integration.server import ServerProcess
from tests.support.nats import NatsServer

pytestmark = pytest.mark.slow

# Quick retries, so that an outage is noticed and over within a test.
FAST = {
    "retry_base_s": 0.05,
    "retry_cap_s": 0.3,
    "connect_timeout_s": 1,
    "flush_timeout_s": 2,
    "lease_check_s": 0.1,
}
DELIVERY_LIMIT_S = 30.0
STREAM = "DISPATCH"


# --- what NATS delivered ----------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    subject: str
    body: dict[str, Any]
    msg_id: str | None

    @property
    def id(self) -> int:
        return int(self.body["id"])


def delivered(subject: str, data: bytes, headers: dict[str, str] | None) -> Delivered:
    return Delivered(subject, json.loads(data), (headers or {}).get("Nats-Msg-Id"))


class Subscriber:
    """A core NATS subscriber on `dispatch.>`, as a consumer of dispatchd would run."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: list[Delivered] = []

    @classmethod
    async def connect(cls, url: str) -> Subscriber:
        sub = cls(await nats.connect(url, allow_reconnect=False))

        async def on_message(msg: Msg) -> None:
            sub.messages.append(delivered(msg.subject, msg.data, msg.headers))

        await sub.client.subscribe("dispatch.>", cb=on_message)
        await sub.client.flush()  # the server has the subscription before any publish
        return sub

    def reached(self, event_id: int) -> bool:
        return any(m.id >= event_id for m in self.messages)

    async def close(self) -> None:
        await self.client.close()


@contextlib.asynccontextmanager
async def subscriber(url: str) -> AsyncIterator[Subscriber]:
    sub = await Subscriber.connect(url)
    try:
        yield sub
    finally:
        await sub.close()


async def create_stream(url: str) -> None:
    """A JetStream stream that keeps every message on `dispatch.>`, whoever is connected."""
    client = await nats.connect(url, allow_reconnect=False)
    try:
        await client.jetstream().add_stream(name=STREAM, subjects=["dispatch.>"])
    finally:
        await client.close()


async def stream_messages(url: str) -> list[Delivered]:
    """Everything the stream holds, in the order it arrived."""
    client = await nats.connect(url, allow_reconnect=False)
    try:
        jsm = client.jsm()
        info = await jsm.stream_info(STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            raw = await jsm.get_msg(STREAM, seq)
            assert raw.subject is not None and raw.data is not None
            out.append(delivered(raw.subject, raw.data, raw.headers))
        return out
    finally:
        await client.close()


async def stream_reached(url: str, event_id: int) -> bool:
    client = await nats.connect(url, allow_reconnect=False)
    try:
        jsm = client.jsm()
        info = await jsm.stream_info(STREAM)
        if not info.state.messages:
            return False
        raw = await jsm.get_msg(STREAM, info.state.last_seq)
        assert raw.data is not None
        return int(json.loads(raw.data)["id"]) >= event_id
    finally:
        await client.close()


# --- what the log holds -----------------------------------------------------------------


async def read_log(store: Store, after: int = 0) -> list[Event]:
    events: list[Event] = []
    while True:
        batch = await store.read_events(after=after, limit=1000)
        if not batch:
            return events
        events.extend(batch)
        after = batch[-1].id or after


def expected(events: Sequence[Event]) -> list[Delivered]:
    return [Delivered(f"dispatch.{e.type}", EventOut.of(e).model_dump(), str(e.id)) for e in events]


def first_deliveries(messages: Sequence[Delivered]) -> list[Delivered]:
    """Each event at its first delivery, in delivery order (what a consumer that drops
    repeats by event id sees)."""
    seen: set[int] = set()
    out = []
    for m in messages:
        if m.id not in seen:
            seen.add(m.id)
            out.append(m)
    return out


def upto(messages: Sequence[Delivered], last: int) -> list[Delivered]:
    return [m for m in messages if m.id <= last]


# --- a workload -------------------------------------------------------------------------


def client_for(rt: Runtime) -> httpx.AsyncClient:
    app = create_app(runtime=rt)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dispatchd.test",
        headers={"X-Agent-ID": "alice"},
    )


async def workload(client: httpx.AsyncClient, agent: str, tasks: int = 5) -> None:
    """Register `agent`, create `tasks` tasks that only it can do, and have it claim,
    report progress on and complete every one of them."""
    r = await client.post("/api/v1/agents", json={"capabilities": [agent]}, headers=as_agent(agent))
    assert r.status_code == 201, r.text
    created = set()
    for n in range(tasks):
        r = await client.post(
            "/api/v1/tasks",
            json={"title": f"{agent} task {n}", "capabilities": [agent], "labels": [agent]},
        )
        assert r.status_code == 201, r.text
        created.add(r.json()["id"])
    done: set[str] = set()
    for _ in range(100):  # far more claims than the tasks need
        r = await client.post(
            "/api/v1/tasks/claim", json={"max_tasks": 3, "wait_s": 1}, headers=as_agent(agent)
        )
        assert r.status_code == 200, r.text
        for task in r.json()["tasks"]:
            path = f"/api/v1/tasks/{task['id']}"
            r = await client.post(
                f"{path}/progress",
                json={"message": "half way", "percent": 50},
                headers=as_agent(agent),
            )
            assert r.status_code == 200, r.text
            r = await client.post(
                f"{path}/complete", json={"summary": "done"}, headers=as_agent(agent)
            )
            assert r.status_code == 200, r.text
            done.add(task["id"])
        if created <= done:
            return
    pytest.fail(f"{agent} did not finish its tasks: {sorted(created - done)}")


def assert_exactly(messages: Sequence[Delivered], log: Sequence[Event]) -> None:
    """`messages` are the events of `log`, each once, in log order, as the API shows them."""
    assert [m.id for m in messages] == [e.id for e in log]
    assert list(messages) == expected(log)


# --- the tests ---------------------------------------------------------------------------


async def test_every_event_is_published_once_in_log_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    settings = make_settings(tmp_path, hermes={"url": nats_server.url, **FAST})
    async with subscriber(nats_server.url) as sub, Runtime.build(settings) as rt:
        async with client_for(rt) as client:
            await workload(client, "worker-1")
            await workload(client, "worker-2")
        last = await rt.store.last_event_id()
        await eventually(lambda: sub.reached(last), f"event {last} on NATS", limit_s=30)
        log = [e for e in await read_log(rt.store) if e.id is not None and e.id <= last]
        assert_exactly(upto(sub.messages, last), log)
        types = {e.type for e in log}
        assert {"agent.registered", "task.created", "task.progress", "task.completed"} <= types
        # What was confirmed is recorded, so a restart does not publish it again.
        saved = await eventually(
            lambda: _saved_at_least(rt.store, last), f"the nats cursor at {last}", limit_s=10
        )
        assert saved >= last


async def _saved_at_least(store: Store, last: int) -> int | None:
    saved = await store.get_cursor("nats")
    return saved if saved is not None and saved >= last else None


async def test_an_outage_of_nats_only_delays_delivery(
    tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    await create_stream(nats_server.url)
    settings = make_settings(tmp_path, hermes={"url": nats_server.url, **FAST})
    caplog.set_level(logging.WARNING, logger="dispatchd.events.nats")
    async with Runtime.build(settings) as rt, client_for(rt) as client:
        assert rt.nats is not None
        await workload(client, "before")
        before = await rt.store.last_event_id()
        await eventually(lambda: stream_reached(nats_server.url, before), "the first events")

        nats_server.stop()
        await workload(client, "during")
        during = await rt.store.last_event_id()
        # The broken connection, then at least one refused reconnection.
        await eventually(
            lambda: sum("NATS unavailable" in r.getMessage() for r in caplog.records) >= 2,
            "the publisher to notice the outage and retry",
        )
        # Nothing written during the outage could be confirmed.
        assert rt.nats.cursor is not None and rt.nats.cursor < during

        nats_server.start()  # same port, same storage
        await workload(client, "after")
        last = await rt.store.last_event_id()
        await eventually(
            lambda: stream_reached(nats_server.url, last), f"event {last} in the stream", limit_s=30
        )
        log = [e for e in await read_log(rt.store) if e.id is not None and e.id <= last]

    messages = upto(await stream_messages(nats_server.url), last)
    # At least once, in log order; a repeat is a whole batch sent again after the break.
    assert_exactly(first_deliveries(messages), log)
    assert all(m.msg_id == str(m.id) for m in messages)
    assert {m.body["data"].get("summary") for m in messages if m.subject.endswith("completed")}


async def test_turned_on_for_an_old_database_while_nats_is_down_it_starts_at_the_head(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    await create_stream(nats_server.url)
    async with Runtime.build(make_settings(tmp_path)) as rt, client_for(rt) as client:
        await workload(client, "history")
        history = await rt.store.last_event_id()

    nats_server.stop()
    settings = make_settings(tmp_path, hermes={"url": nats_server.url, **FAST})
    async with Runtime.build(settings) as rt, client_for(rt) as client:
        # The starting point is recorded before NATS was ever reached.
        assert await eventually(lambda: rt.store.get_cursor("nats"), "the cursor") == history
        await workload(client, "new")
        nats_server.start()
        last = await rt.store.last_event_id()
        await eventually(
            lambda: stream_reached(nats_server.url, last), f"event {last} in the stream", limit_s=30
        )
        log = await read_log(rt.store, after=history)
    messages = upto(await stream_messages(nats_server.url), last)
    assert_exactly(first_deliveries(messages), upto_events(log, last))


async def test_a_crashed_dispatchd_resumes_from_its_saved_cursor(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    database = f"sqlite:///{tmp_path / 'dispatchd.db'}"
    env = {
        "DISPATCH_DATABASE_URL": database,
        "DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "DISPATCH_HERMES_URL": nats_server.url,
        **{f"DISPATCH_HERMES__{k.upper()}": str(v) for k, v in FAST.items()},
    }
    settings = make_settings(tmp_path, database)
    async with subscriber(nats_server.url) as sub:
        with ServerProcess(tmp_path / "first", env=env) as server:
            async with httpx.AsyncClient(
                base_url=server.api_url, headers={"X-Agent-ID": "alice"}, timeout=30
            ) as client:
                await workload(client, "first", tasks=8)
            server.kill()  # SIGKILL: whatever was not yet confirmed is not recorded

        # dispatchd is down; the log goes on growing (another process writes to it).
        async with Runtime.build(settings, background=False) as rt:
            saved = await rt.store.get_cursor("nats")
            at_kill = await rt.store.last_event_id()
            assert saved is not None
            async with client_for(rt) as client:
                await workload(client, "while-down", tasks=3)
            while_down = await rt.store.last_event_id()
        assert while_down > at_kill
        assert not sub.reached(at_kill + 1)  # nothing published while it was down

        with ServerProcess(tmp_path / "second", env=env) as server:
            async with httpx.AsyncClient(
                base_url=server.api_url, headers={"X-Agent-ID": "alice"}, timeout=30
            ) as client:
                await workload(client, "second", tasks=3)
            async with Runtime.build(settings, background=False) as rt:
                last = await rt.store.last_event_id()
                await eventually(
                    lambda: sub.reached(last), f"event {last} on NATS", limit_s=DELIVERY_LIMIT_S
                )
                log = [e for e in await read_log(rt.store) if e.id is not None and e.id <= last]

    messages = upto(sub.messages, last)
    assert_exactly(first_deliveries(messages), log)
    counts = Counter(m.id for m in messages)
    # Confirmed and recorded before the crash: never again. Sent but not recorded: maybe
    # twice. Written after the crash: once.
    assert all(counts[e.id] == 1 for e in log if e.id is not None and e.id <= saved)
    assert all(counts[e.id] <= 2 for e in log if e.id is not None and saved < e.id <= at_kill)
    assert all(counts[e.id] == 1 for e in log if e.id is not None and e.id > at_kill)


@pytest.mark.postgres
async def test_on_postgres_one_replica_publishes_and_another_takes_over(
    tmp_path: Path, nats_server: NatsServer, postgres_url: str
) -> None:
    hermes = {"hermes": {"url": nats_server.url, **FAST}}
    async with contextlib.AsyncExitStack() as stack:
        sub = await stack.enter_async_context(subscriber(nats_server.url))
        replicas, stops = [], []
        for name in ("a", "b"):
            settings = make_settings(tmp_path / name, postgres_url, **hermes)
            own = contextlib.AsyncExitStack()
            stack.push_async_callback(own.aclose)
            replicas.append(await own.enter_async_context(Runtime.build(settings)))
            stops.append(own)
        async with client_for(replicas[0]) as a, client_for(replicas[1]) as b:
            await workload(a, "worker-a")
            await workload(b, "worker-b")
        store = replicas[0].store
        first = await store.last_event_id()
        await eventually(lambda: sub.reached(first), f"event {first} on NATS", limit_s=30)
        await eventually(lambda: _saved_at_least(store, first), "the cursor to be saved")

        publishers = [rt.nats for rt in replicas]
        assert all(p is not None for p in publishers)
        published = [p.published for p in publishers if p is not None]
        assert sorted(published)[0] == 0, published  # one replica publishes, one stands by
        leader = published.index(max(published))
        standby = replicas[1 - leader]
        log = await read_log(store)
        assert_exactly(upto(sub.messages, first), upto_events(log, first))

        # The publishing replica goes; the other takes the lease and goes on.
        await stops[leader].aclose()
        async with client_for(standby) as client:
            await workload(client, "worker-c")
        last = await standby.store.last_event_id()
        await eventually(lambda: sub.reached(last), f"event {last} on NATS", limit_s=30)
        assert standby.nats is not None and standby.nats.published > 0
        log = upto_events(await read_log(standby.store), last)
        messages = upto(sub.messages, last)
        assert_exactly(first_deliveries(messages), log)
        counts = Counter(m.id for m in messages)
        assert all(counts[e.id] == 1 for e in log if e.id is not None and e.id <= first)


def upto_events(log: Sequence[Event], last: int) -> list[Event]:
    return [e for e in log if e.id is not None and e.id <= last]
