"""The one path by which a task changes: a `Change` becomes store operations, committed at once.

`ops_for` turns a domain change into the writes that record it (the task at its new version,
its event, its attempt and progress records); `transact` re-reads and recomputes when a
concurrent writer got there first, so a transition is never applied to a stale task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Change
from dispatchd.domain.models import Event, Task
from dispatchd.engine.followups import follow_ups
from dispatchd.errors import ConcurrentUpdate, NotFound
from dispatchd.store.base import (
    AppendEvent,
    AppendProgress,
    InsertTask,
    Op,
    SaveAttempt,
    Store,
    UpdateTask,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Committed:
    """The events a commit appended and the last state of every task it wrote."""

    events: list[Event]
    tasks: dict[str, Task]


MAX_TRIES = 8


def ops_for(change: Change, previous: Task | None) -> list[Op]:
    """The writes of one transition; `previous` is the task it was computed from (None: new)."""
    ops: list[Op] = [
        InsertTask(change.task)
        if previous is None
        else UpdateTask(change.task, previous.status, previous.assignee)
    ]
    if change.new_attempt is not None:
        ops.append(SaveAttempt(change.new_attempt))
    if change.attempt_patch is not None:
        ops.append(change.attempt_patch)
    if change.progress is not None:
        ops.append(AppendProgress(change.progress))
    ops.append(AppendEvent(change.event))
    return ops


async def commit_changes(
    store: Store,
    steps: Sequence[tuple[Change, Task | None]],
    extra: Sequence[Op] = (),
    *,
    lead: Sequence[Op] = (),
    escalate_to: str | None = None,
) -> Committed:
    """Commit several transitions (and any extra writes) in one transaction, with what
    they set off: escalation of a last failure, unblocking or failing dependent tasks."""
    more, notices = await follow_ups(store, steps, utcnow(), escalate_to=escalate_to)
    ops: list[Op] = list(lead)
    for change, previous in [*steps, *more]:
        ops.extend(ops_for(change, previous))
    ops.extend(notices)
    ops.extend(extra)
    events = await store.commit(ops)
    return Committed(events, {change.task.id: change.task for change, _ in [*steps, *more]})


async def transact(
    store: Store,
    task_id: str,
    compute: Callable[[Task], Awaitable[list[tuple[Change, Task | None]]]],
    extra: Callable[[Task], Sequence[Op]] | None = None,
    *,
    escalate_to: str | None = None,
) -> Task:
    """Load the task, compute its transitions, commit; retry from a fresh read on a race.

    `compute` returns the chain of changes to apply (usually one); the last task in the
    chain is returned. Domain errors raised by `compute` propagate untouched.
    """
    for _ in range(MAX_TRIES):
        task = await store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        steps = await compute(task)
        try:
            if not steps:
                return task
            done = await commit_changes(
                store, steps, extra(task) if extra else (), escalate_to=escalate_to
            )
        except ConcurrentUpdate:
            continue
        return done.tasks[task_id]
    raise ConcurrentUpdate(f"task {task_id} is changing too fast; try again", task_id=task_id)
