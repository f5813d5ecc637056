"""The agent resource: registration, changes, heartbeats, and the agent as the API shows
it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints, WithJsonSchema

from dispatchd.api.schemas.common import (
    AgentId,
    Id,
    Request,
    Short,
    Tag,
    Weights,
    opt_isoformat,
    whole_number,
)
from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import Agent, AgentStatus
from dispatchd.domain.webhooks import URL_PATTERN

# An agent is offline when it stops heartbeating or deregisters, never by saying so.
SettableStatus = Literal["ready", "sleeping", "busy", "degraded"]
MaxConcurrent = Annotated[int, Field(ge=1, le=10_000, strict=True), BeforeValidator(whole_number)]
# The document carries the URL rule (`domain.webhooks.check_url`, which answers
# `invalid_url`); the model keeps its looser check for its own error.
WakeUrl = Annotated[
    str,
    StringConstraints(max_length=2000, pattern=r"^[hH][tT][tT][pP][sS]?://"),
    WithJsonSchema({"type": "string", "maxLength": 2000, "pattern": URL_PATTERN}),
]
STATUS_DOC = "Availability; null or absent leaves it as it is (a new agent starts ready)"


class AgentRegister(Request):
    id: AgentId | None = Field(
        None, description="Defaults to the caller's X-Agent-ID; no '/' (ids appear in paths)"
    )
    capabilities: list[Tag] | Weights | None = Field(
        None, description="Tags, or tags with weights in (0, 1]"
    )
    owner: Id | None = None
    max_concurrent: MaxConcurrent | None = None
    room: Id | None = None
    wake_url: WakeUrl | None = None
    dispatch_model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Short | None = None
    status: SettableStatus | None = Field(None, description=STATUS_DOC)


class AgentPatch(Request):
    capabilities: list[Tag] | Weights | None = None
    owner: Id | None = None
    max_concurrent: MaxConcurrent | None = None
    room: Id | None = None
    wake_url: WakeUrl | None = None
    dispatch_model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Short | None = None
    status: SettableStatus | None = Field(None, description=STATUS_DOC)


class HeartbeatBody(Request):
    status: Literal["ready", "sleeping", "busy", "degraded"] | None = None


class AgentOut(BaseModel):
    id: str
    capabilities: dict[str, float]
    status: AgentStatus
    owner: str | None
    max_concurrent: int | None
    room: str | None
    wake_url: str | None
    dispatch_model: str | None
    description: str | None
    draining: bool
    active_tasks: int | None = None
    last_heartbeat_at: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, a: Agent, active: int | None = None) -> AgentOut:
        return cls(
            id=a.id,
            capabilities=dict(a.capabilities),
            status=a.status,
            owner=a.owner,
            max_concurrent=a.max_concurrent,
            room=a.room,
            wake_url=a.wake_url,
            dispatch_model=a.dispatch_model,
            description=a.description,
            draining=a.drained,
            active_tasks=active,
            last_heartbeat_at=opt_isoformat(a.last_heartbeat_at),
            created_at=isoformat(a.created_at),
            updated_at=isoformat(a.updated_at),
        )


class AgentRegistered(BaseModel):
    agent: AgentOut
    token: str | None = Field(None, description="Returned once, on first registration")


class AgentList(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class AgentRemoved(BaseModel):
    id: str
    requeued: list[str]
