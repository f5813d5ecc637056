"""The SDK's readers against a real server: event filters (`task`, `room`, `requester`) on
the read and the stream, a requester's notifications with `wait_s`, and `wait_for`, which
follows a task by the filtered long poll instead of polling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest

from dispatchd.client import AsyncClient, Client, NotFound
from dispatchd.client.models import TaskStatus
from tests.agent.conftest import LiveServer

MakeClient = Callable[..., AsyncClient]


class Counting(httpx.AsyncHTTPTransport):
    """The network, counting the requests sent over it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return await super().handle_async_request(request)


@pytest.fixture
async def make_client(live_server: LiveServer) -> AsyncIterator[MakeClient]:
    made: list[AsyncClient] = []

    def make(agent_id: str, **kwargs: Any) -> AsyncClient:
        client = AsyncClient(live_server.url, agent_id=agent_id, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def started(
    make_client: MakeClient, unique: str, requester: AsyncClient
) -> tuple[AsyncClient, str]:
    """A task of `requester`, claimed (so running) by a fresh worker; the worker and the
    task id."""
    worker = make_client(f"w-{unique}")
    await worker.register_agent(capabilities=[f"tag-{unique}"])
    task = await requester.create_task("job", capabilities=[f"tag-{unique}"], max_attempts=1)
    claim = await worker.claim(max_tasks=1, wait_s=5)
    assert [t.id for t in claim.tasks] == [task.id]
    return worker, task.id


async def test_wait_for_returns_the_task_when_it_ends_without_polling(
    make_client: MakeClient, unique: str
) -> None:
    counting = Counting()
    requester = make_client(f"r-{unique}", transport=counting)
    worker, task_id = await started(make_client, unique, requester)

    async def finish_later() -> None:
        await anyio.sleep(1.0)
        await worker.report_progress(task_id, message="halfway", percent=50)
        await anyio.sleep(1.0)
        await worker.complete_task(task_id, result={"ok": True}, summary="done")

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_later)
        before = len(counting.requests)
        done = await requester.wait_for(task_id, timeout=30)
    assert done.id == task_id and done.status is TaskStatus.COMPLETED
    assert done.result == {"ok": True}
    # One read of the head, the task, a long poll per change and a read per change: a
    # loop polling every few hundred ms would have sent far more in those 2 s.
    used = counting.requests[before:]
    assert len(used) <= 8, used
    assert any("/api/v1/events" in r for r in used)


async def test_wait_for_a_change_and_a_timeout(make_client: MakeClient, unique: str) -> None:
    requester = make_client(f"r-{unique}")
    worker, task_id = await started(make_client, unique, requester)

    async def ask_later() -> None:
        await anyio.sleep(0.5)
        await worker.request_input(task_id, "Proceed?")

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask_later)
        changed = await requester.wait_for(task_id, changed=True, timeout=30)
    assert changed.status is TaskStatus.WAITING_INPUT and changed.question == "Proceed?"

    with anyio.fail_after(10):
        with pytest.raises(TimeoutError, match="waiting_input"):
            await requester.wait_for(task_id, timeout=0.5)
    with pytest.raises(NotFound):
        await requester.wait_for("no-such-task", timeout=1)

    await requester.provide_input(task_id, "yes")
    await worker.complete_task(task_id, result=None)
    # Already ended: answered at once.
    with anyio.fail_after(5):
        assert (await requester.wait_for(task_id)).status is TaskStatus.COMPLETED


def test_the_blocking_client_waits_for_a_task(live_server: LiveServer, unique: str) -> None:
    with Client(live_server.url, agent_id=f"r-{unique}") as requester:
        task = requester.create_task("sync job", capabilities=[f"none-{unique}"])
        requester.cancel_task(task.id, reason="not needed")
        assert requester.wait_for(task.id, timeout=10).status is TaskStatus.CANCELLED
        page = requester.read_events("0", task=task.id)
        assert [e.type for e in page.events] == ["task.created", "task.cancelled"]


async def test_event_filters_on_the_read_and_the_stream(
    make_client: MakeClient, unique: str
) -> None:
    alice = make_client(f"alice-{unique}")
    bob = make_client(f"bob-{unique}")
    start = (await alice.read_events("latest", limit=1)).next_cursor
    tag = f"none-{unique}"
    mine = await alice.create_task("mine", capabilities=[tag], scope=f"room-{unique}")
    theirs = await bob.create_task("theirs", capabilities=[tag])
    await alice.add_comment(theirs.id, "a note")

    by_task = await alice.read_events(start, task=theirs.id)
    assert [(e.type, e.task_id) for e in by_task.events] == [
        ("task.created", theirs.id),
        ("task.commented", theirs.id),
    ]
    by_room = await alice.read_events(start, room=f"room-{unique}")
    assert [e.task_id for e in by_room.events] == [mine.id]
    by_requester = await alice.read_events(start, requester=f"bob-{unique}", types="task.created")
    assert [e.task_id for e in by_requester.events] == [theirs.id]

    seen = []
    with anyio.fail_after(20):
        async with aclosing(alice.stream_events(start, requester=f"bob-{unique}")) as stream:
            async for event in stream:
                seen.append((event.type, event.task_id))
                if len(seen) == 2:
                    break
    assert seen == [("task.created", theirs.id), ("task.commented", theirs.id)]


async def test_a_requester_reads_its_notifications_with_a_long_poll(
    make_client: MakeClient, unique: str
) -> None:
    requester = make_client(f"r-{unique}")
    worker, task_id = await started(make_client, unique, requester)
    start = (await requester.list_notifications()).next_cursor

    async def ask_later() -> None:
        await anyio.sleep(0.5)
        await worker.request_input(task_id, "Which region?")

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask_later)
        with anyio.fail_after(20):
            page = await requester.list_notifications(start, wait_s=15)
    assert [(n.kind, n.task_id) for n in page.items] == [("question", task_id)]
    assert page.items[0].data["question"] == "Which region?"
    # Someone else's client sees none of it.
    other = make_client(f"other-{unique}")
    assert (await other.list_notifications(start)).items == []
