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
from dispatchd.domain.lifecycle import AttemptPatch, Change, Policy
from dispatchd.domain.models import Attempt, Event, Task
from dispatchd.engine.followups import follow_ups
from dispatchd.errors import ConcurrentUpdate, DispatchError, NotFound
from dispatchd.store.base import (
    AddCost,
    AppendEvent,
    AppendProgress,
    AppendReview,
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
        else UpdateTask(change.task, previous.status, previous.assignee, previous)
    ]
    if change.new_attempt is not None:
        ops.append(SaveAttempt(change.new_attempt))
    if change.attempt_patch is not None:
        ops.append(change.attempt_patch)
    if change.progress is not None:
        ops.append(AppendProgress(change.progress))
    if change.review is not None:
        ops.append(AppendReview(change.review))
    if change.charge is not None:
        ops.append(AddCost(change.charge))
    ops.append(AppendEvent(change.event))
    return ops


def writes_for(steps: Sequence[tuple[Change, Task | None]]) -> tuple[list[Op], dict[str, Task]]:
    """The writes of several transitions, and each task as it will be stored.

    A task that moves more than once here (created, assigned and started in one commit;
    started and completed) is written once, at its last state and one version past the
    row it was read at, and an attempt opened here is inserted with what later steps
    patch into it: the same rows and events as writing each step, fewer statements.
    Events keep their order. Steps that do not chain (each from the task the one before
    it produced) are written one by one.
    """
    first: dict[str, Task | None] = {}
    last: dict[str, Task] = {}
    for change, previous in steps:
        task_id = change.task.id
        if task_id in last and previous is not last[task_id]:
            return _each(steps)
        first.setdefault(task_id, previous)
        last[task_id] = change.task
    stored: dict[str, Task] = {}
    for task_id, final in last.items():
        before = first[task_id]
        version = 1 if before is None else before.version + 1
        stored[task_id] = final if final.version == version else final.evolve(version=version)
    ops: list[Op] = []
    written: set[str] = set()
    opened: dict[tuple[str, int], int] = {}  # attempt → its SaveAttempt's index in `ops`
    for change, _ in steps:
        task_id = change.task.id
        if task_id not in written:
            ops.append(_task_write(stored[task_id], first[task_id]))
            written.add(task_id)
        if change.new_attempt is not None:
            attempt = change.new_attempt
            opened[(task_id, attempt.number)] = len(ops)
            ops.append(SaveAttempt(attempt))
        patch = change.attempt_patch
        if patch is not None:
            at = opened.get((task_id, patch.number))
            saved = ops[at] if at is not None else None
            if at is not None and isinstance(saved, SaveAttempt):
                ops[at] = SaveAttempt(_patched(saved.attempt, patch))
            else:
                ops.append(patch)
        if change.progress is not None:
            ops.append(AppendProgress(change.progress))
        if change.review is not None:
            ops.append(AppendReview(change.review))
        if change.charge is not None:
            ops.append(AddCost(change.charge))
        ops.append(AppendEvent(change.event))
    return ops, stored


def _each(steps: Sequence[tuple[Change, Task | None]]) -> tuple[list[Op], dict[str, Task]]:
    ops: list[Op] = []
    for change, previous in steps:
        ops.extend(ops_for(change, previous))
    return ops, {change.task.id: change.task for change, _ in steps}


def _task_write(task: Task, previous: Task | None) -> Op:
    if previous is None:
        return InsertTask(task)
    return UpdateTask(task, previous.status, previous.assignee, previous)


def _patched(attempt: Attempt, patch: AttemptPatch) -> Attempt:
    return attempt.evolve(
        started_at=patch.started_at or attempt.started_at,
        ended_at=patch.ended_at or attempt.ended_at,
        outcome=patch.outcome or attempt.outcome,
        error=patch.error if patch.error is not None else attempt.error,
        cost=patch.cost if patch.cost is not None else attempt.cost,
    )


async def commit_changes(
    store: Store,
    steps: Sequence[tuple[Change, Task | None]],
    extra: Sequence[Op] = (),
    *,
    lead: Sequence[Op] = (),
    escalate_to: str | None = None,
    policy: Policy | None = None,
) -> Committed:
    """Commit several transitions (and any extra writes) in one transaction, with what
    they set off: escalation of a last failure, unblocking or failing dependent tasks,
    the review gate's tasks and verdicts."""
    more, notices = await follow_ups(store, steps, utcnow(), escalate_to=escalate_to, policy=policy)
    writes, stored = writes_for([*steps, *more])
    events = await store.commit([*lead, *writes, *notices, *extra])
    return Committed(events, stored)


async def transact(
    store: Store,
    task_id: str,
    compute: Callable[[Task], Awaitable[list[tuple[Change, Task | None]]]],
    extra: Callable[[Task], Sequence[Op]] | None = None,
    *,
    escalate_to: str | None = None,
    policy: Policy | None = None,
    known: Callable[[str], Task | None] | None = None,
) -> Task:
    """Load the task, compute its transitions, commit; retry from a fresh read on a race.

    `compute` returns the chain of changes to apply (usually one); the last task in the
    chain is returned. Domain errors raised by `compute` propagate untouched.

    `known`, if given, offers the task as this process last wrote it, tried first instead
    of reading the row: its version must still be the row's for the write to pass, and
    whatever it leads to other than a committed write (an error, nothing to do) is decided
    again on the row.
    """
    copy = known(task_id) if known is not None else None
    for _ in range(MAX_TRIES):
        trusted = copy is None
        task = await store.get_task(task_id) if copy is None else copy
        copy = None  # a copy is tried once
        if task is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        try:
            steps = await compute(task)
            if not steps:
                if trusted:
                    return task
                continue
            done = await commit_changes(
                store,
                steps,
                extra(task) if extra else (),
                escalate_to=escalate_to,
                policy=policy,
            )
        except ConcurrentUpdate:
            continue
        except DispatchError:
            if trusted:
                raise
            continue
        return done.tasks[task_id]
    raise ConcurrentUpdate(f"task {task_id} is changing too fast; try again", task_id=task_id)
