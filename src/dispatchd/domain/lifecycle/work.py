"""From birth to running: creation, dependencies, assignment, and the work of the agent
that holds the task (start, progress, a question and its answer)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from dispatchd.domain.costs import Cost
from dispatchd.domain.lifecycle.change import (
    AttemptPatch,
    Change,
    Policy,
    input_timeout_of,
    iso,
    move,
    new_event,
    timeout_of,
)
from dispatchd.domain.lifecycle.table import Action
from dispatchd.domain.models import Attempt, ProgressEntry, Task, TaskStatus

S = TaskStatus


def create(task: Task, now: datetime, *, blocked: bool) -> Change:
    """`task` is the new record, status ignored; `blocked` when it waits on deps or run_at."""
    status = S.BLOCKED if blocked else S.PENDING
    born = (
        task
        if task.status is status
        and task.created_at == now
        and task.updated_at == now
        and task.version == 1
        and task.attempt == 0
        else task.evolve(status=status, created_at=now, updated_at=now, version=1, attempt=0)
    )
    return Change(born, new_event("task.created", born, now, born.requester, status=status.value))


def unblock(task: Task, now: datetime, *, inputs: Mapping[str, Any] | None = None) -> Change:
    context = dict(task.context)
    if inputs:
        context["inputs"] = dict(inputs)
    new = move(task, Action.UNBLOCK, S.PENDING, now, context=context)
    return Change(new, new_event("task.unblocked", new, now, None))


def dependency_failed(task: Task, now: datetime, *, parent: str, reason: str) -> Change:
    error = f"dependency {parent} {reason}"
    new = move(task, Action.DEPENDENCY_FAILED, S.FAILED, now, error=error, finished_at=now)
    event = new_event("task.failed", new, now, None, error=error, final=True, dependency=parent)
    return Change(new, event)


def assign(
    task: Task,
    agent_id: str,
    now: datetime,
    *,
    model: str | None = None,
    start_by: datetime | None = None,
) -> Change:
    """Hand the task to an agent; `start_by` is when it goes elsewhere if not started."""
    number = task.attempt + 1
    new = move(
        task,
        Action.ASSIGN,
        S.ASSIGNED,
        now,
        assignee=agent_id,
        attempt=number,
        preferred_agent=None,
        model=task.model if task.model is not None else model,
        model_routed=task.model is None and model is not None,
        not_before=None,
        lease_expires_at=start_by,
        deadline_at=None,
        run_left_ms=None,
        started_at=None,
        question=None,
        attempt_cost=Cost(),
    )
    attempt = Attempt(task_id=task.id, number=number, agent_id=agent_id, assigned_at=now)
    event = new_event("task.assigned", new, now, agent_id, attempt=number, model=new.model)
    return Change(new, event, new_attempt=attempt)


def start(task: Task, now: datetime, policy: Policy) -> Change:
    timeout = timeout_of(task, policy)
    new = move(
        task,
        Action.START,
        S.RUNNING,
        now,
        started_at=now,
        lease_expires_at=now + policy.lease,
        deadline_at=now + timeout,
    )
    event = new_event("task.started", new, now, task.assignee, attempt=task.attempt)
    return Change(new, event, attempt_patch=AttemptPatch(task.id, task.attempt, started_at=now))


def progress(
    task: Task, now: datetime, policy: Policy, *, message: str | None, percent: float | None
) -> Change:
    new = move(
        task,
        Action.PROGRESS,
        S.RUNNING,
        now,
        progress_message=message if message is not None else task.progress_message,
        progress_percent=percent if percent is not None else task.progress_percent,
        lease_expires_at=now + policy.lease,
    )
    assert task.assignee is not None
    entry = ProgressEntry(task.id, task.attempt, task.assignee, message, percent, now)
    event = new_event("task.progress", new, now, task.assignee, message=message, percent=percent)
    return Change(new, event, progress=entry)


def request_input(task: Task, now: datetime, policy: Policy, *, question: str) -> Change:
    """The agent asks a question. Its run time and lease stop counting while a person
    thinks: the run time left is kept (`run_left_ms`) and the lease is cleared; the only
    deadline left is the input timeout, when there is one."""
    left_ms: int | None = None
    if task.deadline_at is not None:
        left_ms = max(0, int((task.deadline_at - now) / timedelta(milliseconds=1)))
    limit = input_timeout_of(task, policy)
    new = move(
        task,
        Action.REQUEST_INPUT,
        S.WAITING_INPUT,
        now,
        question=question,
        run_left_ms=left_ms,
        lease_expires_at=None,
        deadline_at=now + limit if limit is not None else None,
    )
    event = new_event(
        "task.waiting_input",
        new,
        now,
        task.assignee,
        question=question,
        answer_by=iso(new.deadline_at),
    )
    return Change(new, event)


def provide_input(task: Task, now: datetime, policy: Policy, *, answer: str, by: str) -> Change:
    """The answer arrives: the run time left when the question was asked counts on from
    now, and the lease starts afresh."""
    context = dict(task.context)
    answers = list(context.get("answers", []))
    answers.append({"question": task.question, "answer": answer, "by": by})
    context["answers"] = answers
    if task.run_left_ms is not None:
        deadline = now + timedelta(milliseconds=task.run_left_ms)
    else:
        deadline = now + timeout_of(task, policy)
    new = move(
        task,
        Action.PROVIDE_INPUT,
        S.RUNNING,
        now,
        context=context,
        question=None,
        lease_expires_at=now + policy.lease,
        deadline_at=deadline,
        run_left_ms=None,
    )
    return Change(new, new_event("task.input_received", new, now, by, answer=answer))
