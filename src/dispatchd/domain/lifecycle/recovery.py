"""Second chances for a task that ended: escalation after its last failure, and a manual
retry."""

from __future__ import annotations

from datetime import datetime

from dispatchd.domain.lifecycle.change import Change, move, new_event
from dispatchd.domain.lifecycle.table import Action
from dispatchd.domain.models import Event, Task, TaskStatus

S = TaskStatus


def escalate(task: Task, now: datetime, *, capability: str) -> Change:
    """After the last failure: one more attempt, routed to `capability`, one priority up."""
    new = move(
        task,
        Action.ESCALATE,
        S.PENDING,
        now,
        capabilities=(capability,),
        priority=task.priority.raised(),
        escalated=True,
        assignee=None,
        assigned_to=None,
        finished_at=None,
        not_before=None,
        max_attempts=task.attempt + 1,
    )
    event = new_event(
        "task.escalated",
        new,
        now,
        None,
        to=capability,
        priority=new.priority.value,
        previous=task.status.value,
        error=task.error,
    )
    return Change(new, event)


def escalation_notice(task: Task, now: datetime) -> Event:
    """The last failure of a task with nowhere to escalate: its requester is told."""
    return new_event(
        "task.escalated",
        task,
        now,
        None,
        to=None,
        notify=task.requester,
        status=task.status.value,
        error=task.error,
    )


def retry(task: Task, now: datetime, *, by: str) -> Change:
    """A manual requeue of a finished task; it gets at least one more attempt."""
    new = move(
        task,
        Action.RETRY,
        S.PENDING,
        now,
        assignee=None,
        finished_at=None,
        not_before=None,
        max_attempts=max(task.max_attempts, task.attempt + 1),
    )
    event = new_event("task.retrying", new, now, by, attempt=task.attempt, reason="manual")
    return Change(new, event)
