"""`stream_events`: follows the log over SSE, resumes after a dropped connection (a
server killed and restarted on the same port) with no gap and no duplicate, and raises
the error a stream ends with."""

from __future__ import annotations

import socket
from contextlib import aclosing
from pathlib import Path

import anyio
import httpx
import pytest

from dispatchd.client import AsyncClient, BadRequest, ClientError, Gone, ServerError
from dispatchd.client.models import Event
from tests.agent.conftest import LiveServer
from tests.integration.server import ServerProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RecordStreams(httpx.AsyncBaseTransport):
    """The real transport, recording the `Last-Event-ID` of each stream request."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.resumed_from: list[str | None] = []
        self.opened = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events/stream"):
            self.resumed_from.append(request.headers.get("Last-Event-ID"))
            self.opened.set()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_stream_resumes_across_a_server_restart(tmp_path: Path, unique: str) -> None:
    port = free_port()
    server = ServerProcess(tmp_path / "server", env={"DISPATCH_PORT": str(port)})
    transport = RecordStreams()
    seen: list[Event] = []

    async with AsyncClient(
        f"http://127.0.0.1:{port}",
        agent_id=f"watch-{unique}",
        # About a minute of reconnecting (0.125 s apiece on average): longer than a restart
        # takes on a busy machine (ServerProcess gives a start 30 s).
        retries=500,
        backoff_base=0.05,
        backoff_cap=0.25,
        transport=transport,
    ) as client:

        async def follow() -> None:
            async with aclosing(client.stream_events(types="task.created")) as stream:
                async for event in stream:
                    seen.append(event)
                    await arrived.send(event)

        async def take(count: int) -> None:
            with anyio.fail_after(30):
                for _ in range(count):
                    await arrivals.receive()

        arrived, arrivals = anyio.create_memory_object_stream[Event](100)
        with server, arrived, arrivals:
            made = [await client.create_task(f"before {i}") for i in range(2)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await take(2)
                last_before = seen[-1].id

                await anyio.to_thread.run_sync(server.kill)
                await anyio.to_thread.run_sync(server.start)
                made += [await client.create_task(f"after {i}") for i in range(2)]
                await take(2)
                tg.cancel_scope.cancel()

            whole_log = await client.read_events(types="task.created")

    assert [e.task_id for e in seen] == [t.id for t in made]
    assert [e.id for e in seen] == [e.id for e in whole_log.events]  # no gap, no duplicate
    assert transport.resumed_from[0] is None
    assert last_before in transport.resumed_from[1:]


def sse_response(*frames: str, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status,
        content="".join(frames).encode(),
        headers={"content-type": "text/event-stream"},
    )


def event_frame(cursor: int, task_id: str = "t1") -> str:
    body = (
        f'{{"id": "{cursor}", "type": "task.created", "task_id": "{task_id}", '
        f'"agent_id": null, "data": {{}}, "created_at": "2026-01-01T00:00:00Z"}}'
    )
    return f"id: {cursor}\nevent: task.created\ndata: {body}\n\n"


async def test_the_error_a_stream_ends_with_is_raised() -> None:
    requests: list[httpx.Request] = []
    expired = (
        'event: error\ndata: {"error": {"code": "cursor_expired", '
        '"message": "events up to 9 were deleted", "details": {"oldest_cursor": "9"}}}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return sse_response(event_frame(1), expired)

    seen: list[Event] = []
    async with AsyncClient(
        "http://d.test", agent_id="w", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(Gone) as caught:
            async with aclosing(client.stream_events()) as stream:
                async for event in stream:
                    seen.append(event)
    assert [e.id for e in seen] == ["1"]
    assert caught.value.status == 410 and caught.value.code == "cursor_expired"
    assert caught.value.details == {"oldest_cursor": "9"}
    assert len(requests) == 1  # not retried


async def test_a_stream_reconnects_after_an_end_and_after_unavailable() -> None:
    """A stream that ends is reopened after its last event; a 503 on reconnecting is
    waited out; the cursor given at the start is sent on the first request."""
    answers = [
        sse_response(event_frame(5), event_frame(6)),
        httpx.Response(
            503, json={"error": {"code": "store_unavailable", "message": "m", "details": {}}}
        ),
        sse_response(": keep-alive\n\n", event_frame(7)),
    ]
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answers.pop(0)

    async with (
        AsyncClient(
            "http://d.test",
            agent_id="w",
            transport=httpx.MockTransport(handler),
            backoff_base=0.001,
        ) as client,
        aclosing(client.stream_events("4", types=["task.*"])) as stream,
    ):
        seen = [(await anext(stream)).id for _ in range(3)]
    assert seen == ["5", "6", "7"]
    assert [r.headers.get("Last-Event-ID") for r in requests] == ["4", "6", "6"]
    assert all(r.url.params["types"] == "task.*" for r in requests)


async def test_an_unavailable_error_event_resumes_and_a_bad_event_is_a_client_error() -> None:
    unavailable = (
        'event: error\ndata: {"error": {"code": "store_unavailable", '
        '"message": "the database cannot be reached", "details": {}}}\n\n'
    )
    answers = [
        sse_response(event_frame(1), unavailable),
        sse_response(event_frame(2), 'id: 3\nevent: task.created\ndata: {"id": 3}\n\n'),
    ]
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answers.pop(0)

    seen: list[str] = []
    async with AsyncClient(
        "http://d.test", agent_id="w", transport=httpx.MockTransport(handler), backoff_base=0.001
    ) as client:
        with pytest.raises(ClientError, match="not one") as caught:
            async with aclosing(client.stream_events()) as stream:
                async for event in stream:
                    seen.append(event.id)
    assert seen == ["1", "2"]
    assert [r.headers.get("Last-Event-ID") for r in requests] == [None, "1"]
    assert not isinstance(caught.value, ServerError)


async def test_a_stream_gives_up_after_the_retries() -> None:
    unavailable = {"error": {"code": "store_unavailable", "message": "m", "details": {}}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json=unavailable)

    async with AsyncClient(
        "http://d.test",
        agent_id="w",
        retries=2,
        backoff_base=0.001,
        transport=httpx.MockTransport(handler),
    ) as client:
        with pytest.raises(ServerError) as caught:
            async with aclosing(client.stream_events()) as stream:
                await anext(stream)
    assert caught.value.status == 503


async def test_a_refused_cursor_is_raised_at_once(live_server: LiveServer, unique: str) -> None:
    async with AsyncClient(live_server.url, agent_id=f"w-{unique}") as client:
        with pytest.raises(BadRequest) as caught:
            async with aclosing(client.stream_events("999999999")) as stream:
                await anext(stream)
    assert caught.value.code == "invalid_cursor"


async def test_latest_is_resolved_before_streaming(live_server: LiveServer, unique: str) -> None:
    """`after="latest"` starts at the end of the log when the iteration starts, and the
    stream is opened with that cursor as a number, so a reconnection resumes from it."""
    transport = RecordStreams()
    firsts: list[Event] = []
    async with AsyncClient(live_server.url, agent_id=f"w-{unique}", transport=transport) as client:
        await client.create_task("before", capabilities=[f"lat-{unique}"])
        head = (await client.read_events("latest")).next_cursor

        async def first_event() -> None:
            async with aclosing(client.stream_events("latest", types="task.created")) as stream:
                firsts.append(await anext(stream))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first_event)
                await transport.opened.wait()
                after = await client.create_task("after", capabilities=[f"lat-{unique}"])
    assert [e.task_id for e in firsts] == [after.id]
    assert transport.resumed_from == [head]
