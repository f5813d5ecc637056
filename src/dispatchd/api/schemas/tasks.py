"""The task resource: what a requester sends to create, change and discuss a task, and
the task as the API shows it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from dispatchd.api.schemas.common import (
    Flag,
    Id,
    Request,
    Short,
    Tag,
    Text,
    Time,
    Title,
    built,
    exactly_one,
    opt_isoformat,
    whole_number,
)
from dispatchd.api.schemas.costs import CostOut, Usd
from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import (
    Attempt,
    Comment,
    Priority,
    ProgressEntry,
    Review,
    ReviewerKind,
    Task,
    TaskDetail,
    TaskKind,
    TaskSpec,
    TaskStatus,
)
from dispatchd.errors import ValidationFailed

Timeout = Annotated[int, Field(ge=1, le=7 * 24 * 3600, strict=True), BeforeValidator(whole_number)]
InputTimeout = Annotated[
    int, Field(ge=1, le=30 * 24 * 3600, strict=True), BeforeValidator(whole_number)
]
MaxAttempts = Annotated[int, Field(ge=1, le=100, strict=True), BeforeValidator(whole_number)]


class ReviewerRef(Request):
    """Who reviews a task's work: one agent (`agent`), or any agent with a capability
    (`capability`); exactly one of the two."""

    model_config = ConfigDict(json_schema_extra=exactly_one(agent="string", capability="string"))
    agent: Id | None = None
    capability: Tag | None = None

    @model_validator(mode="after")
    def _one(self) -> ReviewerRef:
        if (self.agent is None) == (self.capability is None):
            raise ValueError("give exactly one of agent and capability")
        return self


class ReviewerOut(BaseModel):
    agent: str | None = None
    capability: str | None = None


class TaskCreate(Request):
    # A reviewer needs `review: true` (the engine answers `reviewer_without_review`).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"not": {"required": ["reviewer"]}},
                {"properties": {"reviewer": {"type": "null"}}},
                {"required": ["review"], "properties": {"review": {"const": True}}},
            ]
        }
    )

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
    run_at: Time | None = None
    due_at: Time | None = None
    timeout_s: Timeout | None = None
    input_timeout_s: InputTimeout | None = Field(
        None,
        description="How long a question may wait for its answer before the task fails "
        "(input_timeout); default from assignment.input_timeout_ms, none by default",
    )
    max_attempts: MaxAttempts | None = None
    review: Flag = False
    reviewer: Id | ReviewerRef | None = Field(
        None,
        description='An agent id ("aegis", the same as {"agent": "aegis"}) or '
        '{"capability": "review"}; needs `review: true` (docs/review.md)',
    )
    escalate_to: Tag | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    labels: list[Tag] = Field(default_factory=list, max_length=50)
    context: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    max_cost_usd: Usd | None = Field(
        None, description="A budget: the attempt that crosses it is stopped, the task fails"
    )

    def reviewer_of(self) -> tuple[str | None, ReviewerKind | None]:
        """The reviewer named and what it names."""
        match self.reviewer:
            case None:
                return None, None
            case str(agent) | ReviewerRef(agent=str(agent)):
                return agent, ReviewerKind.AGENT
            case ReviewerRef(capability=str(tag)):
                return tag, ReviewerKind.CAPABILITY
        raise AssertionError(self.reviewer)  # pragma: no cover - the validator ensures one

    def spec(self, key: str | None = None) -> TaskSpec:
        """The task asked for; `key` is the Idempotency-Key header, if any."""
        if key is not None and self.idempotency_key is not None and key != self.idempotency_key:
            raise ValidationFailed(
                "Idempotency-Key header and idempotency_key field disagree",
                code="idempotency_key_mismatch",
            )
        reviewer, reviewer_kind = self.reviewer_of()
        return TaskSpec(
            title=self.title,
            prompt=self.prompt or self.description or "",
            capabilities=self.capabilities,
            priority=self.priority,
            owner=self.owner,
            scope=self.scope,
            assigned_to=self.assigned_to,
            depends_on=self.depends_on,
            run_at=self.run_at,
            due_at=self.due_at,
            timeout_s=self.timeout_s,
            input_timeout_s=self.input_timeout_s,
            max_attempts=self.max_attempts,
            review=self.review,
            reviewer=reviewer,
            reviewer_kind=reviewer_kind,
            escalate_to=self.escalate_to,
            model=self.model,
            labels=self.labels,
            context=self.context,
            idempotency_key=key or self.idempotency_key,
            max_cost_usd=self.max_cost_usd,
        )


class TaskBatch(Request):
    tasks: list[TaskCreate] = Field(min_length=1, max_length=1000)


class TaskPatch(Request):
    # At least one of the three, not null (the document says so: a null is no change).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [k], "properties": {k: {"not": {"type": "null"}}}}
                for k in ("status", "context", "priority")
            ]
        }
    )

    status: Literal["cancelled"] | None = Field(None, description="Set to cancel the task")
    reason: Short | None = None
    context: dict[str, Any] | None = Field(None, description="JSON merge patch (RFC 7386)")
    priority: Priority | None = None


class InputBody(Request):
    answer: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class CommentBody(Request):
    body: Annotated[str, StringConstraints(min_length=1, max_length=50_000)]


class ReviewBody(Request):
    verdict: Literal["approved", "rejected"]
    feedback: Short | None = None


class ReviewOut(BaseModel):
    """One verdict on a task's work: the `cycle`th review."""

    cycle: int
    reviewer: str
    verdict: str
    feedback: str | None
    review_task_id: str | None
    created_at: str

    @classmethod
    def of(cls, r: Review) -> ReviewOut:
        return cls(
            cycle=r.cycle,
            reviewer=r.reviewer,
            verdict=r.verdict.value,
            feedback=r.feedback,
            review_task_id=r.review_task_id,
            created_at=isoformat(r.created_at),
        )


class AttemptOut(BaseModel):
    number: int
    agent_id: str
    assigned_at: str
    started_at: str | None
    ended_at: str | None
    outcome: str | None
    error: str | None
    cost: CostOut = Field(default_factory=CostOut)

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
            cost=CostOut.of(a.cost),
        )


# OpenAPI tells this model from a webhook delivery's AttemptOut by module path. The
# component keeps the name it had before the schemas became a package, for clients
# generated from it; the models that embed AttemptOut come below, so they take the
# renamed schema.
AttemptOut.__module__ = "dispatchd.api.schemas"
AttemptOut.model_rebuild(force=True)


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
    # The three below have defaults so that the SDK reads a server without costs too.
    error_code: str | None = None
    depends_on: list[str]
    run_at: str | None
    due_at: str | None
    timeout_s: int | None
    input_timeout_s: int | None
    review: bool
    reviewer: ReviewerOut | None
    escalate_to: str | None
    model: str | None
    model_routed: bool
    labels: list[str]
    schedule_id: str | None = Field(None, description="the schedule that fired this task")
    question: str | None
    progress: dict[str, Any] | None
    requeues: int
    review_cycles: int
    escalated: bool
    retry_at: str | None
    lease_expires_at: str | None
    deadline_at: str | None
    run_left_ms: int | None
    started_at: str | None
    finished_at: str | None
    created_at: str
    updated_at: str
    kind: TaskKind = TaskKind.TASK
    review_of: str | None = None
    excluded_agent: str | None = None
    preferred_agent: str | None = None
    cost: CostOut = Field(default_factory=CostOut)
    max_cost_usd: float | None = None

    @classmethod
    def of(cls, t: Task) -> TaskOut:
        progress = (
            {"message": t.progress_message, "percent": t.progress_percent}
            if t.progress_message is not None or t.progress_percent is not None
            else None
        )
        # Built from a stored task, whose fields already have these types: constructed
        # without validating each field again (FastAPI's check of the answer passes an
        # instance through, and the serializer warns about any value of another type).
        return built(
            cls,
            dict(
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
                error_code=t.error_code,
                depends_on=list(t.depends_on),
                run_at=opt_isoformat(t.run_at),
                due_at=opt_isoformat(t.due_at),
                timeout_s=t.timeout_s,
                input_timeout_s=t.input_timeout_s,
                review=t.review,
                reviewer=_reviewer_out(t),
                escalate_to=t.escalate_to,
                model=t.model,
                model_routed=t.model_routed,
                labels=list(t.labels),
                schedule_id=t.schedule_id,
                question=t.question,
                progress=progress,
                requeues=t.requeues,
                review_cycles=t.review_cycles,
                escalated=t.escalated,
                retry_at=opt_isoformat(t.not_before),
                lease_expires_at=opt_isoformat(t.lease_expires_at),
                deadline_at=opt_isoformat(t.deadline_at),
                run_left_ms=t.run_left_ms,
                started_at=opt_isoformat(t.started_at),
                finished_at=opt_isoformat(t.finished_at),
                created_at=isoformat(t.created_at),
                updated_at=isoformat(t.updated_at),
                kind=t.kind,
                review_of=t.review_of,
                excluded_agent=t.excluded_agent,
                preferred_agent=t.preferred_agent,
                cost=CostOut.of(t.cost),
                max_cost_usd=t.max_cost_usd,
            ),
        )


def _reviewer_out(t: Task) -> ReviewerOut | None:
    if t.reviewer is None:
        return None
    if t.reviewer_kind is ReviewerKind.CAPABILITY:
        return ReviewerOut(capability=t.reviewer)
    return ReviewerOut(agent=t.reviewer)


class TaskDetailOut(TaskOut):
    attempts: list[AttemptOut]
    progress_log: list[ProgressOut]
    comments: list[CommentOut]
    reviews: list[ReviewOut] = Field(default_factory=list)

    @classmethod
    def of_detail(cls, d: TaskDetail) -> TaskDetailOut:
        base = TaskOut.of(d.task).model_dump()
        return cls(
            **base,
            attempts=[AttemptOut.of(a) for a in d.attempts],
            progress_log=[ProgressOut.of(p) for p in d.progress],
            comments=[CommentOut.of(c) for c in d.comments],
            reviews=[ReviewOut.of(r) for r in d.reviews],
        )


class TaskList(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


class TaskBatchOut(BaseModel):
    items: list[TaskOut]
