"""Notifications for humans (SPEC §4, docs/events.md#notifications), admin only.

`GET /api/v1/notifications` pages through the finished entries by cursor (the id of the
last entry seen) and shows the digest still collecting items beside them;
`POST /api/v1/notifications/ack` marks entries as seen.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, StringConstraints

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas import Request
from dispatchd.domain.access import require_admin
from dispatchd.domain.ids import isoformat, utcnow
from dispatchd.domain.notifications import Digest, Notification
from dispatchd.errors import ValidationFailed

router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"], responses=ERRORS)

# Ids fit a signed 64-bit integer in both engines.
MAX_ID = 2**63 - 1
NotificationId = (
    Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")]
    | Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
)


class NotificationOut(BaseModel):
    id: str
    kind: str
    task_id: str | None
    data: dict[str, Any]
    event_id: str
    created_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None

    @classmethod
    def of(cls, n: Notification) -> NotificationOut:
        return cls(
            id=str(n.id),
            kind=n.kind.value,
            task_id=n.task_id,
            data=dict(n.data),
            event_id=str(n.event_id),
            created_at=isoformat(n.created_at),
            acknowledged_at=isoformat(n.acknowledged_at) if n.acknowledged_at else None,
            acknowledged_by=n.acknowledged_by,
        )


class OpenDigestOut(BaseModel):
    """The digest still collecting completions and progress; it becomes an entry of the
    list when its window ends."""

    kind: str = "digest"
    opened_at: str
    closes_at: str
    event_id: str
    data: dict[str, Any]

    @classmethod
    def of(cls, d: Digest) -> OpenDigestOut:
        return cls(
            opened_at=isoformat(d.opened_at),
            closes_at=isoformat(d.closes_at),
            event_id=str(d.event_id),
            data=d.data(),
        )


class NotificationList(BaseModel):
    items: list[NotificationOut]
    # Where to continue from: the last entry returned, or the `after` given when there
    # was none. Always set, so that a reader polling for news never loses its place.
    next_cursor: str
    open_digest: OpenDigestOut | None


class AckBody(Request):
    ids: Annotated[list[NotificationId], Field(min_length=1, max_length=1000)] | None = None
    up_to: NotificationId | None = None


class AckOut(BaseModel):
    acknowledged: int


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
