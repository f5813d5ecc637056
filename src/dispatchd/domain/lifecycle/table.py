"""The lifecycle of SPEC §2 as one table: which action may move a task from which states
to which."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from dispatchd.domain.models import Task, TaskStatus
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


def check(task: Task, action: Action) -> Rule:
    rule = RULES[action]
    if task.status not in rule.sources:
        raise InvalidTransition(task.id, task.status, action.value)
    return rule
