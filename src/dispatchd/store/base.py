"""The storage interface. Both engines (SQLite, PostgreSQL) implement `Store`.

Writes are expressed as a list of operations committed atomically by `Store.commit`. Every
update of a task or an agent names the version it was computed from; if the row has moved
on, the whole commit is rolled back with `ConcurrentUpdate` and the caller recomputes. This
is the ownership check on every write: a transition computed from a stale read never lands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from dispatchd.domain.models import (
    Agent,
    AgentStatus,
    Attempt,
    AttemptOutcome,
    Comment,
    Event,
    Priority,
    ProgressEntry,
    Task,
    TaskDetail,
    TaskStatus,
)

# --- write operations -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsertTask:
    task: Task


@dataclass(frozen=True, slots=True)
class UpdateTask:
    """Write `task` if the stored row is still at `task.version - 1`, which was `previous`."""

    task: Task
    previous: TaskStatus


@dataclass(frozen=True, slots=True)
class AppendEvent:
    event: Event


@dataclass(frozen=True, slots=True)
class SaveAttempt:
    """Insert a new attempt record."""

    attempt: Attempt
    new: bool = True


@dataclass(frozen=True, slots=True)
class PatchAttempt:
    """Update an attempt record; fields left None keep their stored value."""

    task_id: str
    number: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AppendProgress:
    entry: ProgressEntry


@dataclass(frozen=True, slots=True)
class AppendComment:
    comment: Comment


@dataclass(frozen=True, slots=True)
class InsertAgent:
    agent: Agent


@dataclass(frozen=True, slots=True)
class UpdateAgent:
    """Write `agent` if the stored row is still at `agent.version - 1`."""

    agent: Agent


@dataclass(frozen=True, slots=True)
class DeleteAgent:
    agent_id: str
    version: int


@dataclass(frozen=True, slots=True)
class RenewLeases:
    """Extend the lease of every running task of an agent (heartbeat)."""

    agent_id: str
    until: datetime


Op = (
    InsertTask
    | UpdateTask
    | AppendEvent
    | SaveAttempt
    | PatchAttempt
    | AppendProgress
    | AppendComment
    | InsertAgent
    | UpdateAgent
    | DeleteAgent
    | RenewLeases
)


# --- queries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: Sequence[TaskStatus] = ()
    requester: str | None = None
    assignee: str | None = None
    scope: str | None = None
    capability: str | None = None
    priority: Sequence[Priority] = ()
    owner: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class AgentFilter:
    status: Sequence[AgentStatus] = ()
    capability: str | None = None
    owner: str | None = None
    room: str | None = None


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class AgentLoad:
    agent: Agent
    active: int


@dataclass(frozen=True, slots=True)
class Counts:
    tasks_by_status: Mapping[str, int] = field(default_factory=dict)
    agents_by_status: Mapping[str, int] = field(default_factory=dict)


class Store(Protocol):
    """Persistence for tasks, agents, attempts, progress, comments and the event log."""

    dialect: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; return their versions."""
        ...

    async def ping(self) -> None:
        """Raise `StoreError` when the database cannot be reached."""
        ...

    async def commit(self, ops: Sequence[Op]) -> list[Event]:
        """Apply `ops` in one transaction; return the appended events with their ids.

        Raises `ConcurrentUpdate` when an update's version no longer matches and
        `DuplicateKey` when an insert meets an existing id or idempotency key; in both
        cases nothing is written.
        """
        ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def get_tasks(self, task_ids: Sequence[str]) -> list[Task]: ...

    async def find_by_idempotency_key(self, requester: str, key: str) -> Task | None: ...

    async def list_tasks(
        self, flt: TaskFilter, *, limit: int, cursor: str | None, descending: bool = True
    ) -> Page[Task]: ...

    async def task_detail(self, task_id: str) -> TaskDetail | None: ...

    async def attempts(self, task_id: str) -> list[Attempt]: ...

    async def active_tasks_of(self, agent_id: str) -> list[Task]: ...

    async def get_agent(self, agent_id: str) -> Agent | None: ...

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None: ...

    async def list_agents(
        self, flt: AgentFilter, *, limit: int, cursor: str | None
    ) -> Page[AgentLoad]: ...

    async def counts(self) -> Counts: ...

    async def events_for_task(self, task_id: str) -> list[Event]: ...

    async def read_events(self, *, after: int, limit: int) -> list[Event]: ...
