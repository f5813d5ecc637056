"""An event as every reader sees it: the HTTP routes and the SSE stream, the NATS
publisher, webhook deliveries and the SDK all use this one shape."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import Event


class EventOut(BaseModel):
    id: str
    type: str
    task_id: str | None
    agent_id: str | None
    data: dict[str, Any]
    created_at: str

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls(
            id=str(e.id),
            type=e.type,
            task_id=e.task_id,
            agent_id=e.agent_id,
            data=dict(e.data),
            created_at=isoformat(e.created_at),
        )


class EventList(BaseModel):
    events: list[EventOut]
    next_cursor: str
