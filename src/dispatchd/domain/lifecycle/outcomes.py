"""How an attempt ends: completed (or sent to review), approved or rejected, failed or
timed out (retried after a backoff, or final), lost by its agent, or cancelled."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from dispatchd.domain.backoff import backoff
from dispatchd.domain.lifecycle.change import (
    RELEASE,
    Change,
    Policy,
    end,
    input_timeout_of,
    iso,
    move,
    new_event,
    timeout_of,
)
from dispatchd.domain.lifecycle.table import Action
from dispatchd.domain.models import AttemptOutcome, Review, Task, TaskKind, TaskStatus, Verdict

S = TaskStatus


def complete(task: Task, now: datetime, *, result: Any, summary: str | None) -> Change:
    if task.review:
        new = move(task, Action.COMPLETE, S.REVIEW, now, result=result, summary=summary, **RELEASE)
        event = new_event("task.review_requested", new, now, task.assignee, reviewer=task.reviewer)
    else:
        new = move(
            task,
            Action.COMPLETE,
            S.COMPLETED,
            now,
            result=result,
            summary=summary,
            error=None,
            finished_at=now,
            **RELEASE,
        )
        event = new_event("task.completed", new, now, task.assignee, summary=summary)
    return Change(new, event, attempt_patch=end(task, now, AttemptOutcome.COMPLETED, None))


def _record(
    task: Task,
    now: datetime,
    verdict: Verdict,
    reviewer: str,
    feedback: str | None,
    review_task_id: str | None,
) -> Review:
    return Review(
        task_id=task.id,
        cycle=task.review_cycles + 1,
        reviewer=reviewer,
        verdict=verdict,
        feedback=feedback,
        created_at=now,
        review_task_id=review_task_id,
    )


def approve(
    task: Task,
    now: datetime,
    *,
    reviewer: str,
    feedback: str | None,
    review_task_id: str | None = None,
) -> Change:
    new = move(task, Action.APPROVE, S.COMPLETED, now, finished_at=now)
    record = _record(task, now, Verdict.APPROVED, reviewer, feedback, review_task_id)
    event = new_event("task.approved", new, now, reviewer, feedback=feedback, cycle=record.cycle)
    return Change(new, event, review=record)


def reject(
    task: Task,
    now: datetime,
    policy: Policy,
    *,
    reviewer: str,
    feedback: str | None,
    review_task_id: str | None = None,
) -> Change:
    cycles = task.review_cycles + 1
    context = dict(task.context)
    context["feedback"] = feedback
    if cycles >= policy.max_review_cycles:
        error = f"rejected in review {cycles} times: {feedback or 'no feedback'}"
        new = move(
            task,
            Action.REJECT,
            S.FAILED,
            now,
            review_cycles=cycles,
            context=context,
            error=error,
            finished_at=now,
        )
    else:
        new = move(
            task,
            Action.REJECT,
            S.PENDING,
            now,
            review_cycles=cycles,
            context=context,
            assignee=None,
            # Offered first to the agent that did it, which resumes with the feedback.
            preferred_agent=task.assignee,
            # A rejected task goes through another attempt; it does not spend the budget.
            max_attempts=task.max_attempts + 1,
        )
    record = _record(task, now, Verdict.REJECTED, reviewer, feedback, review_task_id)
    event = new_event(
        "task.rejected",
        new,
        now,
        reviewer,
        feedback=feedback,
        final=new.status is S.FAILED,
        cycle=cycles,
        worker=task.assignee,
    )
    return Change(new, event, review=record)


def _retry_or_final(
    task: Task,
    action: Action,
    final: TaskStatus,
    now: datetime,
    policy: Policy,
    *,
    error: str,
    retryable: bool,
    jitter: float,
) -> tuple[Task, bool]:
    """The shared path of failure and timeout: back to pending with a backoff, or final.

    A review task is never final for its reviewer's failure: the review goes back to its
    queue (after the backoff) and the reviewed task keeps waiting in `review`."""
    if task.kind is TaskKind.REVIEW:
        retryable = True
        task = task.evolve(max_attempts=max(task.max_attempts, task.attempt + 1))
    if retryable and task.attempt < task.max_attempts:
        delay = backoff(task.attempt, policy, jitter)
        new = move(
            task,
            action,
            S.PENDING,
            now,
            error=error,
            assignee=None,
            not_before=now + delay,
            **RELEASE,
        )
        return new, True
    new = move(task, action, final, now, error=error, finished_at=now, **RELEASE)
    return new, False


def fail(
    task: Task,
    now: datetime,
    policy: Policy,
    *,
    error: str,
    retryable: bool,
    jitter: float,
) -> Change:
    return _ended(
        task, Action.FAIL, S.FAILED, now, policy, error=error, retryable=retryable, jitter=jitter
    )


def time_out(task: Task, now: datetime, policy: Policy, *, jitter: float) -> Change:
    error = f"timed out after {timeout_of(task, policy).total_seconds():g}s"
    return _ended(
        task, Action.TIME_OUT, S.TIMED_OUT, now, policy, error=error, retryable=True, jitter=jitter
    )


def input_timed_out(task: Task, now: datetime, policy: Policy) -> Change:
    """Nobody answered the task's question in time: the task fails, at once and for good
    (another attempt would only ask again), with the error code `input_timeout`."""
    limit = input_timeout_of(task, policy)
    waited = f" within {limit.total_seconds():g}s" if limit is not None else ""
    error = f"input_timeout: nobody answered the question{waited}"
    change = _ended(
        task, Action.FAIL, S.FAILED, now, policy, error=error, retryable=False, jitter=0.0
    )
    data = {**change.event.data, "code": "input_timeout", "question": task.question}
    return dataclasses.replace(change, event=dataclasses.replace(change.event, data=data))


def _ended(
    task: Task,
    action: Action,
    final: S,
    now: datetime,
    policy: Policy,
    *,
    error: str,
    retryable: bool,
    jitter: float,
) -> Change:
    """An attempt that failed or timed out: a retry after a backoff while attempts are left
    (`task.retrying`, with the reason), else the final state's own event."""
    new, retrying = _retry_or_final(
        task, action, final, now, policy, error=error, retryable=retryable, jitter=jitter
    )
    ended = end(task, now, AttemptOutcome(final.value), error)
    if retrying:
        event = new_event(
            "task.retrying",
            new,
            now,
            task.assignee,
            error=error,
            attempt=task.attempt,
            retry_at=iso(new.not_before),
            reason=final.value,
        )
    else:
        event = new_event(f"task.{final.value}", new, now, task.assignee, error=error, final=True)
    return Change(new, event, attempt_patch=ended)


def requeue(task: Task, now: datetime, policy: Policy, *, reason: str) -> Change:
    """The agent lost the task (no lease, no start in time, deregistered)."""
    requeues = task.requeues + 1
    ended = end(task, now, AttemptOutcome.LOST, reason)
    # A review whose reviewer vanished goes back to its queue however often it happens.
    if requeues >= policy.max_lost_requeues and task.kind is not TaskKind.REVIEW:
        error = f"requeued {requeues} times; last: {reason}"
        new = move(
            task,
            Action.REQUEUE,
            S.FAILED,
            now,
            requeues=requeues,
            error=error,
            finished_at=now,
            **RELEASE,
        )
        event = new_event("task.failed", new, now, task.assignee, error=error, final=True)
        return Change(new, event, attempt_patch=ended)
    new = move(
        task,
        Action.REQUEUE,
        S.PENDING,
        now,
        requeues=requeues,
        assignee=None,
        # The agent it was named for lost it: it goes to whoever can take it now.
        assigned_to=None,
        # A lost attempt was not the task's fault: it does not spend the budget.
        max_attempts=task.max_attempts + 1,
        **RELEASE,
    )
    data: dict[str, Any] = {"reason": reason, "requeues": requeues}
    if task.assigned_to is not None:
        data["was_named_for"] = task.assigned_to
    event = new_event("task.requeued", new, now, task.assignee, **data)
    return Change(new, event, attempt_patch=ended)


def cancel(task: Task, now: datetime, *, by: str, reason: str | None) -> Change:
    new = move(task, Action.CANCEL, S.CANCELLED, now, finished_at=now, **RELEASE)
    held = task.status.active or task.status is S.REVIEW
    ended = end(task, now, AttemptOutcome.CANCELLED, reason) if held and task.attempt else None
    event = new_event(
        "task.cancelled",
        new,
        now,
        by,
        reason=reason,
        previous=task.status.value,
        assignee=task.assignee if held else None,
    )
    return Change(new, event, attempt_patch=ended)
