"""Notifications for humans (SPEC §4, docs/events.md#notifications), admin only.

`GET /api/v1/notifications` pages through the finished entries by cursor (the id of the
last entry seen) and shows the digest still collecting items beside them;
`POST /api/v1/notifications/ack` marks entries as seen.
"""

from __future__ import annotations

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
from dispatchd.errors import ValidationFailed

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
        str | None, Query(max_length=40, description="the id of the last notification seen")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    unacknowledged: Annotated[
        bool, Query(description="only the entries nobody has acknowledged")
    ] = False,
) -> NotificationList:
    """Finished notifications after `after`, oldest first: failures, timeouts, escalations
    and questions as they happen, and digests of completions and progress once their
    window ends. `open_digest` is the digest still collecting items, if any."""
    require_admin(caller)
    start = _cursor(after)
    found = await rt.store.list_notifications(
        after=start, limit=limit, unacknowledged_only=unacknowledged
    )
    digest = await rt.store.open_digest()
    return NotificationList(
        items=[NotificationOut.of(n) for n in found],
        next_cursor=str(found[-1].id) if found else str(start),
        open_digest=OpenDigestOut.of(digest) if digest is not None else None,
    )


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
