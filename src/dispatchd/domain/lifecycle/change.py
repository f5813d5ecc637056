"""What an action returns, a `Change`, and the steps every action takes to build one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dispatchd.domain.costs import Charge, Cost
from dispatchd.domain.lifecycle.table import Action, check
from dispatchd.domain.models import (
    Attempt,
    AttemptOutcome,
    Event,
    ProgressEntry,
    Review,
    Task,
    TaskStatus,
    record,
)


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of the lifecycle, taken from configuration."""

    lease: timedelta = timedelta(seconds=60)
    default_timeout: timedelta = timedelta(seconds=300)
    backoff_base: timedelta = timedelta(seconds=1)
    backoff_cap: timedelta = timedelta(seconds=300)
    max_lost_requeues: int = 5
    max_review_cycles: int = 3
    # How long an assigned task may wait to be started before it goes elsewhere.
    wake_timeout: timedelta = timedelta(seconds=30)
    # How long a question waits for its answer when the task names no limit (None: for ever).
    input_timeout: timedelta | None = None


@record
class AttemptPatch:
    """What a transition changes on an attempt record; fields left None keep their stored
    value. The store applies it as it is (`store.base.PatchAttempt`)."""

    task_id: str
    number: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = None
    cost: Cost | None = None


@record
class Change:
    """One transition: what to persist, atomically."""

    task: Task
    event: Event
    new_attempt: Attempt | None = None
    attempt_patch: AttemptPatch | None = None
    progress: ProgressEntry | None = None
    # A verdict on the task's work, recorded with the transition that applies it.
    review: Review | None = None
    # What a cost report added, for the ledger of its requester, agent and day.
    charge: Charge | None = None


def new_event(kind: str, task: Task, now: datetime, agent: str | None, **data: Any) -> Event:
    return Event(type=kind, created_at=now, task_id=task.id, agent_id=agent, data=data)


def move(task: Task, action: Action, target: TaskStatus, now: datetime, **changes: Any) -> Task:
    rule = check(task, action)
    assert target in rule.targets, (action, target)
    if target is TaskStatus.PENDING and task.model_routed:
        # Back in the queue: the next agent may route to another model.
        changes = {"model": None, "model_routed": False, **changes}
    if "error" in changes and "error_code" not in changes:
        # A new error text replaces the code of the old one.
        changes["error_code"] = None
    return task.evolve(status=target, updated_at=now, version=task.version + 1, **changes)


def timeout_of(task: Task, policy: Policy) -> timedelta:
    if task.timeout_s is not None:
        return timedelta(seconds=task.timeout_s)
    return policy.default_timeout


def end(task: Task, now: datetime, outcome: AttemptOutcome, error: str | None) -> AttemptPatch:
    return AttemptPatch(task.id, task.attempt, ended_at=now, outcome=outcome, error=error)


# What an attempt that ends lets go of: its lease, its deadline, an open question (and the
# run time it kept while the question waited).
RELEASE: dict[str, Any] = {
    "lease_expires_at": None,
    "deadline_at": None,
    "question": None,
    "run_left_ms": None,
}


def input_timeout_of(task: Task, policy: Policy) -> timedelta | None:
    if task.input_timeout_s is not None:
        return timedelta(seconds=task.input_timeout_s)
    return policy.input_timeout


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
