"""The task lifecycle: every state change a task can make, in one table.

Each public function here is one action. It checks the action against `RULES`, computes the
task's next version and returns a `Change`: the new task, the one event that records the
change, and the attempt/progress records that go with it. Callers persist a `Change` in one
transaction; nothing here does I/O.

`table` holds the rules, `change` what an action returns; the actions are grouped by where
they take a task: `work` (birth to running), `outcomes` (how an attempt ends), `recovery`
(second chances) and `edits` (changes that keep the state).
"""

from __future__ import annotations

from dispatchd.domain.backoff import BackoffPolicy, backoff
from dispatchd.domain.lifecycle.budget import charged
from dispatchd.domain.lifecycle.change import AttemptPatch, Change, Policy
from dispatchd.domain.lifecycle.edits import merge_patch, update
from dispatchd.domain.lifecycle.outcomes import (
    approve,
    cancel,
    complete,
    fail,
    input_timed_out,
    reject,
    requeue,
    time_out,
)
from dispatchd.domain.lifecycle.recovery import escalate, escalation_notice, retry
from dispatchd.domain.lifecycle.table import RULES, Action, Rule, allowed_edges, check
from dispatchd.domain.lifecycle.work import (
    assign,
    create,
    dependency_failed,
    progress,
    provide_input,
    request_input,
    start,
    unblock,
)

__all__ = [
    "RULES",
    "Action",
    "AttemptPatch",
    "BackoffPolicy",
    "Change",
    "Policy",
    "Rule",
    "allowed_edges",
    "approve",
    "assign",
    "backoff",
    "cancel",
    "charged",
    "check",
    "complete",
    "create",
    "dependency_failed",
    "escalate",
    "escalation_notice",
    "fail",
    "input_timed_out",
    "merge_patch",
    "progress",
    "provide_input",
    "reject",
    "request_input",
    "requeue",
    "retry",
    "start",
    "time_out",
    "unblock",
    "update",
]
