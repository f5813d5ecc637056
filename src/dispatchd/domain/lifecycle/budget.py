"""Costs on the transitions that carry them (progress, completion, failure), and the
budget they may cross (docs/costs.md).

`charged` takes the change an agent's report makes and the task it was computed from, and
returns it with the report's cost applied: the attempt's running total raised, the excess
added to the task and its event, and a `Charge` for the day's ledger. When the task's cost
then crosses its `max_cost_usd`, the change becomes the attempt's end instead: the task
fails for good with `budget_exceeded` (a result it reported is kept), and the holder is
told through the event log as for a timeout.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from dispatchd.domain.costs import (
    BUDGET_EXCEEDED,
    Charge,
    Cost,
    CostReport,
    day_of,
    over_budget,
    raised,
)
from dispatchd.domain.lifecycle.change import (
    RELEASE,
    AttemptPatch,
    Change,
    end,
    move,
    new_event,
)
from dispatchd.domain.lifecycle.table import Action
from dispatchd.domain.models import AttemptOutcome, Task, TaskStatus


def charged(change: Change, before: Task, report: CostReport | None, now: datetime) -> Change:
    """`change` (made from `before`, on the same attempt) with `report` applied."""
    total = raised(before.attempt_cost, report)
    added = total - before.attempt_cost
    if not added:
        return change
    cost = before.cost + added
    assert before.assignee is not None
    charge = Charge(before.requester, before.assignee, day_of(now), added)
    # A failure that is final already stays as the agent reported it.
    final = change.task.status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT)
    if over_budget(cost, before.max_cost_usd) and not final:
        return _stopped(change, before, now, total=total, cost=cost, charge=charge)
    task = change.task.evolve(cost=cost, attempt_cost=total)
    patch = change.attempt_patch or AttemptPatch(before.id, before.attempt)
    event = replace(change.event, task_id=task.id, data={**change.event.data, "cost": added.data()})
    return replace(
        change,
        task=task,
        event=event,
        attempt_patch=replace(patch, cost=total),
        charge=charge,
    )


def _stopped(
    change: Change, before: Task, now: datetime, *, total: Cost, cost: Cost, charge: Charge
) -> Change:
    """The attempt ends at once: its cost crossed the task's budget."""
    error = f"cost {cost.usd:g} USD crossed the task's budget of {before.max_cost_usd:g} USD"
    # What the report would have recorded (a result, a summary) is kept with the failure.
    kept = {k: getattr(change.task, k) for k in ("result", "summary")}
    task = move(
        before,
        Action.FAIL,
        TaskStatus.FAILED,
        now,
        error=error,
        error_code=BUDGET_EXCEEDED,
        finished_at=now,
        cost=cost,
        attempt_cost=total,
        **kept,
        **RELEASE,
    )
    patch = replace(end(before, now, AttemptOutcome.FAILED, error), cost=total)
    event = new_event(
        "task.failed",
        task,
        now,
        before.assignee,
        error=error,
        final=True,
        code=BUDGET_EXCEEDED,
        cost=charge.cost.data(),
        cost_usd=task.cost.usd,
        max_cost_usd=before.max_cost_usd,
    )
    return Change(task, event, attempt_patch=patch, progress=change.progress, charge=charge)
