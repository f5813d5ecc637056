"""The notification resource: a requester's news about its tasks, and acknowledging it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from dispatchd.api.schemas.common import Request, exactly_one, whole_number
from dispatchd.domain.ids import isoformat
from dispatchd.domain.notifications import Digest, Notification

# Ids given as numbers stay within the integers JSON carries exactly (and a signed 64-bit
# integer in both engines); larger ones are given as strings.
MAX_ID = 2**53 - 1
NotificationId = (
    Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")]
    | Annotated[int, Field(strict=True, ge=0, le=MAX_ID), BeforeValidator(whole_number)]
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
    model_config = ConfigDict(
        json_schema_extra=exactly_one(ids="array", up_to=["string", "integer"])
    )

    ids: Annotated[list[NotificationId], Field(min_length=1, max_length=1000)] | None = None
    up_to: NotificationId | None = None


class AckOut(BaseModel):
    acknowledged: int
