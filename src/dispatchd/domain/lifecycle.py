"""The task lifecycle: every state change a task can make, in one table.

Each public function here is one action. It checks the action against `RULES`, computes the
task's next version and returns a `Change`: the new task, the one event that records the
change, and the attempt/progress records that go with it. Callers persist a `Change` in one
transaction; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from dispatchd.domain.models import (
    Attempt,
    AttemptOutcome,
    Event,
    Priority,
    ProgressEntry,
    Task,
    TaskStatus,
)
from dispatchd.errors import InvalidTransition

S = TaskStatus


class Action(StrEnum):
    CREATE = "create"
    UNBLOCK = "unblock"
    ASSIGN = "assign"
    START = "start"
    PROGRESS = "progress"
    REQUEST_INPUT = "request_input"
    PROVIDE_INPUT = "provide_input"
    COMPLETE = "complete"
    APPROVE = "approve"
    REJECT = "reject"
    FAIL = "fail"
    TIME_OUT = "time_out"
    REQUEUE = "requeue"
    CANCEL = "cancel"
    RETRY = "retry"
    DEPENDENCY_FAILED = "dependency_failed"
    ESCALATE = "escalate"
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class Rule:
    sources: frozenset[TaskStatus]
    targets: frozenset[TaskStatus]


def _rule(sources: set[TaskStatus], targets: set[TaskStatus]) -> Rule:
    return Rule(frozenset(sources), frozenset(targets))


ALL_STATES = set(TaskStatus)
HELD = {S.ASSIGNED, S.RUNNING, S.WAITING_INPUT}

# The lifecycle of SPEC §2. `CREATE` has no source: it is the birth of a task.
RULES: Mapping[Action, Rule] = {
    Action.CREATE: _rule(set(), {S.PENDING, S.BLOCKED}),
    Action.UNBLOCK: _rule({S.BLOCKED}, {S.PENDING}),
    Action.ASSIGN: _rule({S.PENDING}, {S.ASSIGNED}),
    Action.START: _rule({S.ASSIGNED}, {S.RUNNING}),
    Action.PROGRESS: _rule({S.RUNNING}, {S.RUNNING}),
    Action.REQUEST_INPUT: _rule({S.RUNNING}, {S.WAITING_INPUT}),
    Action.PROVIDE_INPUT: _rule({S.WAITING_INPUT}, {S.RUNNING}),
    Action.COMPLETE: _rule({S.RUNNING}, {S.COMPLETED, S.REVIEW}),
    Action.APPROVE: _rule({S.REVIEW}, {S.COMPLETED}),
    Action.REJECT: _rule({S.REVIEW}, {S.PENDING, S.FAILED}),
    # A failure with attempts left goes back to pending (after a backoff); the last one is
    # final, or escalated: one more attempt at raised priority.
    Action.FAIL: _rule(HELD, {S.FAILED, S.PENDING}),
    Action.TIME_OUT: _rule(HELD, {S.TIMED_OUT, S.PENDING}),
    # The agent was lost, deregistered, or did not start in time.
    Action.REQUEUE: _rule(HELD, {S.PENDING, S.FAILED}),
    Action.CANCEL: _rule(
        {S.PENDING, S.BLOCKED, S.ASSIGNED, S.RUNNING, S.WAITING_INPUT, S.REVIEW},
        {S.CANCELLED},
    ),
    Action.RETRY: _rule({S.FAILED, S.TIMED_OUT, S.CANCELLED}, {S.PENDING}),
    Action.DEPENDENCY_FAILED: _rule({S.BLOCKED}, {S.FAILED}),
    # The last failure of a task that names an escalation capability: one more attempt.
    Action.ESCALATE: _rule({S.FAILED, S.TIMED_OUT}, {S.PENDING}),
    # Context and priority edits keep the state.
    Action.UPDATE: _rule(ALL_STATES, ALL_STATES),
}


def allowed_edges() -> set[tuple[TaskStatus, TaskStatus]]:
    """Every (from, to) pair the lifecycle allows, self-loops of UPDATE excluded."""
    edges: set[tuple[TaskStatus, TaskStatus]] = set()
    for action, rule in RULES.items():
        if action is Action.UPDATE:
            continue
        for src in rule.sources:
            for dst in rule.targets:
                edges.add((src, dst))
    return edges


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


class BackoffPolicy(Protocol):
    """What `backoff` reads of a policy."""

    @property
    def backoff_base(self) -> timedelta: ...

    @property
    def backoff_cap(self) -> timedelta: ...


@dataclass(frozen=True, slots=True)
class AttemptPatch:
    """What a transition changes on an attempt record; fields left None keep their stored
    value. The store applies it as it is (`store.base.PatchAttempt`)."""

    task_id: str
    number: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One transition: what to persist, atomically."""

    task: Task
    event: Event
    new_attempt: Attempt | None = None
    attempt_patch: AttemptPatch | None = None
    progress: ProgressEntry | None = None


def check(task: Task, action: Action) -> Rule:
    rule = RULES[action]
    if task.status not in rule.sources:
        raise InvalidTransition(task.id, task.status, action.value)
    return rule


def _event(kind: str, task: Task, now: datetime, agent: str | None, **data: Any) -> Event:
    return Event(type=kind, created_at=now, task_id=task.id, agent_id=agent, data=data)


def _move(task: Task, action: Action, target: TaskStatus, now: datetime, **changes: Any) -> Task:
    rule = check(task, action)
    assert target in rule.targets, (action, target)
    if target is S.PENDING and task.model_routed:
        # Back in the queue: the next agent may route to another model.
        changes = {"model": None, "model_routed": False, **changes}
    return task.evolve(status=target, updated_at=now, version=task.version + 1, **changes)


def _timeout(task: Task, policy: Policy) -> timedelta:
    if task.timeout_s is not None:
        return timedelta(seconds=task.timeout_s)
    return policy.default_timeout


def backoff(attempt: int, policy: BackoffPolicy, jitter: float) -> timedelta:
    """Exponential backoff with equal jitter: half fixed, half random (`jitter` in [0, 1)).
    The upper end of one wait is the lower end of the next, so waits never shrink until
    the cap. Shared by task retries and webhook deliveries."""
    # Double step by step and stop at the cap: `base * 2**(attempt-1)` overflows timedelta
    # from about the 48th attempt, and max_attempts may be 100.
    ceiling: timedelta = policy.backoff_base
    for _ in range(max(attempt - 1, 0)):
        if ceiling >= policy.backoff_cap:
            break
        ceiling *= 2
    ceiling = min(ceiling, policy.backoff_cap)
    half: timedelta = ceiling / 2
    return half + half * jitter


# --- birth ----------------------------------------------------------------------------


def create(task: Task, now: datetime, *, blocked: bool) -> Change:
    """`task` is the new record, status ignored; `blocked` when it waits on deps or run_at."""
    status = S.BLOCKED if blocked else S.PENDING
    born = task.evolve(status=status, created_at=now, updated_at=now, version=1, attempt=0)
    return Change(born, _event("task.created", born, now, born.requester, status=status.value))


def unblock(task: Task, now: datetime, *, inputs: Mapping[str, Any] | None = None) -> Change:
    context = dict(task.context)
    if inputs:
        context["inputs"] = dict(inputs)
    new = _move(task, Action.UNBLOCK, S.PENDING, now, context=context)
    return Change(new, _event("task.unblocked", new, now, None))


def dependency_failed(task: Task, now: datetime, *, parent: str, reason: str) -> Change:
    error = f"dependency {parent} {reason}"
    new = _move(task, Action.DEPENDENCY_FAILED, S.FAILED, now, error=error, finished_at=now)
    event = _event("task.failed", new, now, None, error=error, final=True, dependency=parent)
    return Change(new, event)


# --- assignment -----------------------------------------------------------------------


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
    new = _move(
        task,
        Action.ASSIGN,
        S.ASSIGNED,
        now,
        assignee=agent_id,
        attempt=number,
        model=task.model if task.model is not None else model,
        model_routed=task.model is None and model is not None,
        not_before=None,
        lease_expires_at=start_by,
        deadline_at=None,
        started_at=None,
        question=None,
    )
    attempt = Attempt(task_id=task.id, number=number, agent_id=agent_id, assigned_at=now)
    event = _event("task.assigned", new, now, agent_id, attempt=number, model=new.model)
    return Change(new, event, new_attempt=attempt)


def start(task: Task, now: datetime, policy: Policy) -> Change:
    timeout = _timeout(task, policy)
    new = _move(
        task,
        Action.START,
        S.RUNNING,
        now,
        started_at=now,
        lease_expires_at=now + policy.lease,
        deadline_at=now + timeout,
    )
    event = _event("task.started", new, now, task.assignee, attempt=task.attempt)
    return Change(new, event, attempt_patch=AttemptPatch(task.id, task.attempt, started_at=now))


def progress(
    task: Task, now: datetime, policy: Policy, *, message: str | None, percent: float | None
) -> Change:
    new = _move(
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
    event = _event("task.progress", new, now, task.assignee, message=message, percent=percent)
    return Change(new, event, progress=entry)


def request_input(task: Task, now: datetime, *, question: str) -> Change:
    new = _move(task, Action.REQUEST_INPUT, S.WAITING_INPUT, now, question=question)
    return Change(new, _event("task.waiting_input", new, now, task.assignee, question=question))


def provide_input(task: Task, now: datetime, policy: Policy, *, answer: str, by: str) -> Change:
    context = dict(task.context)
    answers = list(context.get("answers", []))
    answers.append({"question": task.question, "answer": answer, "by": by})
    context["answers"] = answers
    new = _move(
        task,
        Action.PROVIDE_INPUT,
        S.RUNNING,
        now,
        context=context,
        question=None,
        lease_expires_at=now + policy.lease,
    )
    return Change(new, _event("task.input_received", new, now, by, answer=answer))


# --- outcomes -------------------------------------------------------------------------


def _end(task: Task, now: datetime, outcome: AttemptOutcome, error: str | None) -> AttemptPatch:
    return AttemptPatch(task.id, task.attempt, ended_at=now, outcome=outcome, error=error)


_RELEASE: dict[str, Any] = {"lease_expires_at": None, "deadline_at": None, "question": None}


def complete(task: Task, now: datetime, *, result: Any, summary: str | None) -> Change:
    if task.review:
        new = _move(
            task, Action.COMPLETE, S.REVIEW, now, result=result, summary=summary, **_RELEASE
        )
        event = _event("task.review_requested", new, now, task.assignee, reviewer=task.reviewer)
    else:
        new = _move(
            task,
            Action.COMPLETE,
            S.COMPLETED,
            now,
            result=result,
            summary=summary,
            error=None,
            finished_at=now,
            **_RELEASE,
        )
        event = _event("task.completed", new, now, task.assignee, summary=summary)
    return Change(new, event, attempt_patch=_end(task, now, AttemptOutcome.COMPLETED, None))


def approve(task: Task, now: datetime, *, reviewer: str, feedback: str | None) -> Change:
    new = _move(task, Action.APPROVE, S.COMPLETED, now, finished_at=now)
    return Change(new, _event("task.approved", new, now, reviewer, feedback=feedback))


def reject(
    task: Task, now: datetime, policy: Policy, *, reviewer: str, feedback: str | None
) -> Change:
    cycles = task.review_cycles + 1
    context = dict(task.context)
    context["feedback"] = feedback
    if cycles >= policy.max_review_cycles:
        error = f"rejected in review {cycles} times: {feedback or 'no feedback'}"
        new = _move(
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
        new = _move(
            task,
            Action.REJECT,
            S.PENDING,
            now,
            review_cycles=cycles,
            context=context,
            assignee=None,
            # A rejected task goes through another attempt; it does not spend the budget.
            max_attempts=task.max_attempts + 1,
        )
    event = _event(
        "task.rejected", new, now, reviewer, feedback=feedback, final=new.status is S.FAILED
    )
    return Change(new, event)


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
    """The shared path of failure and timeout: back to pending with a backoff, or final."""
    if retryable and task.attempt < task.max_attempts:
        delay = backoff(task.attempt, policy, jitter)
        new = _move(
            task,
            action,
            S.PENDING,
            now,
            error=error,
            assignee=None,
            not_before=now + delay,
            **_RELEASE,
        )
        return new, True
    new = _move(task, action, final, now, error=error, finished_at=now, **_RELEASE)
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
    new, retrying = _retry_or_final(
        task, Action.FAIL, S.FAILED, now, policy, error=error, retryable=retryable, jitter=jitter
    )
    ended = _end(task, now, AttemptOutcome.FAILED, error)
    if retrying:
        event = _event(
            "task.retrying",
            new,
            now,
            task.assignee,
            error=error,
            attempt=task.attempt,
            retry_at=_iso(new.not_before),
            reason="failed",
        )
    else:
        event = _event("task.failed", new, now, task.assignee, error=error, final=True)
    return Change(new, event, attempt_patch=ended)


def time_out(task: Task, now: datetime, policy: Policy, *, jitter: float) -> Change:
    error = f"timed out after {_timeout(task, policy).total_seconds():g}s"
    new, retrying = _retry_or_final(
        task, Action.TIME_OUT, S.TIMED_OUT, now, policy, error=error, retryable=True, jitter=jitter
    )
    ended = _end(task, now, AttemptOutcome.TIMED_OUT, error)
    if retrying:
        event = _event(
            "task.retrying",
            new,
            now,
            task.assignee,
            error=error,
            attempt=task.attempt,
            retry_at=_iso(new.not_before),
            reason="timed_out",
        )
    else:
        event = _event("task.timed_out", new, now, task.assignee, error=error, final=True)
    return Change(new, event, attempt_patch=ended)


def requeue(task: Task, now: datetime, policy: Policy, *, reason: str) -> Change:
    """The agent lost the task (no lease, no start in time, deregistered)."""
    requeues = task.requeues + 1
    ended = _end(task, now, AttemptOutcome.LOST, reason)
    if requeues >= policy.max_lost_requeues:
        error = f"requeued {requeues} times; last: {reason}"
        new = _move(
            task,
            Action.REQUEUE,
            S.FAILED,
            now,
            requeues=requeues,
            error=error,
            finished_at=now,
            **_RELEASE,
        )
        event = _event("task.failed", new, now, task.assignee, error=error, final=True)
        return Change(new, event, attempt_patch=ended)
    new = _move(
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
        **_RELEASE,
    )
    data: dict[str, Any] = {"reason": reason, "requeues": requeues}
    if task.assigned_to is not None:
        data["was_named_for"] = task.assigned_to
    event = _event("task.requeued", new, now, task.assignee, **data)
    return Change(new, event, attempt_patch=ended)


def cancel(task: Task, now: datetime, *, by: str, reason: str | None) -> Change:
    new = _move(task, Action.CANCEL, S.CANCELLED, now, finished_at=now, **_RELEASE)
    held = task.status.active or task.status is S.REVIEW
    ended = _end(task, now, AttemptOutcome.CANCELLED, reason) if held and task.attempt else None
    event = _event(
        "task.cancelled",
        new,
        now,
        by,
        reason=reason,
        previous=task.status.value,
        assignee=task.assignee if held else None,
    )
    return Change(new, event, attempt_patch=ended)


def escalate(task: Task, now: datetime, *, capability: str) -> Change:
    """After the last failure: one more attempt, routed to `capability`, one priority up."""
    new = _move(
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
    event = _event(
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
    return _event(
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
    new = _move(
        task,
        Action.RETRY,
        S.PENDING,
        now,
        assignee=None,
        finished_at=None,
        not_before=None,
        max_attempts=max(task.max_attempts, task.attempt + 1),
    )
    event = _event("task.retrying", new, now, by, attempt=task.attempt, reason="manual")
    return Change(new, event)


def update(
    task: Task,
    now: datetime,
    *,
    by: str,
    context_patch: Mapping[str, Any] | None = None,
    priority: Priority | None = None,
) -> Change:
    changes: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if context_patch is not None:
        changes["context"] = merge_patch(task.context, context_patch)
        data["context"] = sorted(context_patch)
    if priority is not None:
        if task.status.terminal:
            raise InvalidTransition(task.id, task.status, "change priority")
        changes["priority"] = priority
        data["priority"] = priority.value
    check(task, Action.UPDATE)
    new = task.evolve(updated_at=now, version=task.version + 1, **changes)
    return Change(new, _event("task.updated", new, now, by, **data))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null removes a key."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
