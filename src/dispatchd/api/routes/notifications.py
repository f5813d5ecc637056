"""Notifications for humans (SPEC §4, docs/events.md#notifications).

`GET /api/v1/notifications` pages through the finished entries by cursor (the id of the
last entry seen) and shows the digest still collecting items beside them. The admin reads
every entry; any other caller reads those about the tasks it requested, and the digests
cut to its tasks' items. With `wait_s` an empty read waits for the next entry it may see.
`POST /api/v1/notifications/ack` marks entries as seen (admin only: an acknowledgement is
everyone's).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas.notifications import (
    AckBody,
    AckOut,
    NotificationList,
    NotificationOut,
    OpenDigestOut,
)
from dispatchd.domain.access import require_admin
from dispatchd.domain.ids import utcnow
from dispatchd.domain.notifications import Notification, for_requester
from dispatchd.errors import ValidationFailed

# A waiting read looks again this often even when this replica's notifier wrote nothing:
# on PostgreSQL the notifier may run on another replica.
RECHECK_S = 1.0

router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"], responses=ERRORS)


def _id(raw: str | int) -> int:
    return int(raw)


def _cursor(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValidationFailed(
            "a cursor is the id of the last notification seen, e.g. 0 for the first",
            code="invalid_cursor",
            cursor=raw[:50],
        )
    return int(raw)


@router.get("", response_model=NotificationList)
async def list_notifications(
    caller: CallerDep,
    rt: RuntimeDep,
    after: Annotated[
        str | None,
        Query(
            max_length=40,
            description="the id of the last notification seen",
            json_schema_extra={"pattern": "^[0-9]{0,18}$"},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    unacknowledged: Annotated[
        bool, Query(description="only the entries nobody has acknowledged")
    ] = False,
    wait_s: Annotated[
        float,
        Query(ge=0, le=60, description="when there is nothing new, wait up to this long"),
    ] = 0.0,
) -> NotificationList:
    """Finished notifications after `after`, oldest first: failures, timeouts, escalations
    and questions as they happen, and digests of completions and progress once their
    window ends. `open_digest` is the digest still collecting items, if any. The admin
    sees everything; another caller the entries about the tasks it requested."""
    reader = None if caller.is_admin else caller.agent_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    cursor = _cursor(after)
    while True:
        found = await rt.store.list_notifications(
            after=cursor, limit=limit, unacknowledged_only=unacknowledged, requester=reader
        )
        items = found if reader is None else _visible(found, reader)
        # Entries the reader may not see still move its cursor.
        cursor = found[-1].id if found and found[-1].id is not None else cursor
        if items:
            break
        if len(found) == limit:
            continue  # a run of entries for others: read on
        remaining = deadline - loop.time()
        if remaining <= 0 or rt.events.closed:
            break
        await rt.notifier.written(min(remaining, RECHECK_S))
    digest = await rt.notifier.open_digest()
    if digest is not None and reader is not None:
        digest = digest.only(reader)
    return NotificationList(
        items=[NotificationOut.of(n) for n in items],
        next_cursor=str(cursor),
        open_digest=OpenDigestOut.of(digest) if digest is not None else None,
    )


def _visible(found: list[Notification], reader: str) -> list[Notification]:
    return [n for e in found if (n := for_requester(e, reader)) is not None]


@router.post("/ack", response_model=AckOut)
async def acknowledge(body: AckBody, caller: CallerDep, rt: RuntimeDep) -> AckOut:
    """Acknowledge the entries `ids`, or every entry up to and including `up_to`; answers
    how many were newly acknowledged (those already acknowledged keep who did it first)."""
    require_admin(caller)
    if (body.ids is None) == (body.up_to is None):
        raise ValidationFailed(
            "give either ids (a list of notification ids) or up_to (a notification id)",
            code="invalid_acknowledgement",
        )
    now = utcnow()
    if body.ids is not None:
        count = await rt.store.acknowledge_notifications(
            ids=sorted({_id(i) for i in body.ids}), by=caller.agent_id, at=now
        )
    else:
        assert body.up_to is not None
        count = await rt.store.acknowledge_notifications(
            up_to=_id(body.up_to), by=caller.agent_id, at=now
        )
    return AckOut(acknowledged=count)
