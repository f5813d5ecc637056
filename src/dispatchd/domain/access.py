"""Who may do what to a task. Pure checks that raise the fitting error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dispatchd.domain.models import Attempt, Task
from dispatchd.errors import Forbidden, StaleAttempt


@dataclass(frozen=True, slots=True)
class Caller:
    agent_id: str
    is_admin: bool = False


def require_holder(
    task: Task, caller: Caller, past: Iterable[Attempt], attempt: int | None = None
) -> None:
    """Only the agent holding the task's current attempt may start, report on or finish it.

    A caller whose attempt was taken away (timed out, requeued, reassigned) gets
    `StaleAttempt`: its late report must change nothing. `attempt`, when the worker sends
    it, fences a worker that got the same task again under a newer attempt.
    """
    if task.assignee == caller.agent_id:
        if attempt is not None and attempt != task.attempt:
            raise StaleAttempt(
                f"attempt {attempt} of task {task.id} is over; the current attempt is "
                f"{task.attempt}",
                task_id=task.id,
                attempt=attempt,
                current_attempt=task.attempt,
            )
        return
    if any(a.agent_id == caller.agent_id for a in past):
        raise StaleAttempt(
            f"task {task.id} was taken away from {caller.agent_id}",
            task_id=task.id,
            current_state=task.status.value,
            assignee=task.assignee,
        )
    if task.assignee is not None:
        raise Forbidden(
            f"only the assignee {task.assignee} may do this to task {task.id}",
            code="not_assignee",
            task_id=task.id,
        )


def require_requester_or_admin(task: Task, caller: Caller, action: str) -> None:
    if caller.is_admin or caller.agent_id == task.requester:
        return
    raise Forbidden(
        f"only the requester {task.requester} or an admin may {action} task {task.id}",
        code="not_requester",
        task_id=task.id,
    )


def require_self_or_admin(agent_id: str, caller: Caller) -> None:
    if caller.is_admin or caller.agent_id == agent_id:
        return
    raise Forbidden(
        f"only agent {agent_id} itself or an admin may do this", code="not_self", agent_id=agent_id
    )


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("this route needs the admin token", code="admin_required")
