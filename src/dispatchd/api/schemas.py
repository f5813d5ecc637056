"""Request and response models of API v1. Requests forbid unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import (
    Agent,
    AgentStatus,
    Attempt,
    Comment,
    Event,
    Priority,
    ProgressEntry,
    Task,
    TaskDetail,
    TaskStatus,
)
from dispatchd.engine.explain import Explanation
from dispatchd.store.base import AgentLoad

ID_PATTERN = r"^[A-Za-z0-9#@][A-Za-z0-9._:@#/+-]*$"

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\s,]+$")]
Title = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Text = Annotated[str, StringConstraints(max_length=200_000)]
Short = Annotated[str, StringConstraints(max_length=2_000)]
Weight = Annotated[float, Field(gt=0, le=1)]
Timestamp = Annotated[datetime, Field(json_schema_extra={"format": "date-time"})]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- tasks ------------------------------------------------------------------------------


class TaskCreate(Request):
    title: Title
    prompt: Text = ""
    description: Text | None = Field(
        None, description="Alias of prompt, as Mission Control names it"
    )
    capabilities: list[Tag] = Field(default_factory=list, max_length=32)
    priority: Priority = Priority.MEDIUM
    owner: Id | None = None
    scope: Id | None = Field(None, description="The room the task belongs to")
    assigned_to: Id | None = None
    depends_on: list[Id] = Field(default_factory=list, max_length=100)
    run_at: AwareDatetime | None = None
    due_at: AwareDatetime | None = None
    timeout_s: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    max_attempts: int | None = Field(None, ge=1, le=100)
    review: bool = False
    reviewer: Id | None = None
    escalate_to: Tag | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    labels: list[Tag] = Field(default_factory=list, max_length=50)
    context: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class TaskBatch(Request):
    tasks: list[TaskCreate] = Field(min_length=1, max_length=1000)


class TaskPatch(Request):
    status: Literal["cancelled"] | None = Field(None, description="Set to cancel the task")
    reason: Short | None = None
    context: dict[str, Any] | None = Field(None, description="JSON merge patch (RFC 7386)")
    priority: Priority | None = None


class AttemptFence(Request):
    attempt: int | None = Field(
        None, ge=1, description="The attempt the worker is on; a stale one is refused with 409"
    )


class StartBody(AttemptFence):
    pass


class ProgressBody(AttemptFence):
    message: Short | None = None
    percent: float | None = Field(None, ge=0, le=100)


class CompleteBody(AttemptFence):
    result: Any = None
    summary: Short | None = None


class CompleteItem(CompleteBody):
    task_id: Id


class CompleteBatch(Request):
    items: list[CompleteItem] = Field(min_length=1, max_length=500)


class FailBody(AttemptFence):
    error: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
    retryable: bool = True


class InputRequestBody(AttemptFence):
    question: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class InputBody(Request):
    answer: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class CommentBody(Request):
    body: Annotated[str, StringConstraints(min_length=1, max_length=50_000)]


class ReviewBody(Request):
    verdict: Literal["approved", "rejected"]
    feedback: Short | None = None


class AttemptOut(BaseModel):
    number: int
    agent_id: str
    assigned_at: str
    started_at: str | None
    ended_at: str | None
    outcome: str | None
    error: str | None

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(
            number=a.number,
            agent_id=a.agent_id,
            assigned_at=isoformat(a.assigned_at),
            started_at=opt_isoformat(a.started_at),
            ended_at=opt_isoformat(a.ended_at),
            outcome=a.outcome.value if a.outcome else None,
            error=a.error,
        )


class ProgressOut(BaseModel):
    attempt: int
    agent_id: str
    message: str | None
    percent: float | None
    created_at: str

    @classmethod
    def of(cls, p: ProgressEntry) -> ProgressOut:
        return cls(
            attempt=p.attempt,
            agent_id=p.agent_id,
            message=p.message,
            percent=p.percent,
            created_at=isoformat(p.created_at),
        )


class CommentOut(BaseModel):
    task_id: str
    author: str
    body: str
    created_at: str

    @classmethod
    def of(cls, c: Comment) -> CommentOut:
        return cls(
            task_id=c.task_id, author=c.author, body=c.body, created_at=isoformat(c.created_at)
        )


class TaskOut(BaseModel):
    id: str
    title: str
    prompt: str
    status: TaskStatus
    priority: Priority
    capabilities: list[str]
    requester: str
    assignee: str | None
    assigned_to: str | None
    owner: str | None
    scope: str | None
    attempt: int
    max_attempts: int
    context: dict[str, Any]
    result: Any
    summary: str | None
    error: str | None
    depends_on: list[str]
    run_at: str | None
    due_at: str | None
    timeout_s: int | None
    review: bool
    reviewer: str | None
    escalate_to: str | None
    model: str | None
    model_routed: bool
    labels: list[str]
    question: str | None
    progress: dict[str, Any] | None
    requeues: int
    review_cycles: int
    escalated: bool
    retry_at: str | None
    lease_expires_at: str | None
    deadline_at: str | None
    started_at: str | None
    finished_at: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, t: Task) -> TaskOut:
        progress = (
            {"message": t.progress_message, "percent": t.progress_percent}
            if t.progress_message is not None or t.progress_percent is not None
            else None
        )
        return cls(
            id=t.id,
            title=t.title,
            prompt=t.prompt,
            status=t.status,
            priority=t.priority,
            capabilities=list(t.capabilities),
            requester=t.requester,
            assignee=t.assignee,
            assigned_to=t.assigned_to,
            owner=t.owner,
            scope=t.scope,
            attempt=t.attempt,
            max_attempts=t.max_attempts,
            context=dict(t.context),
            result=t.result,
            summary=t.summary,
            error=t.error,
            depends_on=list(t.depends_on),
            run_at=opt_isoformat(t.run_at),
            due_at=opt_isoformat(t.due_at),
            timeout_s=t.timeout_s,
            review=t.review,
            reviewer=t.reviewer,
            escalate_to=t.escalate_to,
            model=t.model,
            model_routed=t.model_routed,
            labels=list(t.labels),
            question=t.question,
            progress=progress,
            requeues=t.requeues,
            review_cycles=t.review_cycles,
            escalated=t.escalated,
            retry_at=opt_isoformat(t.not_before),
            lease_expires_at=opt_isoformat(t.lease_expires_at),
            deadline_at=opt_isoformat(t.deadline_at),
            started_at=opt_isoformat(t.started_at),
            finished_at=opt_isoformat(t.finished_at),
            created_at=isoformat(t.created_at),
            updated_at=isoformat(t.updated_at),
        )


class TaskDetailOut(TaskOut):
    attempts: list[AttemptOut]
    progress_log: list[ProgressOut]
    comments: list[CommentOut]

    @classmethod
    def of_detail(cls, d: TaskDetail) -> TaskDetailOut:
        base = TaskOut.of(d.task).model_dump()
        return cls(
            **base,
            attempts=[AttemptOut.of(a) for a in d.attempts],
            progress_log=[ProgressOut.of(p) for p in d.progress],
            comments=[CommentOut.of(c) for c in d.comments],
        )


class TaskList(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


class TaskBatchOut(BaseModel):
    items: list[TaskOut]


# --- agents -----------------------------------------------------------------------------


class ItemError(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class CompleteItemOut(BaseModel):
    task_id: str
    ok: bool
    task: TaskOut | None = None
    error: ItemError | None = None


class CompleteBatchOut(BaseModel):
    items: list[CompleteItemOut]


class ClaimBody(Request):
    max_tasks: int = Field(1, ge=1, le=100)
    wait_s: float = Field(0, ge=0, le=60)
    # Claim on behalf of another agent (admin only); by default the caller claims.
    agent_id: Id | None = None
    capabilities: list[Tag] | None = Field(
        None,
        max_length=32,
        description="Take pending tasks for these of the agent's tags only (its tasks "
        "already assigned to it come regardless)",
    )


class ClaimOut(BaseModel):
    tasks: list[TaskOut]
    reason: Literal["at_capacity", "no_tasks_available", "draining", "degraded"] | None


class QueueOut(BaseModel):
    task: TaskOut | None
    reason: Literal["at_capacity", "no_tasks_available", "draining", "degraded"] | None


class CandidateOut(BaseModel):
    agent_id: str
    score: float
    capability_match: float
    availability: float
    load: int
    limit: int
    last_assigned_at: str | None


class ExcludedOut(BaseModel):
    agent_id: str
    reason: str
    detail: str


class RouteOut(BaseModel):
    model: str | None
    tier: str | None
    reason: str


class ExplainOut(BaseModel):
    """Every agent considered for the task now: candidates best first, then the excluded."""

    task_id: str
    status: TaskStatus
    assignee: str | None
    capabilities: list[str]
    priority: Priority
    owner: str | None
    owner_filter: bool
    waiting: str | None
    best: str | None
    candidates: list[CandidateOut]
    excluded: list[ExcludedOut]
    model: RouteOut
    at: str

    @classmethod
    def of(cls, e: Explanation) -> ExplainOut:
        t = e.task
        return cls(
            task_id=t.id,
            status=t.status,
            assignee=t.assignee,
            capabilities=list(t.capabilities),
            priority=t.priority,
            owner=t.owner,
            owner_filter=e.owner_filter,
            waiting=e.waiting,
            best=e.ranking.best.agent_id if e.ranking.best else None,
            candidates=[
                CandidateOut(
                    agent_id=c.agent_id,
                    score=round(c.score, 6),
                    capability_match=round(c.capability_match, 6),
                    availability=c.availability,
                    load=c.load,
                    limit=c.limit,
                    last_assigned_at=opt_isoformat(c.last_assigned_at),
                )
                for c in e.ranking.candidates
            ],
            excluded=[
                ExcludedOut(agent_id=x.agent_id, reason=x.reason.value, detail=x.detail)
                for x in e.ranking.excluded
            ],
            model=RouteOut(model=e.route.model, tier=e.route.tier, reason=e.route.reason),
            at=isoformat(e.at),
        )


class AgentRegister(Request):
    id: Id | None = Field(None, description="Defaults to the caller's X-Agent-ID")
    capabilities: list[Tag] | dict[Tag, Weight] | None = Field(
        None, description="Tags, or tags with weights in (0, 1]"
    )
    owner: Id | None = None
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    room: Id | None = None
    wake_url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://")] | None = (
        None
    )
    dispatch_model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Short | None = None
    status: AgentStatus | None = None


class AgentPatch(Request):
    capabilities: list[Tag] | dict[Tag, Weight] | None = None
    owner: Id | None = None
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    room: Id | None = None
    wake_url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://")] | None = (
        None
    )
    dispatch_model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Short | None = None
    status: AgentStatus | None = None


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

    @classmethod
    def of_load(cls, load: AgentLoad) -> AgentOut:
        return cls.of(load.agent, load.active)


class AgentRegistered(BaseModel):
    agent: AgentOut
    token: str | None = Field(None, description="Returned once, on first registration")


class AgentList(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class AgentRemoved(BaseModel):
    id: str
    requeued: list[str]


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


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorOut(BaseModel):
    error: ErrorBody


def weights(capabilities: list[str] | dict[str, float] | None) -> dict[str, float] | None:
    if capabilities is None:
        return None
    if isinstance(capabilities, list):
        return dict.fromkeys(capabilities, 1.0)
    return dict(capabilities)


def opt_isoformat(value: datetime | None) -> str | None:
    return isoformat(value) if value else None
