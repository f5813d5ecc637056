"""The room resource (docs/rooms.md): a room, its derived status, work dispatched into it,
its history and its interruption."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema

from dispatchd.api.schemas.common import Id, Request, Short, Tag, Text, Title, opt_isoformat
from dispatchd.api.schemas.events import EventOut
from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import Priority, Task, TaskStatus
from dispatchd.domain.rooms import SLUG_PATTERN, History, RoomAgentStatus, RoomStatus

RoomId = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
RoomName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Workspace = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class RoomCreate(Request):
    id: RoomId = Field(description="A slug: a-z, 0-9, '.', '_', '-' (up to 64), e.g. infra")
    name: RoomName | None = Field(None, description="A channel name; defaults to #<id>")
    workspace: Workspace | None = Field(None, description="A path, e.g. ~/ops/servers")


class RoomPatch(Request):
    name: RoomName | SkipJsonSchema[None] = Field(None, description="may be left out, not null")
    workspace: Workspace | None = Field(None, description="null clears it")


# Not blank (`_not_blank`: Python's whitespace), no NUL (the body guard).
NOT_BLANK = (
    "^[^\\x00]*[^\\x00\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00]*$"
)


class RoomDispatch(Request):
    prompt: Annotated[Text, StringConstraints(min_length=1)] = Field(
        json_schema_extra={"pattern": NOT_BLANK}
    )
    title: Title | None = Field(None, description="Defaults to the prompt's first line")
    priority: Priority = Priority.MEDIUM
    depends_on: list[Id] = Field(default_factory=list, max_length=100)
    capabilities: list[Tag] = Field(default_factory=list, max_length=32)
    context: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is blank")
        return value


class InterruptBody(Request):
    reason: Short | None = None


class InterruptOut(BaseModel):
    cancelled: list[str] = Field(description="The ids of the tasks cancelled")


def _progress(t: Task) -> dict[str, Any] | None:
    if t.progress_message is None and t.progress_percent is None:
        return None
    return {"message": t.progress_message, "percent": t.progress_percent}


class CurrentTaskOut(BaseModel):
    id: str
    title: str
    status: TaskStatus
    progress: dict[str, Any] | None = Field(description='{"message", "percent"} or null')
    question: str | None = Field(description="The question asked, while it waits for input")

    @classmethod
    def of(cls, t: Task) -> CurrentTaskOut:
        waiting = t.status is TaskStatus.WAITING_INPUT
        return cls(
            id=t.id,
            title=t.title,
            status=t.status,
            progress=_progress(t),
            question=t.question if waiting else None,
        )


class RoomOut(BaseModel):
    id: str
    name: str
    workspace: str | None
    agent_status: RoomAgentStatus
    status_reason: str | None = Field(description="Why the status is error (null otherwise)")
    agents: list[str] = Field(description="Ids of the agents whose room is this one")
    current_task: CurrentTaskOut | None
    last_activity_at: str
    pending: int = Field(description="Tasks of the room queued (pending or blocked)")
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, s: RoomStatus) -> RoomOut:
        room = s.room
        return cls(
            id=room.id,
            name=room.name,
            workspace=room.workspace,
            agent_status=s.agent_status,
            status_reason=s.reason,
            agents=list(s.agents),
            current_task=CurrentTaskOut.of(s.current_task) if s.current_task else None,
            last_activity_at=isoformat(s.last_activity_at),
            pending=s.pending,
            created_at=isoformat(room.created_at),
            updated_at=isoformat(room.updated_at),
        )


class RoomList(BaseModel):
    items: list[RoomOut]
    next_cursor: str | None


class RoomRemoved(BaseModel):
    id: str


class HistoryTaskOut(BaseModel):
    """A task of the room with its outcome (the full task: GET /api/v1/tasks/{id})."""

    id: str
    title: str
    status: TaskStatus
    priority: Priority
    requester: str
    assignee: str | None
    progress: dict[str, Any] | None
    question: str | None
    summary: str | None
    error: str | None
    result: Any
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str

    @classmethod
    def of(cls, t: Task) -> HistoryTaskOut:
        return cls(
            id=t.id,
            title=t.title,
            status=t.status,
            priority=t.priority,
            requester=t.requester,
            assignee=t.assignee,
            progress=_progress(t),
            question=t.question,
            summary=t.summary,
            error=t.error,
            result=t.result,
            created_at=isoformat(t.created_at),
            started_at=opt_isoformat(t.started_at),
            finished_at=opt_isoformat(t.finished_at),
            updated_at=isoformat(t.updated_at),
        )


class RoomHistoryOut(BaseModel):
    room: str
    tasks: list[HistoryTaskOut] = Field(description="The room's tasks, newest first")
    events: list[EventOut] = Field(
        description="The room's events (room.*) and its tasks' events, newest first"
    )

    @classmethod
    def of(cls, room_id: str, h: History) -> RoomHistoryOut:
        return cls(
            room=room_id,
            tasks=[HistoryTaskOut.of(t) for t in h.tasks],
            events=[EventOut.of(e) for e in h.events],
        )
