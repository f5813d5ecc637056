"""The storage contract of costs: a task's and an attempt's cost round trip, `AddCost`
sums the ledger per requester, agent and UTC day in the commit it belongs to, and
`cost_totals` and `spent_usd` read it. Every test runs unchanged against every engine."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from dispatchd.domain.costs import Charge, Cost
from dispatchd.domain.lifecycle import AttemptPatch
from dispatchd.domain.models import Attempt, Event, TaskStatus
from dispatchd.errors import ConcurrentUpdate
from dispatchd.store.base import (
    AddCost,
    AppendEvent,
    CostTotal,
    InsertTask,
    SaveAttempt,
    Store,
    UpdateTask,
)
from tests.contract.test_store import T0, make_task

DAY = date(2024, 2, 29)


def charge(requester: str, agent: str, usd: float, tokens: int = 0, day: date = DAY) -> AddCost:
    return AddCost(Charge(requester, agent, day, Cost(usd, tokens, tokens * 2)))


async def test_attempt_cost_is_saved_patched_and_kept(store: Store) -> None:
    task = make_task(status=TaskStatus.RUNNING, attempt=1, assignee="w1")
    attempt = Attempt(task.id, 1, "w1", T0, cost=Cost(0.1, 1, 2))
    await store.commit([InsertTask(task), SaveAttempt(attempt)])
    assert (await store.attempts(task.id))[0].cost == Cost(0.1, 1, 2)
    await store.commit([AttemptPatch(task.id, 1, cost=Cost(0.25, 10, 20))])
    assert (await store.attempts(task.id))[0].cost == Cost(0.25, 10, 20)
    # A patch without a cost leaves it as it is.
    await store.commit([AttemptPatch(task.id, 1, error="boom")])
    (patched,) = await store.attempts(task.id)
    assert patched.cost == Cost(0.25, 10, 20) and patched.error == "boom"


async def test_a_task_without_costs_reads_back_zero(store: Store) -> None:
    task = make_task()
    await store.commit([InsertTask(task)])
    loaded = await store.get_task(task.id)
    assert loaded is not None
    assert loaded.cost == Cost() and loaded.attempt_cost == Cost()
    assert loaded.max_cost_usd is None and loaded.error_code is None


async def test_the_ledger_sums_per_requester_agent_and_day(store: Store) -> None:
    assert await store.cost_totals(since=DAY, limit=100) == []
    assert await store.spent_usd("alice", DAY) == 0.0
    await store.commit([charge("alice", "w1", 0.25, 10), charge("alice", "w2", 0.5, 1)])
    await store.commit([charge("alice", "w1", 0.125, 5), charge("bob", "w1", 2.0, 3)])
    await store.commit([charge("alice", "w1", 1.0, 1, day=DAY - timedelta(days=1))])
    assert await store.cost_totals(since=DAY, limit=100) == [
        CostTotal(DAY, "alice", "w1", Cost(0.375, 15, 30)),
        CostTotal(DAY, "alice", "w2", Cost(0.5, 1, 2)),
        CostTotal(DAY, "bob", "w1", Cost(2.0, 3, 6)),
    ]
    everything = await store.cost_totals(since=DAY - timedelta(days=7), limit=100)
    assert [(t.day, t.requester, t.agent) for t in everything] == [
        (DAY - timedelta(days=1), "alice", "w1"),
        (DAY, "alice", "w1"),
        (DAY, "alice", "w2"),
        (DAY, "bob", "w1"),
    ]
    assert len(await store.cost_totals(since=DAY, limit=2)) == 2
    assert await store.spent_usd("alice", DAY) == pytest.approx(0.875)
    assert await store.spent_usd("alice", DAY - timedelta(days=1)) == pytest.approx(1.0)
    assert await store.spent_usd("carol", DAY) == 0.0


async def test_a_charge_is_written_with_its_commit_or_not_at_all(store: Store) -> None:
    task = make_task(status=TaskStatus.RUNNING, attempt=1, assignee="w1")
    await store.commit([InsertTask(task)])
    stale = task.evolve(version=task.version + 5, cost=Cost(9.0))
    event = Event("task.progress", T0, task.id, "w1", {"cost": {"usd": 9.0}})
    with pytest.raises(ConcurrentUpdate):
        await store.commit(
            [
                UpdateTask(stale, TaskStatus.RUNNING, "w1"),
                charge("alice", "w1", 9.0),
                AppendEvent(event),
            ]
        )
    assert await store.cost_totals(since=DAY, limit=10) == []
    assert await store.spent_usd("alice", DAY) == 0.0
    moved = task.evolve(version=task.version + 1, cost=Cost(1.5), attempt_cost=Cost(1.5))
    await store.commit([UpdateTask(moved, TaskStatus.RUNNING, "w1"), charge("alice", "w1", 1.5)])
    assert await store.spent_usd("alice", DAY) == 1.5
    loaded = await store.get_task(task.id)
    assert loaded is not None and loaded.cost == Cost(1.5)
