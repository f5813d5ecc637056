"""The storage interface. Both engines (SQLite, PostgreSQL) implement `Store`.

Writes are expressed as a list of operations committed atomically by `Store.commit`. Every
update of a task or an agent names the version it was computed from; if the row has moved
on, the whole commit is rolled back with `ConcurrentUpdate` and the caller recomputes. This
is the ownership check on every write: a transition computed from a stale read never lands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from dispatchd.domain.lifecycle import AttemptPatch
from dispatchd.domain.models import (
    Agent,
    AgentStatus,
    Attempt,
    Comment,
    Event,
    Priority,
    ProgressEntry,
    Review,
    Task,
    TaskDetail,
    TaskStatus,
    record,
)
from dispatchd.domain.notifications import Digest, Notification
from dispatchd.domain.webhooks import Advance, Delivery, DeliveryStatus, Head, Outcome, Webhook
from dispatchd.jobs import JobStatus
from dispatchd.store.base_costs import AddCost as AddCost
from dispatchd.store.base_costs import CostReads
from dispatchd.store.base_costs import CostTotal as CostTotal
from dispatchd.store.base_schedules import InsertFire as InsertFire
from dispatchd.store.base_schedules import InsertSchedule as InsertSchedule
from dispatchd.store.base_schedules import ScheduleReads
from dispatchd.store.base_schedules import UpdateSchedule as UpdateSchedule
from dispatchd.store.lease import Lease as Lease
from dispatchd.store.lease import LocalLease as LocalLease
from dispatchd.store.readers import ReaderStore
from dispatchd.store.rooms import DeleteRoom, InsertRoom, RequireRoom, RoomStore, UpdateRoom

# --- write operations -----------------------------------------------------------------


@record
class InsertTask:
    """Insert a new task, with an edge to each task it depends on."""

    task: Task


@record
class UpdateTask:
    """Write `task` if the stored row is still at `task.version - 1`, which was `previous`.

    `previous_assignee` is who held it before: when the task leaves that agent's hands the
    store lowers the agent's load in the same commit (and raises the new holder's).
    `before` is the task as it was read at that version: then only the columns that differ
    from it are written (the version check is the same); without it, every column.
    """

    task: Task
    previous: TaskStatus
    previous_assignee: str | None = None
    # How it is written, not what: left out of equality (the row is the same either way).
    before: Task | None = field(default=None, compare=False)


@record
class TouchTask:
    """A child is being created against this unfinished task: count it in `dependents` and
    bump the version if it is still at `version`, so the write conflicts with a concurrent
    transition of the parent (which then re-reads and sees the child)."""

    task_id: str
    version: int


@record
class TakeSlot:
    """Reserve `count` of an agent's slots for tasks being handed to it in this commit.

    Fails the commit with `AgentUnavailable` unless the agent exists, is not drained, not
    offline or degraded, and has room for `count` more tasks besides those it holds and
    those already given to it earlier in this commit. Stamps `last_assigned_at`. On
    PostgreSQL it locks the agent row, so two replicas never fill the same slot; a commit
    that hands out several tasks takes its slots first, in agent id order, so that two
    such commits never wait on each other's rows in opposite orders.
    """

    agent_id: str
    limit: int
    at: datetime
    # False when availability comes from an external service rather than the agent row.
    check_status: bool = True
    count: int = 1


@record
class AppendEvent:
    event: Event


@record
class SaveAttempt:
    """Insert a new attempt record."""

    attempt: Attempt
    new: bool = True


# Update an attempt record; fields left None keep their stored value. The domain's own
# record, applied as it is.
PatchAttempt = AttemptPatch


@dataclass(frozen=True, slots=True)
class AppendProgress:
    entry: ProgressEntry


@dataclass(frozen=True, slots=True)
class AppendReview:
    """Record a verdict on a task's work (its `reviews`)."""

    review: Review


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
    """Remove an agent at `version` that holds no task any more (its tasks are requeued
    earlier in the same commit). Fails with `ConcurrentUpdate` otherwise: a task handed to
    it meanwhile must not be left with an assignee that no longer exists."""

    agent_id: str
    version: int


@dataclass(frozen=True, slots=True)
class RenewLeases:
    """Extend the lease of every running task of an agent (heartbeat); a task waiting for
    input has no lease until its answer arrives.

    Bumps each task's version, so that a lease sweep computed before the renewal cannot land.
    """

    agent_id: str
    until: datetime


@dataclass(frozen=True, slots=True)
class SaveCursor:
    """Record that the reader `name` has handled the event log up to `last_event_id`;
    committed with the reader's own writes, so that it resumes exactly there."""

    name: str
    last_event_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class AdvanceCursor:
    """Move the cursor `name` from `expected` (None: it does not exist yet) to
    `last_event_id`; `ConcurrentUpdate` when it is no longer at `expected`, so that two
    writers reading from the same position never both commit what they derived from it.
    Put it first in its commit: on PostgreSQL it locks the cursor row for the rest of the
    transaction, which serialises that reader's writers."""

    name: str
    expected: int | None
    last_event_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class InsertNotification:
    """Add a finished notification; the store gives it the next id."""

    notification: Notification


@dataclass(frozen=True, slots=True)
class SaveDigest:
    """Write the open notification digest, or remove it (`digest` None)."""

    digest: Digest | None
    at: datetime


Op = (
    InsertTask
    | UpdateTask
    | TouchTask
    | TakeSlot
    | AppendEvent
    | SaveAttempt
    | PatchAttempt
    | AppendProgress
    | AppendReview
    | AddCost
    | AppendComment
    | InsertAgent
    | UpdateAgent
    | DeleteAgent
    | RenewLeases
    | SaveCursor
    | AdvanceCursor
    | InsertNotification
    | SaveDigest
    | InsertRoom
    | UpdateRoom
    | DeleteRoom
    | RequireRoom
    | InsertSchedule
    | UpdateSchedule
    | InsertFire
)

# The cursor under which retention records the last event id it deleted.
RETENTION_CURSOR = "retention"


@dataclass(frozen=True, slots=True)
class Pruned:
    events: int = 0
    tasks: int = 0
    notifications: int = 0


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
    # The review tasks of this task.
    review_of: str | None = None


@dataclass(frozen=True, slots=True)
class AgentFilter:
    status: Sequence[AgentStatus] = ()
    capability: str | None = None
    owner: str | None = None
    room: str | None = None
    # Only agents last heard from (heartbeat or claim) before this time.
    heard_before: datetime | None = None
    # Only agents holding no task.
    idle: bool = False


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


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What `GET /api/v1/stats` is computed from."""

    # Unfinished tasks by (state, priority).
    open_by_state_priority: Mapping[tuple[str, str], int]
    oldest_pending_at: datetime | None
    # Tasks that finished since the window's start, newest first (bounded):
    # (created_at, started_at, finished_at, status).
    finished: Sequence[tuple[datetime, datetime | None, datetime, str]]
    # Every task finished since each window's start, by window name and final state.
    finished_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClaimQuery:
    """The pending tasks an agent may take: capable, owner-compatible, of its room or of
    none (`room`: the agent's), ready, in queue order.

    `capabilities` are the agent's tags (a task qualifies when it requires a subset of
    them); with `owner_filter` a task with an owner qualifies only for an agent of the same
    owner. `limit` bounds how many rows are read (and locked, for a claim).
    """

    agent_id: str
    capabilities: Sequence[str]
    owner: str | None
    owner_filter: bool
    now: datetime
    limit: int
    room: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimView:
    """What a claim sees inside its transaction: the agent (None if unknown), its tasks in
    `assigned` waiting to start, and the pending tasks it qualifies for."""

    agent: Agent | None
    assigned: list[Task]
    candidates: list[Task]


ClaimPlan = Callable[[ClaimView], Sequence["Op"]]
CommitListener = Callable[[list[Event]], None]
# Told the writes of every commit with its events (before the commit's `CommitListener`s).
WriteListener = Callable[[Sequence["Op"], list[Event]], None]


@dataclass(frozen=True, slots=True)
class Due:
    """Deadlines that have passed, by kind (see `Store.due`)."""

    timed_out: list[Task] = field(default_factory=list)
    lease_lost: list[Task] = field(default_factory=list)
    not_started: list[Task] = field(default_factory=list)
    ready: list[Task] = field(default_factory=list)
    run_at: list[Task] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(
            len(x)
            for x in (self.timed_out, self.lease_lost, self.not_started, self.ready, self.run_at)
        )


class Store(RoomStore, ScheduleReads, ReaderStore, CostReads, Protocol):
    """Persistence for tasks, agents, attempts, progress, comments and the event log;
    rooms in `store.rooms`, schedules in `store.base_schedules`, the cost ledger in
    `store.base_costs`."""

    dialect: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; return their versions."""
        ...

    async def ping(self) -> None:
        """Raise `StoreError` when the database cannot be reached."""
        ...

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` with the events of every commit made through this store."""
        ...

    def on_written(self, listener: WriteListener) -> None:
        """Call `listener` with the writes and the events of every commit made through
        this store that appended events, before the `on_commit` listeners are told."""
        ...

    async def watch(self, advanced: Callable[[int], None], job: JobStatus | None = None) -> None:
        """Call `advanced(last_event_id)` when another process commits; runs until
        cancelled (a no-op wait where no other process writes). `job` is told while the
        listener is lost and when it is back."""
        ...

    def lease(self, name: str, *, check_s: float) -> Lease:
        """The lease on the role `name`. On PostgreSQL a session advisory lock on a
        connection of its own: the database releases it the moment that connection ends, so
        a replica that dies hands the role over without a timeout to wait out; the holder
        checks its connection every `check_s` and reports the lease lost when it is gone
        (for a moment two replicas may then act: the roles tolerate that). On SQLite one
        process owns the file, so the lease is always held."""
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

    async def reviews(self, task_id: str) -> list[Review]:
        """The verdicts on a task's work, oldest first."""
        ...

    async def open_reviews(self, task_id: str) -> list[Task]:
        """The unfinished review tasks (`kind` review) of the task `task_id`."""
        ...

    async def active_tasks_of(self, agent_id: str) -> list[Task]: ...

    async def get_agent(self, agent_id: str) -> Agent | None: ...

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None: ...

    async def list_agents(
        self, flt: AgentFilter, *, limit: int, cursor: str | None
    ) -> Page[AgentLoad]: ...

    async def counts(self) -> Counts: ...

    async def queue_stats(
        self, since: datetime, limit: int, windows: Mapping[str, datetime] | None = None
    ) -> QueueStats:
        """Unfinished tasks by state and priority, the oldest pending task's creation, up
        to `limit` tasks finished since `since` (newest first), and how many tasks finished
        in each of `windows` (name → start) by final state."""
        ...

    async def events_for_task(self, task_id: str) -> list[Event]: ...

    async def read_events(self, *, after: int, limit: int) -> list[Event]: ...

    async def last_event_id(self) -> int: ...

    async def get_cursor(self, name: str) -> int | None:
        """Where the reader `name` has got to (`SaveCursor`); None if it never saved one."""
        ...

    async def prune(
        self, *, events_before: datetime | None, tasks_before: datetime | None, limit: int
    ) -> Pruned:
        """Retention, one batch: delete up to `limit` of the oldest events created before
        `events_before` (a prefix of the log: it stops at the first newer one) and record
        the last deleted id under `RETENTION_CURSOR`, and up to `limit` notifications created
        before the same time; and up to `limit` finished tasks
        (completed, failed, cancelled, timed out) that finished before `tasks_before`, with
        their attempts, progress, comments and dependency edges. One transaction."""
        ...

    # --- assignment -----------------------------------------------------------------------

    async def get_agents(self, agent_ids: Sequence[str]) -> list[Agent]: ...

    async def all_agents(self) -> list[Agent]: ...

    async def claimable(self, query: ClaimQuery) -> list[Task]:
        """The pending tasks `query` qualifies for, in queue order, without locking them."""
        ...

    async def claim(self, query: ClaimQuery, plan: ClaimPlan) -> list[Event]:
        """In one transaction: lock the agent and what it may take, let `plan` (pure, fast)
        turn that view into writes, apply them. Rows another claim holds are skipped."""
        ...

    async def children(self, parent_id: str) -> list[Task]:
        """The blocked tasks that depend on `parent_id`."""
        ...

    async def due(self, now: datetime, since: datetime, limit: int) -> Due:
        """Tasks whose deadline has passed: running tasks past `deadline_at` (timed out) or
        past their lease (lost), assigned tasks not started by their lease, pending tasks
        whose backoff ended in `(since, now]`, and blocked tasks whose `run_at` came (at
        any time before `now`: they stay due until unblocked) and whose parents are done."""
        ...

    async def next_deadline(self, since: datetime) -> datetime | None:
        """The earliest deadline `due` would act on (or schedule fire time), from the indexes."""
        ...

    # --- notifications (docs/events.md#notifications) -------------------------------------

    async def open_digest(self) -> Digest | None:
        """The notification digest still collecting items (`SaveDigest`), if any."""
        ...

    async def acknowledge_notifications(
        self,
        *,
        ids: Sequence[int] | None = None,
        up_to: int | None = None,
        by: str,
        at: datetime,
    ) -> int:
        """Mark as acknowledged the unacknowledged notifications among `ids`, or all of
        them up to id `up_to`; how many were marked."""
        ...

    # --- webhooks (docs/webhooks.md) ------------------------------------------------------

    async def create_webhook(self, webhook: Webhook) -> None:
        """Insert a webhook; `DuplicateKey` when its id exists."""
        ...

    async def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> Page[Webhook]:
        """Webhooks by id."""
        ...

    async def active_webhooks(self) -> list[Webhook]: ...

    async def update_webhook(
        self, webhook: Webhook, *, reset_breaker: bool = False, last_event_id: int | None = None
    ) -> None:
        """Write a webhook's settings if the row is still at `webhook.version - 1`, else
        `ConcurrentUpdate`. In the same transaction: an inactive webhook's pending
        deliveries are abandoned, `reset_breaker` closes its circuit and `last_event_id`
        moves its cursor. The dispatcher's columns are otherwise left as they are."""
        ...

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Delete a webhook and its deliveries; False if there was none."""
        ...

    async def enqueue_deliveries(self, advances: Sequence[Advance]) -> int:
        """In one transaction, for each active webhook whose cursor is behind the advance:
        insert the deliveries for events past its cursor and move the cursor. A webhook
        gone, switched off or already further along is left alone, so replicas reading the
        same events write each delivery once. Returns how many deliveries were written."""
        ...

    async def delivery_heads(self) -> list[Head]:
        """Each active webhook with its oldest pending delivery, if it has one."""
        ...

    async def claim_delivery(
        self, delivery_id: str, attempt: int, *, until: datetime, now: datetime
    ) -> Delivery | None:
        """Start the next attempt of a pending delivery still at `attempt`: count it and
        hold the delivery until `until`. None when someone else started it first."""
        ...

    async def record_delivery(self, outcome: Outcome) -> bool:
        """Write an attempt's outcome if the delivery is still pending under the attempt
        it was claimed with, and move the webhook's circuit breaker; one transaction.
        False (nothing written) when the delivery moved on meanwhile."""
        ...

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        """A webhook's deliveries, newest event first."""
        ...

    async def prune_deliveries(self, *, before: datetime, limit: int) -> int:
        """Delete up to `limit` finished deliveries last changed before `before`."""
        ...
