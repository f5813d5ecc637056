"""SPEC §4 Events against real `dispatchd serve` processes: the Server-Sent Events stream
`GET /api/v1/events/stream` (frames, resuming with `Last-Event-ID` after a disconnect and
across a restart, keep-alives, type filters, retention) and the long-poll read woken across
replicas sharing one PostgreSQL database.

Streaming is tested over real sockets: an in-process ASGI client buffers whole responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error
from tests.integration.server import ServerProcess
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.slow]

ADMIN_TOKEN = "event-stream-admin-token-0123456789"
STREAM = "/api/v1/events/stream"
EVENTS = "/api/v1/events"
# A capability no agent has: the tasks of these tests stay pending and add no events.
NOBODY = "nobody-has-this"
# A bound on each wait for the server; far above what any step takes.
STEP_S = 20.0
ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


# --- an SSE client ------------------------------------------------------------------------


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: str

    def json(self) -> dict[str, Any]:
        body = json.loads(self.data)
        assert isinstance(body, dict), self.data
        return body


@dataclass
class Stream:
    """An open event stream, read frame by frame as the SSE format defines it; comment
    lines (keep-alives) are kept apart."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    # Frames completed while `line` read on, not yet returned by `frame`.
    early: list[Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lines = self.response.aiter_lines()
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    async def frame(self, limit_s: float = STEP_S) -> Frame | None:
        """The next frame; None once the server has ended the stream."""
        return await asyncio.wait_for(self._frame(), limit_s)

    async def frames(self, n: int) -> list[Frame]:
        got = []
        for _ in range(n):
            frame = await self.frame()
            assert frame is not None, f"the stream ended after {got}"
            got.append(frame)
        return got

    async def comment(self, limit_s: float = STEP_S) -> str:
        """Read on until a comment line arrives (no frame may come first); that line."""

        async def wait() -> str:
            seen = len(self.comments)
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line)
                    if len(self.comments) > seen:
                        return line
                elif line:
                    raise AssertionError(f"a frame line on an idle stream: {line[:200]}")
            raise AssertionError("the stream ended")

        return await asyncio.wait_for(wait(), limit_s)

    async def line(self, wanted: str, limit_s: float = STEP_S) -> None:
        """Read on until the line `wanted` arrives, as soon as it arrives: the frame it
        starts need not be whole (a frame's `id` and `event` lines come before its data)."""

        async def wait() -> None:
            async for line in self._lines:
                if (frame := self._take(line)) is not None:
                    self.early.append(frame)
                if line == wanted:
                    return
            raise AssertionError(f"the stream ended before {wanted!r}")

        await asyncio.wait_for(wait(), limit_s)

    async def _frame(self) -> Frame | None:
        if self.early:
            return self.early.pop(0)
        async for line in self._lines:
            if (frame := self._take(line)) is not None:
                return frame
        return None

    def _take(self, line: str) -> Frame | None:
        """One line into the frame being read; the frame once a blank line ends it."""
        if not line:
            if not (self._fields or self._data):
                return None
            frame = Frame(self._fields.get("id"), self._fields.get("event"), "\n".join(self._data))
            self._fields, self._data = {}, []
            return frame
        if line.startswith(":"):
            self.comments.append(line)
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        else:
            self._fields[name] = value
        return None


def client_for(server: ServerProcess, **kwargs: Any) -> httpx.AsyncClient:
    headers = {"X-Agent-ID": "watcher", **kwargs.pop("headers", {})}
    return httpx.AsyncClient(
        base_url=server.api_url, headers=headers, timeout=httpx.Timeout(STEP_S), **kwargs
    )


async def open_stream(
    client: httpx.AsyncClient,
    stack: list[Any],
    headers: Mapping[str, str] | None = None,
    **params: str,
) -> Stream:
    """GET the stream and check it opened as one; `stack` collects what to close."""
    cm = client.stream("GET", STREAM, params=params, headers=dict(headers or {}))
    response = await cm.__aenter__()
    stack.append(cm)
    assert response.status_code == 200, (await response.aread()).decode()
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    return Stream(response)


@pytest.fixture
async def streams() -> AsyncIterator[list[Any]]:
    """The streams a test opened, closed at its end (a client disconnecting)."""
    opened: list[Any] = []
    yield opened
    for cm in reversed(opened):
        await cm.__aexit__(None, None, None)


async def close(stack: list[Any]) -> None:
    """Disconnect every stream opened so far."""
    while stack:
        await stack.pop().__aexit__(None, None, None)


# --- the API ------------------------------------------------------------------------------


async def new_task(api: httpx.AsyncClient, title: str = "a task") -> str:
    r = await api.post("/api/v1/tasks", json={"title": title, "capabilities": [NOBODY]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def read(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await api.get(EVENTS, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def head(api: httpx.AsyncClient) -> str:
    """The log's last id: a filter nothing matches scans to the end and moves the cursor."""
    return str((await read(api, after="0", types="nothing.matches_this"))["next_cursor"])


async def events_after(api: httpx.AsyncClient, after: str) -> list[dict[str, Any]]:
    return list((await read(api, after=after, limit=1000))["events"])


async def created_id(api: httpx.AsyncClient, task_id: str) -> int:
    """The id of the task's `task.created` event."""
    r = await api.get(f"/api/v1/tasks/{task_id}/events")
    assert r.status_code == 200, r.text
    (created,) = [e for e in r.json()["events"] if e["type"] == "task.created"]
    return int(created["id"])


def as_events(frames: list[Frame]) -> list[dict[str, Any]]:
    """Each frame's event, after checking that its id and event name are the event's own."""
    events = []
    for frame in frames:
        event = frame.json()
        assert frame.id == event["id"], frame
        assert frame.event == event["type"], frame
        events.append(event)
    return events


# --- servers ------------------------------------------------------------------------------


def server_env(database_url: str | None, **settings: str) -> dict[str, str]:
    env = {"DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN, **settings}
    if database_url:
        env["DISPATCH_DATABASE_URL"] = database_url
    return env


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per engine for the tests that only need a live stream; each test starts
    from the log's head, so they do not see each other's events. Keep-alives every 0.2 s."""
    url = None
    pg: PostgresServer | None = None
    if request.param == "postgres":
        pg = request.getfixturevalue("postgres_server")
        url = pg.create_database()
    env = server_env(url, DISPATCH_EVENTS__KEEPALIVE_S="0.2")
    try:
        with ServerProcess(tmp_path_factory.mktemp("events"), env=env) as proc:
            yield proc
    finally:
        if pg is not None and url is not None:
            pg.drop_database(url)


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """A fresh database for a test that starts its own servers (None: SQLite in the data
    directory)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(server) as client:
        yield client


# --- frames ---------------------------------------------------------------------------------


async def test_frames_carry_the_id_the_type_and_the_event_as_json(
    server: ServerProcess, api: httpx.AsyncClient, streams: list[Any]
) -> None:
    start = await head(api)
    stream = await open_stream(api, streams, after=start)
    first = await new_task(api, "first")
    r = await api.patch(f"/api/v1/tasks/{first}", json={"priority": "high"})
    assert r.status_code == 200, r.text
    second = await new_task(api, "second")

    frames = await stream.frames(3)

    assert [(f.event, f.json()["task_id"]) for f in frames] == [
        ("task.created", first),
        ("task.updated", first),
        ("task.created", second),
    ]
    # Each frame is the event exactly as the long-poll read shows it.
    assert as_events(frames) == await events_after(api, start)
    assert [int(f.id or 0) for f in frames] == sorted({int(f.id or 0) for f in frames})


# --- resuming ---------------------------------------------------------------------------------


async def test_resume_with_last_event_id_after_a_disconnect(
    server: ServerProcess, api: httpx.AsyncClient, streams: list[Any]
) -> None:
    start = await head(api)
    stream = await open_stream(api, streams, after=start)
    tasks = [await new_task(api, f"t{i}") for i in range(3)]
    seen = await stream.frames(2)
    await close(streams)  # the client goes away having handled two of three events

    # Committed while it was away.
    tasks += [await new_task(api, f"t{i}") for i in range(3, 5)]

    last = seen[-1].id
    assert last is not None
    resumed = await open_stream(api, streams, headers={"Last-Event-ID": last})
    frames = await resumed.frames(3)
    assert [f.json()["task_id"] for f in frames] == tasks[2:]
    assert as_events(frames) == await events_after(api, last)
    # Nothing else is owed: the next frame is the next commit.
    sentinel = await new_task(api, "sentinel")
    (after,) = await resumed.frames(1)
    assert (after.event, after.json()["task_id"]) == ("task.created", sentinel)
    # The first connection and the second together saw the log once each, in order.
    together = [f.json()["task_id"] for f in [*seen, *frames, after]]
    assert together == [*tasks, sentinel]


async def test_last_event_id_wins_over_after(
    server: ServerProcess, api: httpx.AsyncClient, streams: list[Any]
) -> None:
    start = await head(api)
    tasks = [await new_task(api, f"t{i}") for i in range(3)]
    second = str(await created_id(api, tasks[1]))

    stream = await open_stream(api, streams, headers={"Last-Event-ID": second}, after=start)
    (frame,) = await stream.frames(1)
    assert frame.json()["task_id"] == tasks[2]

    # An empty Last-Event-ID is no header: `after` counts.
    other = await open_stream(api, streams, headers={"Last-Event-ID": ""}, after=start)
    frames = await other.frames(3)
    assert [f.json()["task_id"] for f in frames] == tasks


async def test_resume_across_a_server_restart(
    tmp_path: Path, database_url: str | None, streams: list[Any]
) -> None:
    data_dir = tmp_path / "data"
    env = server_env(database_url)
    with ServerProcess(data_dir, env=env) as first:
        async with client_for(first) as api:
            stream = await open_stream(api, streams)
            before = [await new_task(api, f"t{i}") for i in range(3)]
            seen = await stream.frames(1)
            first.kill()  # no goodbye: the process dies with the stream open
            # The client reads on until the connection breaks; what it got, it handled.
            with contextlib.suppress(httpx.TransportError):
                while (frame := await stream.frame()) is not None:
                    seen.append(frame)
            await close(streams)
    assert [f.json()["task_id"] for f in seen] == before[: len(seen)]
    last = seen[-1].id
    assert last is not None

    with ServerProcess(data_dir, env=env) as second:
        async with client_for(second) as api:
            after = [await new_task(api, f"t{i}") for i in range(3, 5)]
            owed = [*before[len(seen) :], *after]
            stream = await open_stream(api, streams, headers={"Last-Event-ID": last})
            frames = await stream.frames(len(owed))
            assert [f.json()["task_id"] for f in frames] == owed
            assert as_events(frames) == await events_after(api, last)
            sentinel = await new_task(api, "sentinel")
            (next_frame,) = await stream.frames(1)
            assert next_frame.json()["task_id"] == sentinel
            await close(streams)


# --- keep-alives and filters ------------------------------------------------------------------


async def test_an_idle_stream_carries_keep_alive_comments(
    server: ServerProcess, api: httpx.AsyncClient, streams: list[Any]
) -> None:
    stream = await open_stream(api, streams, after=await head(api))

    # The server is set to 0.2 s: comments come, and no frame with them.
    first = await stream.comment()
    second = await stream.comment()
    assert first.startswith(":") and second.startswith(":")

    # The stream is still live for events.
    task = await new_task(api)
    (frame,) = await stream.frames(1)
    assert (frame.event, frame.json()["task_id"]) == ("task.created", task)


async def test_type_filters_with_globs_and_families(
    server: ServerProcess, api: httpx.AsyncClient, streams: list[Any]
) -> None:
    agent = "filter-agent"
    stream = await open_stream(api, streams, after=await head(api), types="task.c*,agent")

    r = await api.post(
        "/api/v1/agents", json={"capabilities": ["code"]}, headers={"X-Agent-ID": agent}
    )
    assert r.status_code == 201, r.text
    task = await new_task(api)
    r = await api.patch(f"/api/v1/tasks/{task}", json={"priority": "low"})  # task.updated
    assert r.status_code == 200, r.text
    r = await api.post(f"/api/v1/tasks/{task}/comments", json={"body": "a note"})
    assert r.status_code in (200, 201), r.text
    r = await api.post(
        f"/api/v1/agents/{agent}/heartbeat",
        json={"status": "sleeping"},
        headers={"X-Agent-ID": agent},
    )
    assert r.status_code == 200, r.text
    # Gone again, so that the agent adds nothing to the other tests on this server.
    r = await api.delete(
        f"/api/v1/agents/{agent}",
        headers={"X-Agent-ID": "admin", "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code in (200, 204), r.text
    sentinel = await new_task(api, "sentinel")

    frames = await stream.frames(6)
    got = [(f.event, f.json()["task_id"] or f.json()["agent_id"]) for f in frames]
    assert got == [
        ("agent.registered", agent),
        ("task.created", task),
        ("task.commented", task),
        ("agent.status_changed", agent),
        ("agent.deregistered", agent),
        ("task.created", sentinel),
    ]
    as_events(frames)


async def test_task_room_and_requester_filters(
    server: ServerProcess, api: httpx.AsyncClient, streams: list[Any]
) -> None:
    """Each stream sees only its filter's events; a sentinel of its own ends each."""
    start = await head(api)
    watched = await new_task(api, "watched")
    by_task = await open_stream(api, streams, after=start, task=watched)
    by_room = await open_stream(api, streams, after=start, room="stream-room")
    by_requester = await open_stream(api, streams, after=start, requester="stream-bob")

    async def create(title: str, by: str = "watcher", **body: Any) -> str:
        r = await api.post(
            "/api/v1/tasks",
            json={"title": title, "capabilities": [NOBODY], **body},
            headers={"X-Agent-ID": by},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    in_room = await create("in room", scope="stream-room")
    bobs = await create("bob's", by="stream-bob")
    r = await api.post(f"/api/v1/tasks/{watched}/comments", json={"body": "a note"})
    assert r.status_code in (200, 201), r.text
    await new_task(api, "unrelated")

    assert [(f.event, f.json()["task_id"]) for f in await by_task.frames(2)] == [
        ("task.created", watched),
        ("task.commented", watched),
    ]
    assert [(f.event, f.json()["task_id"]) for f in await by_room.frames(1)] == [
        ("task.created", in_room)
    ]
    assert [(f.event, f.json()["task_id"]) for f in await by_requester.frames(1)] == [
        ("task.created", bobs)
    ]
    # Nothing else was owed to any of them: the next frame each gets is its sentinel.
    later_room = await create("later in room", scope="stream-room")
    (frame,) = await by_room.frames(1)
    assert frame.json()["task_id"] == later_room
    r = await api.post(f"/api/v1/tasks/{watched}/comments", json={"body": "again"})
    assert r.status_code in (200, 201), r.text
    (frame,) = await by_task.frames(1)
    assert (frame.event, frame.json()["task_id"]) == ("task.commented", watched)
    later_bobs = await create("bob's again", by="stream-bob")
    (frame,) = await by_requester.frames(1)
    assert frame.json()["task_id"] == later_bobs


async def test_a_bad_type_filter_or_cursor_is_refused_before_the_stream(
    server: ServerProcess, api: httpx.AsyncClient
) -> None:
    for params, headers, code in [
        ({"types": "Task!"}, {}, "invalid_types"),
        ({"after": "abc"}, {}, "invalid_cursor"),
        ({}, {"Last-Event-ID": "-3"}, "invalid_cursor"),
        ({"after": str(2**62)}, {}, "invalid_cursor"),
    ]:
        r = await api.get(STREAM, params=params, headers=headers)
        assert_error(r, 422, code)


# --- retention --------------------------------------------------------------------------------


def retention_env(database_url: str | None, seconds: float, **extra: str) -> dict[str, str]:
    """A server whose pruner runs every 0.1 s and deletes events older than `seconds`."""
    return server_env(
        database_url,
        DISPATCH_EVENTS__RETENTION_DAYS=repr(seconds / 86400),
        DISPATCH_EVENTS__FINISHED_TASK_RETENTION_DAYS="0",
        DISPATCH_EVENTS__PRUNE_INTERVAL_S="0.1",
        **extra,
    )


async def pruned_through(api: httpx.AsyncClient, event_id: int) -> dict[str, Any]:
    """Wait until retention has deleted the log through `event_id`; the 410 it answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_S
    while True:
        r = await api.get(EVENTS, params={"after": "0"})
        if r.status_code == 410:
            err = assert_error(r, 410, "cursor_expired")
            if int(err["details"]["oldest_cursor"]) >= event_id:
                return err
        else:
            assert r.status_code == 200, r.text
        assert loop.time() < deadline, f"retention did not reach event {event_id}"
        await asyncio.sleep(0.05)


async def test_an_expired_cursor_is_410_before_the_stream_starts(
    tmp_path: Path, database_url: str | None
) -> None:
    env = retention_env(database_url, 0.05)
    with ServerProcess(tmp_path / "data", env=env) as proc:
        async with client_for(proc) as api:
            task = await new_task(api)
            event_id = await created_id(api, task)
            err = await pruned_through(api, event_id)
            oldest = err["details"]["oldest_cursor"]

            for params, headers in [
                ({"after": "0"}, {}),
                ({}, {"Last-Event-ID": str(event_id - 1)}),
                ({"after": oldest}, {"Last-Event-ID": "0"}),
            ]:
                r = await api.get(STREAM, params=params, headers=headers)
                err = assert_error(r, 410, "cursor_expired")
                assert int(err["details"]["oldest_cursor"]) >= int(oldest)


RECEIVE_BUFFER = 256 * 1024


def held_bytes() -> int:
    """An event size that no pair of loopback socket buffers holds: the sender's largest
    send buffer (the kernel's tcp_wmem maximum) plus four megabytes."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        wmem_max = 4 * 2**20
    return wmem_max + 4 * 2**20


async def test_a_stream_that_falls_behind_retention_ends_with_an_error_frame(
    tmp_path: Path, database_url: str | None
) -> None:
    """A slow consumer: one large event fills the socket, so the server's stream is held
    mid-batch (a send waits for the client, who stops reading); meanwhile retention deletes
    the events after that batch. When the client reads again it gets the batch, then an
    `error` frame in the error form, and the stream ends."""
    size = held_bytes()
    env = retention_env(database_url, 5.0, DISPATCH_SERVER__MAX_BODY_BYTES=str(2 * size))
    # A fixed receive buffer (setting it turns off the kernel's growing of it), so that
    # what the client side can hold while it does not read is known.
    fixed = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)]
    )
    with ServerProcess(tmp_path / "data", env=env) as proc:
        async with client_for(proc) as api, client_for(proc, transport=fixed) as slow:
            big = await new_task(api, "big")
            # Context keys, listed in the task.updated event: more than the socket buffers
            # on both ends hold, so the server's send after it waits for the client.
            keys = {f"k{i:08d}-{'x' * 90}": 0 for i in range(size // 100)}
            r = await api.patch(f"/api/v1/tasks/{big}", json={"context": keys})
            assert r.status_code == 200, r.text[:500]
            held = await new_task(api, "held")  # in the stream's first batch, after `big`
            async with slow.stream("GET", STREAM, params={"after": "0"}) as response:
                assert response.status_code == 200
                # The large frame's first lines arrive: the server has read its first batch
                # (all three tasks) and waits to send `held` until the client reads on.
                stream = Stream(response)
                await stream.line("event: task.updated")
                unread = await new_task(api, "unread")  # committed behind the held stream
                unread_id = await created_id(api, unread)
                await pruned_through(api, unread_id)

                frames: list[Frame] = []
                while (frame := await stream.frame()) is not None:
                    frames.append(frame)

    assert frames, "the stream sent nothing"
    *delivered, last = frames
    assert last.event == "error", [f.event for f in frames]
    error = last.json()
    assert set(error) == {"error"} and set(error["error"]) == {"code", "message", "details"}
    assert error["error"]["code"] == "cursor_expired"
    details = error["error"]["details"]
    assert int(details["oldest_cursor"]) >= unread_id
    # Mid-stream: the batch came first, in order, and the error names where the reader stood.
    events = as_events(delivered)
    assert [(e["type"], e["task_id"]) for e in events] == [
        ("task.created", big),
        ("task.updated", big),
        ("task.created", held),
    ]
    assert details["after"] == events[-1]["id"]


# --- across replicas ----------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_long_poll_on_one_replica_is_woken_by_a_commit_on_another(
    tmp_path: Path, postgres_empty_url: str, streams: list[Any]
) -> None:
    env = server_env(postgres_empty_url)
    # One after the other: the first migrates the empty database.
    with (
        ServerProcess(tmp_path / "a", env=env) as a,
        ServerProcess(tmp_path / "b", env=env) as b,
    ):
        async with client_for(a) as on_a, client_for(b) as on_b:
            start = await head(on_a)
            stream = await open_stream(on_a, streams, after=start)

            async def create_on_b() -> str:
                await asyncio.sleep(0.3)
                return await new_task(on_b, "from b")

            loop = asyncio.get_running_loop()
            began = loop.time()
            poll = asyncio.create_task(on_a.get(EVENTS, params={"after": start, "wait_s": 60}))
            creator = asyncio.create_task(create_on_b())
            r = await asyncio.wait_for(poll, 60 + STEP_S)
            elapsed = loop.time() - began
            task = await creator

            assert r.status_code == 200, r.text
            body = r.json()
            # The answer is B's event, not the timeout path's empty list.
            assert [(e["type"], e["task_id"]) for e in body["events"]] == [("task.created", task)]
            assert body["next_cursor"] == body["events"][0]["id"]
            assert elapsed < 30, f"the read took {elapsed:.1f}s of its 60 s wait"

            # The stream on A is woken the same way.
            (frame,) = await stream.frames(1)
            assert (frame.event, frame.json()["task_id"]) == ("task.created", task)
            await close(streams)
