"""The assignment settings every path shares (push, claim, manual `assigned_to`), and the
writes that hand one task to one agent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from dispatchd.domain import lifecycle, routing
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import Agent, Task
from dispatchd.domain.scoring import limit_of
from dispatchd.engine.transitions import writes_for
from dispatchd.store.base import Op, TakeSlot


@dataclass(frozen=True, slots=True)
class Rules:
    default_limit: int = 3
    owner_filter: bool = True
    tiers: Mapping[str, str] = field(default_factory=dict)
    default_model: str | None = None
    escalate_to: str | None = None
    # Whether the agent row's status decides availability; False when an external
    # availability service (Warren) does, through the directory.
    row_status: bool = True


@dataclass(frozen=True, slots=True)
class Handover:
    """The writes of one assignment (and of its start, for a claim)."""

    ops: list[Op]
    changes: list[tuple[Change, Task]]
    # The task as the ops store it.
    task: Task


def hand_over(
    task: Task,
    agent: Agent,
    now: datetime,
    rules: Rules,
    policy: Policy,
    *,
    start: bool,
    limit: int | None = None,
) -> Handover:
    """Reserve a slot of `agent` and assign `task` to it; with `start`, start it too.

    The slot comes first in the commit, so the store checks the agent's capacity before
    the task's write raises its load.
    """
    chosen = routing.route(task, agent, rules.tiers, rules.default_model)
    assigned = lifecycle.assign(
        task, agent.id, now, model=chosen.model, start_by=now + policy.wake_timeout
    )
    changes: list[tuple[Change, Task]] = [(assigned, task)]
    if start:
        changes.append((lifecycle.start(assigned.task, now, policy), assigned.task))
    slots = limit if limit is not None else limit_of(agent, rules.default_limit)
    writes, stored = writes_for(changes)
    ops: list[Op] = [TakeSlot(agent.id, slots, now, check_status=rules.row_status), *writes]
    return Handover(ops, changes, stored[task.id])
