"""Event filters beside `types` (docs/events.md#filters): `task`, `room` and `requester` on
the long-poll read `GET /api/v1/events` (the SSE stream takes the same filters:
tests/integration/test_event_stream.py). Filters run in SQL; the cursor still moves past
what they skip; a long poll answers for a matching event only. Both engines.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.runtime import Runtime
from dispatchd.store.base import AppendEvent
from tests.api.conftest import as_agent
from tests.api.helpers import ADMIN, BOTH, Register, assert_error, wait_assigned

pytestmark = BOTH

URL = "/api/v1/events"
NOBODY = "nobody-has-this"


async def read(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get(URL, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def head(client: httpx.AsyncClient) -> str:
    return str((await read(client, after="latest"))["next_cursor"])


async def new_task(client: httpx.AsyncClient, by: str, **body: Any) -> str:
    """A task requested by `by` that no agent takes."""
    body = {"title": "a task", "capabilities": [NOBODY], **body}
    r = await client.post("/api/v1/tasks", json=body, headers=as_agent(by))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def comment(client: httpx.AsyncClient, task_id: str, text: str) -> None:
    r = await client.post(f"/api/v1/tasks/{task_id}/comments", json={"body": text})
    assert r.status_code in (200, 201), r.text


async def room_event(runtime: Runtime, room: str) -> None:
    """A room event with no task, as room.interrupted is: it names its room in `data`."""
    event = Event(type="room.interrupted", created_at=utcnow(), data={"room": room})
    await runtime.store.commit([AppendEvent(event)])


def seen(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["task_id"]) for e in events]


async def test_task_requester_and_room_filters(client: httpx.AsyncClient, runtime: Runtime) -> None:
    start = await head(client)
    mine = await new_task(client, "alice", scope="infra")
    theirs = await new_task(client, "bob", scope="research")
    other = await new_task(client, "bob", scope="infra")
    await comment(client, mine, "one")
    await comment(client, theirs, "two")
    await room_event(runtime, "infra")
    await room_event(runtime, "research")
    last = await head(client)

    by_task = await read(client, after=start, task=theirs)
    assert seen(by_task["events"]) == [("task.created", theirs), ("task.commented", theirs)]
    # Filtered events still move the cursor: to the head the read looked at.
    assert by_task["next_cursor"] == last

    by_requester = await read(client, after=start, requester="bob")
    assert seen(by_requester["events"]) == [
        ("task.created", theirs),
        ("task.created", other),
        ("task.commented", theirs),
    ]
    by_room = await read(client, after=start, room="infra")
    assert seen(by_room["events"]) == [
        ("task.created", mine),
        ("task.created", other),
        ("task.commented", mine),
        ("room.interrupted", None),
    ]
    assert by_room["events"][-1]["data"] == {"room": "infra"}
    # Every filter given must hold, types too.
    both = await read(client, after=start, room="infra", requester="bob")
    assert seen(both["events"]) == [("task.created", other)]
    typed = await read(client, after=start, requester="bob", types="task.commented")
    assert seen(typed["events"]) == [("task.commented", theirs)]
    rooms = await read(client, after=start, room="research", types="room")
    assert seen(rooms["events"]) == [("room.interrupted", None)]
    assert (await read(client, after=start, task="no-such-task"))["events"] == []


async def test_paging_a_filter_with_limit_loses_and_repeats_nothing(
    client: httpx.AsyncClient,
) -> None:
    start = await head(client)
    task = await new_task(client, "bob")
    for i in range(5):
        await comment(client, task, f"note {i}")
        await new_task(client, "carol")
    whole = (await read(client, after=start, requester="bob"))["events"]
    assert len(whole) == 6
    pages: list[dict[str, Any]] = []
    cursor = start
    while True:
        body = await read(client, after=cursor, requester="bob", limit=2)
        if not body["events"]:
            break
        pages.extend(body["events"])
        cursor = body["next_cursor"]
    assert pages == whole


async def test_a_filtered_long_poll_answers_only_for_a_matching_event(
    client: httpx.AsyncClient,
) -> None:
    task = await new_task(client, "bob")
    start = await head(client)
    poll = asyncio.create_task(client.get(URL, params={"after": start, "task": task, "wait_s": 30}))
    await asyncio.sleep(0.3)
    await new_task(client, "carol")  # another task's event: the poll waits on
    await asyncio.sleep(0.3)
    assert not poll.done()
    await comment(client, task, "now")
    r = await asyncio.wait_for(poll, 10)
    assert r.status_code == 200, r.text
    assert seen(r.json()["events"]) == [("task.commented", task)]


async def test_a_filtered_long_poll_answers_empty_after_wait_s(
    client: httpx.AsyncClient,
) -> None:
    task = await new_task(client, "bob")
    start = await head(client)
    await new_task(client, "carol")
    body = await read(client, after=start, task=task, wait_s=0.3)
    assert body["events"] == [] and int(body["next_cursor"]) > int(start)


@pytest.mark.parametrize("name", ["task", "room", "requester"])
async def test_an_overlong_filter_is_refused(client: httpx.AsyncClient, name: str) -> None:
    assert_error(await client.get(URL, params={name: "x" * 201}), 422, None)
    assert_error(await client.get(f"{URL}/stream", params={name: "x" * 201}), 422, None)


async def test_a_rooms_filter_holds_its_dispatched_work_and_its_interruption(
    client: httpx.AsyncClient, register: Register
) -> None:
    start = await head(client)
    r = await client.post("/api/v1/rooms", json={"id": "ops", "name": "#ops"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    await register("w-ops", ["code"], room="ops")  # takes the room's work: it is held
    r = await client.post("/api/v1/rooms/ops/dispatch", json={"prompt": "check disks"})
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]
    await wait_assigned(client, task_id, "w-ops")
    await new_task(client, "bob", scope="elsewhere")
    r = await client.post("/api/v1/rooms/ops/interrupt", json={"reason": "stop"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["cancelled"] == [task_id]
    got = (await read(client, after=start, room="ops"))["events"]
    types = [e["type"] for e in got]
    assert types[0] == "room.created" and types[-1] == "room.interrupted"
    assert {"task.created", "task.assigned", "task.cancelled"} <= set(types)
    assert got[-1]["data"]["room"] == "ops"
    # The room's own events and its task's; not the agent's, not the other task's.
    assert {e["task_id"] for e in got if e["task_id"]} == {task_id}
    assert not [t for t in types if t.startswith("agent.")]
