"""The event log over HTTP (SPEC §4 Events): a long-poll read and a Server-Sent Events
stream, both by cursor, both woken by the log itself rather than by polling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas.events import EventList, EventOut
from dispatchd.domain.event_types import CURSOR_PATTERN, TYPE_LIST_PATTERN
from dispatchd.errors import DispatchError
from dispatchd.events.reader import TypeFilter
from dispatchd.store.readers import EventScope

router = APIRouter(prefix="/api/v1/events", tags=["events"], responses=ERRORS)

Cursor = Annotated[
    str | None,
    Query(
        max_length=40,
        description="the id of the last event seen; 0 or absent: from the start; "
        "latest: from the end of the log now",
        json_schema_extra={"pattern": CURSOR_PATTERN},
    ),
]
Types = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="comma-separated event types, globs (task.*) or families (agent)",
        json_schema_extra={"pattern": TYPE_LIST_PATTERN},
    ),
]

TaskParam = Annotated[
    str | None, Query(max_length=200, description="only the events of this task (its id)")
]
RoomParam = Annotated[
    str | None,
    Query(
        max_length=200,
        description="only the events of this room: of the tasks scoped to it, and those "
        "whose data names it as room (room.interrupted)",
    ),
]
RequesterParam = Annotated[
    str | None,
    Query(max_length=200, description="only the events of the tasks this caller requested"),
]


def _scope(task: str | None, room: str | None, requester: str | None) -> EventScope:
    return EventScope(task_id=task or None, requester=requester or None, room=room or None)


@router.get("", response_model=EventList)
async def read_events(
    caller: CallerDep,
    rt: RuntimeDep,
    after: Cursor = None,
    types: Types = None,
    task: TaskParam = None,
    room: RoomParam = None,
    requester: RequesterParam = None,
    wait_s: Annotated[float, Query(ge=0, le=60)] = 0.0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """The events after `after`, in order, with the cursor to continue from. With `wait_s`
    an empty read waits up to that long and answers the moment an event arrives.
    `types`, `task`, `room` and `requester` filter them (every filter given must hold)."""
    batch = await rt.events.read(
        await rt.events.start(after),
        TypeFilter.parse(types),
        limit=limit,
        wait_s=wait_s,
        scope=_scope(task, room, requester),
    )
    return EventList(events=[EventOut.of(e) for e in batch.events], next_cursor=str(batch.cursor))


@router.get("/stream", response_class=EventSourceResponse)
async def stream_events(
    caller: CallerDep,
    rt: RuntimeDep,
    after: Cursor = None,
    types: Types = None,
    task: TaskParam = None,
    room: RoomParam = None,
    requester: RequesterParam = None,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> EventSourceResponse:
    """Server-Sent Events: each event as `id: <cursor>`, `event: <type>` and the event as
    JSON `data`. A reconnecting client sends `Last-Event-ID` (which wins over `after`) and
    continues with no gap and no duplicate. Idle streams carry keep-alive comments.
    Filters as for the read: `types`, `task`, `room`, `requester`."""
    start = await rt.events.start(last_event_id if last_event_id else after)
    wanted = TypeFilter.parse(types)
    scope = _scope(task, room, requester)
    keepalive = rt.settings.events.keepalive_s
    await rt.events.check(start)  # an expired or unknown cursor is refused before streaming

    async def frames() -> AsyncIterator[ServerSentEvent]:
        try:
            async for batch in rt.events.follow(start, wanted, idle_s=keepalive, scope=scope):
                for event in batch.events:
                    body = EventOut.of(event).model_dump_json()
                    yield ServerSentEvent(data=body, id=str(event.id), event=event.type)
        except DispatchError as exc:
            # The stream is open: the error goes as its last event, in the error form.
            yield ServerSentEvent(data=json.dumps(exc.as_body()), event="error")

    return EventSourceResponse(frames(), ping=keepalive)
