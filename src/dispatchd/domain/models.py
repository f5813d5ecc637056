"""Domain records: frozen dataclasses (the hot ones frozen to the type checker, see
`record`) and string enums, free of I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Self, TypeVar, dataclass_transform

from dispatchd.domain.costs import Cost

JSON = Any
R = TypeVar("R")


class Evolving:
    """`evolve`: a copy with some fields changed, as `dataclasses.replace` makes, at a
    fraction of its cost (every transition evolves its task, often more than once).

    The copy is made by a function generated once per class that copies each field, and
    the changes are then set on it: the records are plain slotted dataclasses at run time
    (see `record`), so the new object, not yet seen by anyone, takes them directly. It
    skips `__init__`, which the records do not extend (no `__post_init__`, every field an
    init field: `tests/unit/test_records.py` checks both).
    """

    __slots__ = ()

    def evolve(self, **changes: Any) -> Self:
        cls = type(self)
        layout = _LAYOUTS.get(cls)
        if layout is None:
            layout = _LAYOUTS[cls] = _layout(cls)
        names, copy = layout
        new: Self = copy(self)
        for name, value in changes.items():
            if name not in names:
                raise TypeError(f"{cls.__name__} has no field {name!r}")
            setattr(new, name, value)
        return new


def _layout(cls: type) -> tuple[frozenset[str], Callable[[Any], Any]]:
    names = [f.name for f in dataclasses.fields(cls)]
    lines = [f"    new.{name} = record.{name}\n" for name in names]
    source = f"def copy(record):\n    new = make(cls)\n{''.join(lines)}    return new\n"
    env: dict[str, Any] = {"make": object.__new__, "cls": cls}
    exec(source, env)  # noqa: S102 - made from the record's own field names
    return frozenset(names), env["copy"]


_LAYOUTS: dict[type, tuple[frozenset[str], Callable[[Any], Any]]] = {}


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[R]) -> type[R]:
    """A record made and remade on every transition (a task, its attempt and events), or
    made per task by a transition or a commit (a spec, a change, an attempt's patch, the
    store's write operations).

    Frozen to the type checker (mypy refuses any assignment to a field) but, at run time,
    a plain slotted dataclass: a frozen one's `__init__` sets each field through
    `object.__setattr__`, which for a task's 55 fields costs ten times as much, and a
    claim builds several tasks per task it takes. Equality and hashing are as a frozen
    dataclass's.
    """
    return dataclass(slots=True, unsafe_hash=True)(cls)


class TaskStatus(StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    ASSIGNED = "assigned"
    RUNNING = "running"
    WAITING_INPUT = "waiting_input"
    REVIEW = "review"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Held by an agent: counts against its capacity and its lease."""
        return self in ACTIVE_STATES


TERMINAL_STATES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)
ACTIVE_STATES = frozenset({TaskStatus.ASSIGNED, TaskStatus.RUNNING, TaskStatus.WAITING_INPUT})


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Higher rank is served first."""
        return _PRIORITY_RANK[self]

    def raised(self) -> Priority:
        order = list(Priority)
        return order[min(order.index(self) + 1, len(order) - 1)]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class AgentStatus(StrEnum):
    READY = "ready"
    SLEEPING = "sleeping"
    BUSY = "busy"
    DEGRADED = "degraded"
    OFFLINE = "offline"


class TaskKind(StrEnum):
    """Work as asked by a requester, or the review of such work (docs/review.md)."""

    TASK = "task"
    REVIEW = "review"


class ReviewerKind(StrEnum):
    """What a task's `reviewer` names: one agent, or any agent with a capability."""

    AGENT = "agent"
    CAPABILITY = "capability"


class Verdict(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class AttemptOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"
    REJECTED = "rejected"


@record
class Task(Evolving):
    id: str
    title: str
    prompt: str
    status: TaskStatus
    priority: Priority
    capabilities: tuple[str, ...]
    requester: str
    created_at: datetime
    updated_at: datetime
    assignee: str | None = None
    assigned_to: str | None = None
    owner: str | None = None
    scope: str | None = None
    attempt: int = 0
    max_attempts: int = 3
    context: Mapping[str, JSON] = field(default_factory=dict)
    result: JSON = None
    summary: str | None = None
    error: str | None = None
    depends_on: tuple[str, ...] = ()
    run_at: datetime | None = None
    due_at: datetime | None = None
    timeout_s: int | None = None
    # How long a question may wait for its answer before the task fails (None: for ever,
    # unless configuration sets a default).
    input_timeout_s: int | None = None
    review: bool = False
    reviewer: str | None = None
    reviewer_kind: ReviewerKind | None = None
    escalate_to: str | None = None
    escalated: bool = False
    model: str | None = None
    # The model was chosen by routing at assignment, not named by the requester: it is
    # cleared when the task goes back to pending, so the next assignment routes again.
    model_routed: bool = False
    labels: tuple[str, ...] = ()
    idempotency_key: str | None = None
    # The schedule that fired this task, if one did (docs/schedules.md).
    schedule_id: str | None = None
    question: str | None = None
    progress_message: str | None = None
    progress_percent: float | None = None
    requeues: int = 0
    review_cycles: int = 0
    kind: TaskKind = TaskKind.TASK
    # For a review task: the task whose work it reviews.
    review_of: str | None = None
    # Never given to this agent (a review task: the agent that did the work; a task with a
    # named reviewer: that reviewer).
    excluded_agent: str | None = None
    # Offered to this agent first while it has room (a rejected task: the agent that did
    # it, so that it resumes its own work with the feedback); cleared at assignment.
    preferred_agent: str | None = None
    # Tasks created depending on this one while it was unfinished (kept by the store).
    dependents: int = 0
    not_before: datetime | None = None
    lease_expires_at: datetime | None = None
    deadline_at: datetime | None = None
    # While the task waits for input: the run time it had left when it asked, in ms. Its
    # run deadline and lease are cleared while it waits, and restored from this.
    run_left_ms: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: int = 1
    # What the task has cost over all its attempts, and its current attempt so far
    # (docs/costs.md); `max_cost_usd` is its budget.
    cost: Cost = field(default_factory=Cost)
    attempt_cost: Cost = field(default_factory=Cost)
    max_cost_usd: float | None = None
    # Why the task failed, as a code, when the reason has one (`budget_exceeded`).
    error_code: str | None = None


@record
class Agent(Evolving):
    id: str
    capabilities: Mapping[str, float]
    status: AgentStatus
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    max_concurrent: int | None = None
    room: str | None = None
    wake_url: str | None = None
    dispatch_model: str | None = None
    description: str | None = None
    drained: bool = False
    token_hash: str | None = None
    last_heartbeat_at: datetime | None = None
    version: int = 1
    # Kept by the store, never written through UpdateAgent: the tasks it holds now and
    # when it was last given one.
    active: int = 0
    last_assigned_at: datetime | None = None


@record
class Attempt(Evolving):
    task_id: str
    number: int
    agent_id: str
    assigned_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = None
    # The highest running total its agent reported.
    cost: Cost = field(default_factory=Cost)


@dataclass(frozen=True, slots=True)
class ProgressEntry:
    task_id: str
    attempt: int
    agent_id: str
    message: str | None
    percent: float | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Comment:
    task_id: str
    author: str
    body: str
    created_at: datetime


@record
class Event(Evolving):
    """A record of something that happened. `id` is the log position, given by the store."""

    type: str
    created_at: datetime
    task_id: str | None = None
    agent_id: str | None = None
    data: Mapping[str, JSON] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Review:
    """One verdict on a task's work: the `cycle`th review of it."""

    task_id: str
    cycle: int
    reviewer: str
    verdict: Verdict
    feedback: str | None
    created_at: datetime
    # The review task that carried it; None for a verdict posted on the task itself.
    review_task_id: str | None = None


@dataclass(frozen=True, slots=True)
class TaskDetail:
    task: Task
    attempts: tuple[Attempt, ...]
    progress: tuple[ProgressEntry, ...]
    comments: tuple[Comment, ...]
    reviews: tuple[Review, ...] = ()


@record
class TaskSpec:
    """What a requester asks for; see SPEC §4 for each field."""

    title: str
    prompt: str = ""
    capabilities: Sequence[str] = ()
    priority: Priority = Priority.MEDIUM
    owner: str | None = None
    scope: str | None = None
    assigned_to: str | None = None
    depends_on: Sequence[str] = ()
    run_at: datetime | None = None
    due_at: datetime | None = None
    timeout_s: int | None = None
    input_timeout_s: int | None = None
    max_attempts: int | None = None
    review: bool = False
    # An agent id, or a capability when `reviewer_kind` says so (docs/review.md).
    reviewer: str | None = None
    reviewer_kind: ReviewerKind | None = None
    escalate_to: str | None = None
    model: str | None = None
    labels: Sequence[str] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    # Set by a schedule's firing only (docs/schedules.md).
    schedule_id: str | None = None
    # A budget: the attempt whose report crosses it is stopped (docs/costs.md).
    max_cost_usd: float | None = None
