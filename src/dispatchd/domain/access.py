"""Who may do what to a task. Pure checks that raise the fitting error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dispatchd.domain.models import Attempt, AttemptOutcome, Task, TaskStatus
from dispatchd.errors import Forbidden, StaleAttempt, Unauthorized


@dataclass(frozen=True, slots=True)
class Caller:
    agent_id: str
    is_admin: bool = False
    # Proved who it is with a token (an agent's or the admin's), not only named itself.
    authenticated: bool = False


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
    """An admin route: without a token the caller has not said who it is (401, so that
    it sends the admin token); with an agent's token it is known and not allowed (403)."""
    if caller.is_admin:
        return
    if not caller.authenticated:
        raise Unauthorized(
            "this route needs Authorization: Bearer <admin token>", code="admin_token_required"
        )
    raise Forbidden("this route needs the admin token", code="admin_required")


# --- repeats ------------------------------------------------------------------------------
# A worker that lost the answer to start, complete or fail sends it again. When that very
# attempt already did it, the repeat is answered as the first call was (the task), not as a
# conflict; a different attempt, or another outcome, is still one.


def already_started(task: Task, caller: Caller, attempt: int | None) -> bool:
    return (
        task.status in (TaskStatus.RUNNING, TaskStatus.WAITING_INPUT)
        and task.assignee == caller.agent_id
        and attempt in (None, task.attempt)
    )


def already_ended(
    task: Task,
    caller: Caller,
    past: Iterable[Attempt],
    attempt: int | None,
    outcome: AttemptOutcome,
    **same: Any,
) -> bool:
    """Whether the caller's attempt (`attempt`, else its latest on the task) ended with
    `outcome`; for the attempt the task is still at, also with the task showing `same`
    (the result and summary of a completion). A failure's `error` is the attempt's."""
    mine = [a for a in past if a.agent_id == caller.agent_id]
    if attempt is not None:
        mine = [a for a in mine if a.number == attempt]
    if not mine:
        return False
    last = max(mine, key=lambda a: a.number)
    if last.outcome is not outcome:
        return False
    error = same.pop("error", None)
    if outcome is AttemptOutcome.FAILED and last.error != error:
        return False
    if last.number != task.attempt:
        return True
    return all(getattr(task, name) == value for name, value in same.items())
