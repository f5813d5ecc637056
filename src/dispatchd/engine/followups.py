"""What a finished task sets off, in the same transaction as its finish (SPEC §2).

* The last failure of a task escalates it: one more attempt routed to the escalation
  capability at raised priority, or, with nowhere to go, a `task.escalated` notice for
  the requester.
* A completed task unblocks each child whose parents are now all completed (and whose
  `run_at` has come), with the parents' results in `context.inputs`.
* A task that fails, times out or is cancelled for good fails its blocked children, and
  theirs in turn.
* A task sent to review with a reviewer opens its review task; a completed review task
  applies its verdict to the task it reviews; a task that leaves review otherwise (a
  verdict posted on it, a cancellation) cancels its open review task (docs/review.md).

Every follow-up is a versioned write: if a child moved meanwhile the whole commit is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from dispatchd.domain import lifecycle, review
from dispatchd.domain.costs import BUDGET_EXCEEDED
from dispatchd.domain.ids import new_id
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import Task, TaskKind, TaskStatus, Verdict
from dispatchd.store.base import AppendEvent, Op, Store

Step = tuple[Change, Task | None]

_DEAD = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED})
_FINAL_FAILURES = frozenset({"task.failed", "task.timed_out", "task.rejected"})


def _escalates(change: Change, previous: Task | None) -> bool:
    """A task's own last failure (not a dependency's, not a birth)."""
    return (
        previous is not None
        and change.task.status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT)
        and change.event.type in _FINAL_FAILURES
        and "dependency" not in change.event.data
    )


async def follow_ups(
    store: Store,
    steps: Sequence[Step],
    now: datetime,
    *,
    escalate_to: str | None,
    policy: Policy | None = None,
) -> tuple[list[Step], list[Op]]:
    """The transitions and notices that `steps` set off, children included, recursively."""
    latest: dict[str, Task] = {}
    for change, _ in steps:
        latest[change.task.id] = change.task
    reviews = await _reviews(store, steps, now, latest, policy or Policy())
    more: list[Step] = list(reviews)
    notices: list[Op] = []
    finished: list[Task] = []
    for change, previous in [*steps, *reviews]:
        task = change.task
        if _escalates(change, previous):
            target = task.escalate_to or escalate_to
            # Another attempt would spend more of a budget already crossed.
            budget = task.error_code == BUDGET_EXCEEDED
            if target is not None and not task.escalated and not budget:
                step = lifecycle.escalate(task, now, capability=target)
                more.append((step, task))
                latest[task.id] = step.task
                continue
            notices.append(AppendEvent(lifecycle.escalation_notice(task, now)))
        ended = task.status is TaskStatus.COMPLETED or task.status in _DEAD
        if ended and previous is not None and previous.status is not task.status:
            finished.append(task)
    # Children, breadth first; a child failed here fails its own children in turn.
    while finished:
        parent = latest.get(finished[0].id, finished[0])
        finished = finished[1:]
        if not parent.dependents:
            continue  # nothing was ever created depending on it: no lookup
        for child in await store.children(parent.id):
            child = latest.get(child.id, child)
            if child.status is not TaskStatus.BLOCKED:
                continue
            if parent.status in _DEAD:
                step = lifecycle.dependency_failed(
                    child, now, parent=parent.id, reason=parent.status.value
                )
                more.append((step, child))
                latest[child.id] = step.task
                finished.append(step.task)
                continue
            unblocked = await _unblock_if_ready(store, child, now, latest)
            if unblocked is not None:
                more.append((unblocked, child))
                latest[child.id] = unblocked.task
    return more, notices


async def _unblock_if_ready(
    store: Store, child: Task, now: datetime, latest: dict[str, Task]
) -> Change | None:
    if child.run_at is not None and child.run_at > now:
        return None
    parents = await parents_of(store, child, latest)
    if any(p.status is not TaskStatus.COMPLETED for p in parents):
        return None
    return lifecycle.unblock(child, now, inputs={p.id: p.result for p in parents})


async def parents_of(
    store: Store, child: Task, latest: dict[str, Task] | None = None
) -> list[Task]:
    """The tasks `child` depends on, as of this commit's pending writes when given."""
    known = latest or {}
    missing = [pid for pid in child.depends_on if pid not in known]
    found = {t.id: t for t in await store.get_tasks(missing)} if missing else {}
    found.update({pid: known[pid] for pid in child.depends_on if pid in known})
    return [found[pid] for pid in child.depends_on if pid in found]


async def unblock_due(store: Store, child: Task, now: datetime) -> Change | None:
    """A blocked task whose `run_at` came: pending if its parents are all completed."""
    if child.status is not TaskStatus.BLOCKED:
        return None
    return await _unblock_if_ready(store, child, now, {})


async def _reviews(
    store: Store, steps: Sequence[Step], now: datetime, latest: dict[str, Task], policy: Policy
) -> list[Step]:
    """The review gate's follow-ups of `steps` (see the module's docstring)."""
    more: list[Step] = []
    for change, previous in steps:
        task = change.task
        was = previous.status if previous is not None else None
        if task.status is TaskStatus.REVIEW and was is not TaskStatus.REVIEW:
            if review.routed(task):
                birth = review.open_review(task, new_id(), now)
                more.append((birth, None))
                latest[birth.task.id] = birth.task
            continue
        if (
            task.kind is TaskKind.REVIEW
            and task.status is TaskStatus.COMPLETED
            and was is not TaskStatus.COMPLETED
            and task.review_of is not None
        ):
            step = await _apply_verdict(store, task, now, latest, policy)
            if step is not None:
                more.append(step)
            continue
        if was is TaskStatus.REVIEW and task.reviewer is not None and task.kind is TaskKind.TASK:
            carried = change.review is not None and change.review.review_task_id is not None
            if not carried:
                more.extend(await _close_reviews(store, change, now, latest))
    return more


async def _apply_verdict(
    store: Store, done: Task, now: datetime, latest: dict[str, Task], policy: Policy
) -> Step | None:
    """A completed review task's verdict, applied to the task it reviews (if that task is
    still waiting for it)."""
    assert done.review_of is not None
    original = latest.get(done.review_of) or await store.get_task(done.review_of)
    if original is None or original.status is not TaskStatus.REVIEW:
        return None
    verdict, feedback = review.verdict_of(done.result)
    reviewer = done.assignee or "unknown"
    if verdict is Verdict.APPROVED:
        change = lifecycle.approve(
            original, now, reviewer=reviewer, feedback=feedback, review_task_id=done.id
        )
    else:
        change = lifecycle.reject(
            original, now, policy, reviewer=reviewer, feedback=feedback, review_task_id=done.id
        )
    latest[original.id] = change.task
    return change, original


async def _close_reviews(
    store: Store, change: Change, now: datetime, latest: dict[str, Task]
) -> list[Step]:
    """Cancel the open review tasks of a task that left review without them."""
    task = change.task
    how = "a verdict was posted on" if change.review is not None else "the review ended for"
    reason = f"{how} task {task.id}"
    closed: list[Step] = []
    for open_task in await store.open_reviews(task.id):
        current = latest.get(open_task.id, open_task)
        if current.status.terminal:
            continue
        cancel = lifecycle.cancel(
            current, now, by=change.event.agent_id or "dispatchd", reason=reason
        )
        closed.append((cancel, current))
        latest[current.id] = cancel.task
    return closed
