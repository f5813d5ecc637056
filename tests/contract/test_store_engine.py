"""The storage contract of what the assignment engine relies on: slots and load, touches,
the queue, claims, deadlines and dependents. Every test runs unchanged against every engine."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta, timezone
from typing import Any

import pytest

from dispatchd.domain import lifecycle
from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.models import AgentStatus, Priority, Task, TaskStatus
from dispatchd.engine.transitions import ops_for
from dispatchd.errors import AgentUnavailable, ConcurrentUpdate
from dispatchd.store.base import (
    AppendEvent,
    ClaimQuery,
    ClaimView,
    InsertAgent,
    InsertTask,
    Op,
    Store,
    TakeSlot,
    TaskFilter,
    TouchTask,
    UpdateTask,
)
from tests.contract.test_store import (
    T0,
    US,
    StoreFactory,
    insert,
    make_agent,
    make_event,
    make_task,
    nonzero,
)

S = TaskStatus
NOW = T0
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)
INDIA = timezone(timedelta(hours=5, minutes=30))


# --- helpers ----------------------------------------------------------------------------


def assign_op(task: Task, agent_id: str) -> UpdateTask:
    """The write that hands `task` (as stored) to `agent_id`."""
    new = task.evolve(status=S.ASSIGNED, assignee=agent_id, version=task.version + 1)
    return UpdateTask(new, task.status, task.assignee)


def query(agent_id: str = "me", **changes: Any) -> ClaimQuery:
    fields: dict[str, Any] = {
        "agent_id": agent_id,
        "capabilities": ["python"],
        "owner": None,
        "owner_filter": False,
        "now": NOW,
        "limit": 100,
    }
    fields.update(changes)
    return ClaimQuery(**fields)


async def load(store: Store, agent_id: str) -> int:
    agent = await store.get_agent(agent_id)
    assert agent is not None
    return agent.active


async def add_agent(store: Store, agent_id: str = "me", **changes: Any) -> None:
    await store.commit([InsertAgent(make_agent(agent_id, **changes))])


async def claimable_ids(store: Store, q: ClaimQuery) -> list[str]:
    return [t.id for t in await store.claimable(q)]


def ids(tasks: Sequence[Task]) -> set[str]:
    return {t.id for t in tasks}


async def snapshot(store: Store) -> tuple[Any, ...]:
    """Everything a rolled-back commit must leave as it was."""
    page = await store.list_tasks(TaskFilter(), limit=1000, cursor=None)
    agents = await store.all_agents()
    events = await store.read_events(after=0, limit=1000)
    counts = nonzero((await store.counts()).tasks_by_status)
    return page.items, agents, events, counts


# --- TakeSlot -----------------------------------------------------------------------------


async def test_take_slot_succeeds_up_to_the_limit(store: Store) -> None:
    await add_agent(store)
    await insert(store, make_task(status=S.RUNNING, assignee="me"))
    first, second, third = (make_task() for _ in range(3))
    await insert(store, first, second, third)

    await store.commit([TakeSlot("me", 3, NOW), assign_op(first, "me")])
    await store.commit([TakeSlot("me", 3, NOW), assign_op(second, "me")])
    assert await load(store, "me") == 3
    with pytest.raises(AgentUnavailable):
        await store.commit([TakeSlot("me", 3, NOW), assign_op(third, "me")])
    assert await store.get_task(third.id) == third
    assert await load(store, "me") == 3


async def test_take_slot_counts_tasks_given_earlier_in_the_commit(store: Store) -> None:
    await add_agent(store)
    tasks = [make_task() for _ in range(3)]
    await insert(store, *tasks)
    two = [TakeSlot("me", 2, NOW), assign_op(tasks[0], "me")]
    two += [TakeSlot("me", 2, NOW), assign_op(tasks[1], "me")]
    before = await snapshot(store)
    with pytest.raises(AgentUnavailable):
        await store.commit([*two, TakeSlot("me", 2, NOW), assign_op(tasks[2], "me")])
    assert await snapshot(store) == before

    await store.commit(two)
    assert await load(store, "me") == 2


async def test_take_slot_for_more_than_the_free_slots_writes_nothing(store: Store) -> None:
    await add_agent(store)
    await insert(store, make_task(status=S.RUNNING, assignee="me"))
    other, first, second = make_task(), make_task(), make_task()
    await insert(store, other, first, second)
    before = await snapshot(store)

    with pytest.raises(AgentUnavailable):
        await store.commit(
            [
                AppendEvent(make_event("task.cancelled", other.id)),
                UpdateTask(other.evolve(status=S.CANCELLED, version=2), S.PENDING),
                TakeSlot("me", 2, NOW, count=2),
                assign_op(first, "me"),
                assign_op(second, "me"),
                AppendEvent(make_event("task.assigned", first.id)),
            ]
        )
    assert await snapshot(store) == before
    assert await store.events_for_task(first.id) == []

    # The one free slot is there for one task.
    await store.commit([TakeSlot("me", 2, NOW, count=1), assign_op(first, "me")])
    assert await load(store, "me") == 2


async def test_take_slot_reserves_several_slots_at_once(store: Store) -> None:
    await add_agent(store)
    first, second = make_task(), make_task()
    await insert(store, first, second)
    await store.commit(
        [TakeSlot("me", 2, NOW, count=2), assign_op(first, "me"), assign_op(second, "me")]
    )
    assert await load(store, "me") == 2


@pytest.mark.parametrize("check_status", [True, False], ids=["checked", "unchecked"])
async def test_take_slot_refuses_a_drained_agent(store: Store, check_status: bool) -> None:
    await add_agent(store, drained=True)
    with pytest.raises(AgentUnavailable):
        await store.commit([TakeSlot("me", 5, NOW, check_status=check_status)])
    agent = await store.get_agent("me")
    assert agent is not None
    assert agent.last_assigned_at is None


@pytest.mark.parametrize("status", list(AgentStatus), ids=[s.value for s in AgentStatus])
@pytest.mark.parametrize("check_status", [True, False], ids=["checked", "unchecked"])
async def test_take_slot_checks_status_only_when_asked(
    store: Store, status: AgentStatus, check_status: bool
) -> None:
    await add_agent(store, status=status)
    take = [TakeSlot("me", 1, NOW, check_status=check_status)]
    if check_status and status in {AgentStatus.OFFLINE, AgentStatus.DEGRADED}:
        with pytest.raises(AgentUnavailable):
            await store.commit(take)
    else:
        await store.commit(take)


async def test_concurrent_take_slots_never_overfill_an_agent(
    store: Store, make_store: StoreFactory
) -> None:
    second = make_store()
    await second.open()
    try:
        await add_agent(store)
        tasks = [make_task() for _ in range(20)]
        await insert(store, *tasks)

        async def take(i: int, task: Task) -> bool:
            target = store if i % 2 else second
            try:
                await target.commit([TakeSlot("me", 5, NOW), assign_op(task, "me")])
            except AgentUnavailable:
                return False
            return True

        # A task group: a failure cancels the others before the second store closes.
        async with asyncio.TaskGroup() as group:
            running = [group.create_task(take(i, t)) for i, t in enumerate(tasks)]
        assert [r.result() for r in running].count(True) == 5
        assert await load(store, "me") == 5
        assert len(await store.active_tasks_of("me")) == 5
    finally:
        await second.close()


async def test_take_slot_refuses_an_unknown_agent(store: Store) -> None:
    task = make_task()
    await insert(store, task)
    with pytest.raises(AgentUnavailable):
        await store.commit([TakeSlot("nobody", 5, NOW), assign_op(task, "nobody")])
    assert await store.get_task(task.id) == task


async def test_take_slot_stamps_last_assigned_at(store: Store) -> None:
    agent = make_agent("me")
    await store.commit([InsertAgent(agent)])
    at = T0 + 7 * US
    await store.commit([TakeSlot("me", 1, at)])
    assert await store.get_agent("me") == agent.evolve(last_assigned_at=at)

    # A refused slot leaves the stamp alone.
    await insert(store, make_task(status=S.RUNNING, assignee="me"))
    with pytest.raises(AgentUnavailable):
        await store.commit([TakeSlot("me", 1, at + MINUTE)])
    assert await store.get_agent("me") == agent.evolve(last_assigned_at=at, active=1)


# --- agent load -----------------------------------------------------------------------------


async def test_inserting_a_held_task_raises_its_assignees_load(store: Store) -> None:
    await add_agent(store)
    await add_agent(store, "other")
    held = [make_task(status=s, assignee="me") for s in (S.ASSIGNED, S.RUNNING, S.WAITING_INPUT)]
    not_held = [
        make_task(status=s, assignee="me")
        for s in (S.PENDING, S.REVIEW, S.COMPLETED, S.FAILED, S.CANCELLED)
    ]
    await insert(store, *held, *not_held)
    assert await load(store, "me") == 3
    assert await load(store, "other") == 0


async def test_assigning_a_pending_task_raises_the_load(store: Store) -> None:
    await add_agent(store)
    task = make_task()
    await insert(store, task)
    await store.commit([assign_op(task, "me")])
    assert await load(store, "me") == 1


async def test_a_write_that_keeps_the_holder_keeps_the_load(store: Store) -> None:
    await add_agent(store)
    task = make_task(status=S.ASSIGNED, assignee="me")
    await insert(store, task)
    running = task.evolve(status=S.RUNNING, version=2)
    await store.commit([UpdateTask(running, S.ASSIGNED, "me")])
    waiting = running.evolve(status=S.WAITING_INPUT, version=3)
    await store.commit([UpdateTask(waiting, S.RUNNING, "me")])
    assert await load(store, "me") == 1


@pytest.mark.parametrize(
    "status",
    [S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.REVIEW, S.PENDING],
    ids=lambda s: s.value,
)
async def test_leaving_the_agents_hands_lowers_the_load(store: Store, status: TaskStatus) -> None:
    await add_agent(store)
    task = make_task(status=S.RUNNING, assignee="me")
    kept = make_task(status=S.RUNNING, assignee="me")
    await insert(store, task, kept)
    await store.commit([UpdateTask(task.evolve(status=status, version=2), S.RUNNING, "me")])
    assert await load(store, "me") == 1


async def test_reassignment_moves_the_load(store: Store) -> None:
    await add_agent(store, "a")
    await add_agent(store, "b")
    task = make_task(status=S.ASSIGNED, assignee="a")
    await insert(store, task)
    await store.commit([assign_op(task, "b")])
    assert (await load(store, "a"), await load(store, "b")) == (0, 1)


async def test_load_never_goes_below_zero(store: Store) -> None:
    # Held before the agent row existed: the row starts at 0 and the release cannot go under.
    task = make_task(status=S.RUNNING, assignee="me")
    await insert(store, task)
    await add_agent(store)
    assert await load(store, "me") == 0
    await store.commit([UpdateTask(task.evolve(status=S.COMPLETED, version=2), S.RUNNING, "me")])
    assert await load(store, "me") == 0

    await insert(store, make_task(status=S.ASSIGNED, assignee="me"))
    assert await load(store, "me") == 1


# --- TouchTask ------------------------------------------------------------------------------


async def test_touch_task_counts_a_dependent_and_bumps_the_version(store: Store) -> None:
    parent = make_task(status=S.RUNNING, assignee="me")
    await insert(store, parent)
    await store.commit([TouchTask(parent.id, 1)])
    await store.commit([TouchTask(parent.id, 2), TouchTask(parent.id, 3)])
    assert await store.get_task(parent.id) == parent.evolve(version=4, dependents=3)


async def test_stale_touch_rolls_back_the_commit(store: Store) -> None:
    parent = make_task(status=S.RUNNING, assignee="me")
    await insert(store, parent)
    await store.commit([TouchTask(parent.id, 1)])
    before = await snapshot(store)

    child = make_task(status=S.BLOCKED, depends_on=(parent.id,))
    with pytest.raises(ConcurrentUpdate):
        await store.commit(
            [
                InsertTask(child),
                AppendEvent(make_event("task.created", child.id)),
                TouchTask(parent.id, 1),
            ]
        )
    assert await snapshot(store) == before
    assert await store.children(parent.id) == []
    with pytest.raises(ConcurrentUpdate):
        await store.commit([TouchTask(new_id(), 1)])


async def test_touch_makes_a_transition_of_the_parent_conflict(store: Store) -> None:
    parent = make_task(status=S.RUNNING, assignee="me")
    await insert(store, parent)
    # Computed from version 1, before a child was counted.
    done = parent.evolve(status=S.COMPLETED, version=2)
    await store.commit([TouchTask(parent.id, 1)])
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateTask(done, S.RUNNING, "me")])
    assert await store.get_task(parent.id) == parent.evolve(version=2, dependents=1)


# --- claimable ----------------------------------------------------------------------------


async def test_claimable_is_pending_tasks_whose_backoff_ended(store: Store) -> None:
    ready = [make_task(), make_task(not_before=NOW - US), make_task(not_before=NOW)]
    waiting = make_task(not_before=NOW + US)
    others = [
        make_task(status=s, assignee=None if s is S.BLOCKED else "x")
        for s in (S.BLOCKED, S.ASSIGNED, S.RUNNING, S.COMPLETED)
    ]
    await insert(store, *ready, waiting, *others)
    assert set(await claimable_ids(store, query())) == ids(ready)


async def test_claimable_in_queue_order(store: Store) -> None:
    tie_ids = sorted(new_id() for _ in range(2))
    expected = [
        make_task(priority=Priority.CRITICAL, created_at=T0 + 9 * MINUTE),
        # Due soonest first; a due_at in another zone sorts by its instant.
        make_task(
            priority=Priority.HIGH,
            due_at=(T0 + 30 * MINUTE).astimezone(INDIA),
            created_at=T0 + 8 * MINUTE,
        ),
        make_task(priority=Priority.HIGH, due_at=T0 + 60 * MINUTE, created_at=T0 + 7 * MINUTE),
        make_task(
            priority=Priority.HIGH,
            due_at=T0 + 60 * MINUTE,
            created_at=T0 + 7 * MINUTE + US,
        ),
        # Without a due_at after those with one, then by age, then by id.
        make_task(priority=Priority.HIGH, created_at=T0),
        make_task(id=tie_ids[0], priority=Priority.HIGH, created_at=T0 + MINUTE),
        make_task(id=tie_ids[1], priority=Priority.HIGH, created_at=T0 + MINUTE),
        make_task(priority=Priority.MEDIUM, due_at=T0 + 90 * MINUTE, created_at=T0 + 5 * MINUTE),
        make_task(priority=Priority.MEDIUM, created_at=T0 - MINUTE),
        make_task(priority=Priority.LOW, due_at=T0, created_at=T0 - 2 * MINUTE),
    ]
    await insert(store, *reversed(expected))
    assert await claimable_ids(store, query()) == [t.id for t in expected]
    assert await store.claimable(query()) == expected


async def test_claimable_needs_a_subset_of_the_agents_capabilities(store: Store) -> None:
    capable = [
        make_task(capabilities=("python",)),
        make_task(capabilities=("sql", "python")),
        make_task(capabilities=()),
    ]
    incapable = [make_task(capabilities=("go",)), make_task(capabilities=("python", "go"))]
    await insert(store, *capable, *incapable)
    q = query(capabilities=["python", "sql", "rust"])
    assert set(await claimable_ids(store, q)) == ids(capable)
    assert set(await claimable_ids(store, query(capabilities=[]))) == {capable[2].id}


async def test_claimable_owner_filter(store: Store) -> None:
    nobodys = make_task(owner=None)
    xs = make_task(owner="x")
    ys = make_task(owner="y")
    await insert(store, nobodys, xs, ys)
    everyone = {nobodys.id, xs.id, ys.id}

    assert set(await claimable_ids(store, query(owner_filter=True))) == {nobodys.id}
    assert set(await claimable_ids(store, query(owner="x", owner_filter=True))) == {
        nobodys.id,
        xs.id,
    }
    assert set(await claimable_ids(store, query(owner_filter=False))) == everyone
    assert set(await claimable_ids(store, query(owner="x", owner_filter=False))) == everyone


async def test_claimable_skips_tasks_named_for_another_agent(store: Store) -> None:
    free = make_task()
    theirs = make_task(assigned_to="them")
    await insert(store, free, theirs)
    assert await claimable_ids(store, query()) == [free.id]


async def test_claimable_includes_tasks_named_for_the_agent_without_matching(
    store: Store,
) -> None:
    # Manual assignment skips the capability and owner match.
    mine = [
        make_task(assigned_to="me", capabilities=("go",)),
        make_task(assigned_to="me", owner="y"),
    ]
    not_ready = make_task(assigned_to="me", not_before=NOW + MINUTE)
    await insert(store, *mine, not_ready)
    q = query(capabilities=["python"], owner="x", owner_filter=True)
    assert set(await claimable_ids(store, q)) == ids(mine)


async def test_claimable_respects_the_limit(store: Store) -> None:
    tasks = [make_task(created_at=T0 + i * US) for i in range(5)]
    await insert(store, *tasks)
    assert await claimable_ids(store, query(limit=3)) == [t.id for t in tasks[:3]]


# --- claim --------------------------------------------------------------------------------


async def test_claim_plan_sees_the_agent_its_assigned_tasks_and_candidates(store: Store) -> None:
    await add_agent(store)
    assigned = [
        make_task(status=S.ASSIGNED, assignee="me", priority=Priority.LOW, created_at=T0),
        make_task(status=S.ASSIGNED, assignee="me", priority=Priority.HIGH, created_at=T0 + US),
        make_task(status=S.ASSIGNED, assignee="me", priority=Priority.LOW, created_at=T0 + US),
    ]
    candidates = [
        make_task(priority=Priority.MEDIUM, created_at=T0),
        make_task(priority=Priority.HIGH, created_at=T0 + US),
    ]
    unrelated = [
        make_task(status=S.RUNNING, assignee="me"),
        make_task(status=S.ASSIGNED, assignee="you"),
        make_task(capabilities=("go",)),
    ]
    await insert(store, *assigned, *candidates, *unrelated)
    seen: list[ClaimView] = []

    def plan(view: ClaimView) -> list[Op]:
        seen.append(view)
        return []

    assert await store.claim(query(), plan) == []
    (view,) = seen
    assert view.agent == await store.get_agent("me")
    assert view.agent is not None
    assert view.agent.active == 4
    assert view.assigned == [assigned[1], assigned[0], assigned[2]]
    assert view.candidates == [candidates[1], candidates[0]]


async def test_claim_by_an_unknown_agent_sees_no_agent(store: Store) -> None:
    await insert(store, make_task(), make_task(status=S.ASSIGNED, assignee="ghost"))
    seen: list[ClaimView] = []

    def plan(view: ClaimView) -> list[Op]:
        seen.append(view)
        return []

    assert await store.claim(query("ghost"), plan) == []
    assert seen == [ClaimView(None, [], [])]


async def test_claim_commits_the_plans_writes(store: Store) -> None:
    await add_agent(store)
    first, second = make_task(created_at=T0), make_task(created_at=T0 + US)
    await insert(store, first, second)
    at = T0 + 3 * US

    def plan(view: ClaimView) -> list[Op]:
        task = view.candidates[0]
        return [TakeSlot("me", 2, at), *ops_for(lifecycle.assign(task, "me", at), task)]

    events = await store.claim(query(), plan)
    assert [e.type for e in events] == ["task.assigned"]
    assert await store.read_events(after=0, limit=100) == events
    claimed = await store.get_task(first.id)
    assert claimed is not None
    assert (claimed.status, claimed.assignee, claimed.version) == (S.ASSIGNED, "me", 2)
    assert [a.agent_id for a in await store.attempts(first.id)] == ["me"]
    assert await store.get_task(second.id) == second
    agent = await store.get_agent("me")
    assert agent is not None
    assert (agent.active, agent.last_assigned_at) == (1, at)
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 1, "assigned": 1}


class Refused(Exception):
    pass


async def test_claim_whose_plan_raises_writes_nothing(store: Store) -> None:
    await add_agent(store)
    task = make_task()
    await insert(store, task)
    before = await snapshot(store)

    def plan(view: ClaimView) -> list[Op]:
        raise Refused

    with pytest.raises(Refused):
        await store.claim(query(), plan)
    assert await snapshot(store) == before

    # The store is still usable afterwards.
    def take(view: ClaimView) -> list[Op]:
        return [assign_op(t, "me") for t in view.candidates]

    await store.claim(query(), take)
    assert await load(store, "me") == 1


async def test_claim_whose_writes_fail_writes_nothing(store: Store) -> None:
    await add_agent(store)
    task = make_task()
    await insert(store, task)
    before = await snapshot(store)

    def plan(view: ClaimView) -> list[Op]:
        (candidate,) = view.candidates
        return [*ops_for(lifecycle.assign(candidate, "me", NOW), candidate), TakeSlot("me", 0, NOW)]

    with pytest.raises(AgentUnavailable):
        await store.claim(query(), plan)
    assert await snapshot(store) == before
    assert await store.attempts(task.id) == []


async def test_concurrent_claims_take_every_task_exactly_once(
    store: Store, make_store: StoreFactory
) -> None:
    # A second store on the same database stands for a second server process.
    second = make_store()
    await second.open()
    try:
        agents = [make_agent(f"claimer-{i:02d}") for i in range(20)]
        tasks = [make_task() for _ in range(200)]
        await store.commit([InsertAgent(a) for a in agents])
        await insert(store, *tasks)
        claimed: list[tuple[str, str]] = []

        async def claimer(agent_id: str, target: Store) -> None:
            taken: list[str] = []

            def plan(view: ClaimView) -> list[Op]:
                # Take every candidate; only what a committed claim took is counted.
                taken.clear()
                ops: list[Op] = []
                now = utcnow()
                for task in view.candidates:
                    ops.extend(ops_for(lifecycle.assign(task, agent_id, now), task))
                    taken.append(task.id)
                return ops

            while True:
                await target.claim(query(agent_id, now=utcnow(), limit=10), plan)
                if not taken:
                    return
                claimed.extend((task_id, agent_id) for task_id in taken)

        async with asyncio.TaskGroup() as group:
            for i, agent in enumerate(agents):
                group.create_task(claimer(agent.id, store if i % 2 else second))

        assert len(claimed) == 200
        holder = dict(claimed)
        assert set(holder) == ids(tasks)
        stored = await store.get_tasks(list(holder))
        assert {(t.id, t.status, t.assignee) for t in stored} == {
            (task_id, S.ASSIGNED, agent_id) for task_id, agent_id in claimed
        }
        per_agent = Counter(holder.values())
        assert {a.id: a.active for a in await store.all_agents()} == {
            a.id: per_agent[a.id] for a in agents
        }
        events = await store.read_events(after=0, limit=1000)
        assert Counter(e.type for e in events) == {"task.assigned": 200}
        assert nonzero((await store.counts()).tasks_by_status) == {"assigned": 200}
    finally:
        await second.close()


# --- due and next_deadline --------------------------------------------------------------------

SINCE = NOW - 60 * MINUTE


async def test_due_times_out_held_tasks_past_their_deadline(store: Store) -> None:
    late = [
        make_task(status=S.RUNNING, assignee="a", deadline_at=NOW - MINUTE),
        make_task(status=S.RUNNING, assignee="a", deadline_at=NOW),
        make_task(status=S.WAITING_INPUT, assignee="a", deadline_at=NOW - US),
    ]
    others = [
        make_task(status=S.RUNNING, assignee="a", deadline_at=NOW + US),
        make_task(status=S.RUNNING, assignee="a"),
        make_task(status=S.COMPLETED, assignee="a", deadline_at=NOW - MINUTE),
        make_task(status=S.REVIEW, assignee="a", deadline_at=NOW - MINUTE),
    ]
    await insert(store, *late, *others)
    due = await store.due(NOW, SINCE, 100)
    assert ids(due.timed_out) == ids(late)
    assert len(due) == len(late)


async def test_due_lease_lost(store: Store) -> None:
    lost = [
        make_task(status=S.RUNNING, assignee="a", lease_expires_at=NOW - MINUTE),
        make_task(status=S.RUNNING, assignee="a", lease_expires_at=NOW),
    ]
    others = [
        # Waiting for input, a task's lease does not count (one left from before does not).
        make_task(status=S.WAITING_INPUT, assignee="a", lease_expires_at=NOW - MINUTE),
        make_task(status=S.RUNNING, assignee="a", lease_expires_at=NOW + US),
        make_task(status=S.REVIEW, assignee="a", lease_expires_at=NOW - MINUTE),
        make_task(status=S.CANCELLED, assignee="a", lease_expires_at=NOW - MINUTE),
    ]
    await insert(store, *lost, *others)
    due = await store.due(NOW, SINCE, 100)
    assert ids(due.lease_lost) == ids(lost)
    assert len(due) == len(lost)


async def test_due_not_started(store: Store) -> None:
    late = [
        make_task(status=S.ASSIGNED, assignee="a", lease_expires_at=NOW - MINUTE),
        make_task(status=S.ASSIGNED, assignee="a", lease_expires_at=NOW),
    ]
    others = [
        make_task(status=S.ASSIGNED, assignee="a", lease_expires_at=NOW + US),
        make_task(status=S.ASSIGNED, assignee="a"),
    ]
    await insert(store, *late, *others)
    due = await store.due(NOW, SINCE, 100)
    assert ids(due.not_started) == ids(late)
    assert len(due) == len(late)


async def test_due_ready_is_backoffs_that_ended_since(store: Store) -> None:
    ready = [make_task(not_before=SINCE + US), make_task(not_before=NOW)]
    others = [
        make_task(not_before=SINCE),
        make_task(not_before=SINCE - MINUTE),
        make_task(not_before=NOW + US),
        make_task(),
        make_task(status=S.BLOCKED, not_before=NOW - MINUTE),
        make_task(status=S.CANCELLED, not_before=NOW - MINUTE),
    ]
    await insert(store, *ready, *others)
    due = await store.due(NOW, SINCE, 100)
    assert ids(due.ready) == ids(ready)
    assert len(due) == len(ready)


async def test_due_run_at_when_parents_are_completed(store: Store) -> None:
    done = make_task(status=S.COMPLETED)
    unfinished = make_task(status=S.RUNNING, assignee="a")
    await insert(store, done, unfinished)
    came = [
        make_task(status=S.BLOCKED, run_at=NOW - MINUTE),
        make_task(status=S.BLOCKED, run_at=NOW, depends_on=(done.id,)),
    ]
    others = [
        make_task(status=S.BLOCKED, run_at=NOW - MINUTE, depends_on=(done.id, unfinished.id)),
        make_task(status=S.BLOCKED, run_at=NOW + US),
        make_task(status=S.BLOCKED, depends_on=(done.id,)),
        make_task(status=S.PENDING, run_at=NOW - MINUTE),
    ]
    await insert(store, *came, *others)
    due = await store.due(NOW, SINCE, 100)
    assert ids(due.run_at) == ids(came)
    assert len(due) == len(came)


async def test_due_run_at_regardless_of_since(store: Store) -> None:
    # Unlike a backoff, a run_at that came stays due until the task is moved on.
    task = make_task(status=S.BLOCKED, run_at=SINCE - 60 * MINUTE)
    await insert(store, task)
    assert ids((await store.due(NOW, SINCE, 100)).run_at) == {task.id}
    assert await store.next_deadline(SINCE) == task.run_at


async def test_due_nothing_before_its_time(store: Store) -> None:
    later = NOW + MINUTE
    await insert(
        store,
        make_task(status=S.RUNNING, assignee="a", deadline_at=later, lease_expires_at=later),
        make_task(status=S.WAITING_INPUT, assignee="a", deadline_at=later, lease_expires_at=later),
        make_task(status=S.ASSIGNED, assignee="a", lease_expires_at=later),
        make_task(not_before=later),
        make_task(status=S.BLOCKED, run_at=later),
    )
    assert len(await store.due(NOW, SINCE, 100)) == 0


async def test_due_limit_bounds_each_kind(store: Store) -> None:
    timed_out = [
        make_task(status=S.RUNNING, assignee="a", deadline_at=NOW - MINUTE) for _ in range(3)
    ]
    not_started = [
        make_task(status=S.ASSIGNED, assignee="a", lease_expires_at=NOW - MINUTE) for _ in range(3)
    ]
    await insert(store, *timed_out, *not_started)
    due = await store.due(NOW, SINCE, 2)
    assert (len(due.timed_out), len(due.not_started)) == (2, 2)
    assert ids(due.timed_out) < ids(timed_out)
    assert ids(due.not_started) < ids(not_started)


async def test_due_backoffs_come_earliest_first_under_the_limit(store: Store) -> None:
    """The sweeper moves `since` past the last backoff of a full batch: the batch must be
    the earliest ones, or a later sweep would skip the rest."""
    ends = [NOW - k * SECOND for k in (5, 1, 4, 2, 3)]
    await insert(store, *[make_task(not_before=end) for end in ends])
    due = await store.due(NOW, SINCE, 3)
    assert [t.not_before for t in due.ready] == sorted(ends)[:3]


async def test_next_deadline_none_without_one(store: Store) -> None:
    assert await store.next_deadline(SINCE) is None
    parent = make_task(status=S.RUNNING, assignee="a")
    await insert(
        store,
        parent,
        make_task(),
        make_task(not_before=SINCE),
        make_task(status=S.BLOCKED, run_at=NOW, depends_on=(parent.id,)),
        # A backoff or a run_at counts only in the state it is waited on in.
        make_task(status=S.CANCELLED, not_before=NOW),
        make_task(run_at=NOW),
    )
    assert await store.next_deadline(SINCE) is None


async def test_next_deadline_is_the_earliest_of_every_kind(store: Store) -> None:
    steps = [
        (make_task(status=S.BLOCKED, run_at=NOW + 50 * MINUTE), NOW + 50 * MINUTE),
        (make_task(not_before=NOW + 40 * MINUTE), NOW + 40 * MINUTE),
        (
            make_task(status=S.ASSIGNED, assignee="a", lease_expires_at=NOW + 30 * MINUTE),
            NOW + 30 * MINUTE,
        ),
        (
            make_task(
                status=S.RUNNING,
                assignee="a",
                deadline_at=NOW + 20 * MINUTE,
                lease_expires_at=NOW + 25 * MINUTE,
            ),
            NOW + 20 * MINUTE,
        ),
        # Past deadlines count: they are due now.
        (
            make_task(status=S.RUNNING, assignee="a", lease_expires_at=NOW - 10 * MINUTE + US),
            NOW - 10 * MINUTE + US,
        ),
    ]
    for task, earliest in steps:
        await insert(store, task)
        assert await store.next_deadline(SINCE) == earliest


async def test_next_deadline_counts_backoffs_after_since_only(store: Store) -> None:
    await insert(store, make_task(not_before=SINCE), make_task(not_before=SINCE + US))
    assert await store.next_deadline(SINCE) == SINCE + US
    assert await store.next_deadline(SINCE + US) is None


async def test_next_deadline_counts_run_at_once_parents_are_completed(store: Store) -> None:
    parent = make_task(status=S.RUNNING, assignee="a")
    child = make_task(status=S.BLOCKED, run_at=NOW, depends_on=(parent.id,))
    await insert(store, parent, child)
    assert await store.next_deadline(SINCE) is None
    done = parent.evolve(status=S.COMPLETED, version=2)
    await store.commit([UpdateTask(done, S.RUNNING, "a")])
    assert await store.next_deadline(SINCE) == NOW


# --- children -------------------------------------------------------------------------------


async def test_children_are_the_blocked_dependents_in_id_order(store: Store) -> None:
    parent, other = make_task(status=S.RUNNING, assignee="a"), make_task()
    await insert(store, parent, other)
    child_ids = sorted(new_id() for _ in range(4))
    only_parent = make_task(id=child_ids[2], status=S.BLOCKED, depends_on=(parent.id,))
    both = make_task(id=child_ids[0], status=S.BLOCKED, depends_on=(other.id, parent.id))
    only_other = make_task(id=child_ids[1], status=S.BLOCKED, depends_on=(other.id,))
    # Already unblocked: no longer a child to act on.
    released = make_task(id=child_ids[3], status=S.PENDING, depends_on=(parent.id,))
    await insert(store, released, only_parent)
    await insert(store, only_other, both)

    assert await store.children(parent.id) == [both, only_parent]
    assert await store.children(other.id) == [both, only_other]
    assert await store.children(only_parent.id) == []
    assert await store.children(new_id()) == []
