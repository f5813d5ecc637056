"""The storage contract of schedules, on every engine: the rows, their deadline, and a fire
time fired once by two firers racing on one database, or by a firer restarted midway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatchd.config import Settings
from dispatchd.domain.ids import new_id
from dispatchd.domain.models import Priority, Task, TaskStatus
from dispatchd.domain.schedules import Fire, Misfire, Overlap, Schedule
from dispatchd.engine.firing import Firer
from dispatchd.engine.tasks import TaskService
from dispatchd.errors import ConcurrentUpdate, DuplicateKey
from dispatchd.runtime import policy_of
from dispatchd.store.base import InsertFire, InsertSchedule, InsertTask, Store, UpdateSchedule
from tests.contract.conftest import StoreFactory

T0 = datetime(2026, 3, 29, 0, 59, 58, 123456, tzinfo=UTC)


def make_schedule(**changes: Any) -> Schedule:
    s = Schedule(
        id=new_id(),
        name="daily-standup-report",
        schedule="0 9 * * 1-5",
        timezone="Europe/Berlin",
        task_template={"title": "Standup", "priority": "high", "context": {"é": ["ü", 1]}},
        created_by="admin",
        created_at=T0,
        updated_at=T0,
        misfire=Misfire.ALL,
        overlap=Overlap.CANCEL_PREVIOUS,
        catch_up_s=7200,
        next_fire_at=T0 + timedelta(hours=1),
    )
    return s.evolve(**changes)


def make_task(**changes: Any) -> Task:
    t = Task(
        id=new_id(),
        title="t",
        prompt="",
        status=TaskStatus.PENDING,
        priority=Priority.MEDIUM,
        capabilities=(),
        requester="admin",
        created_at=T0,
        updated_at=T0,
    )
    return t.evolve(**changes)


def firer_on(store: Store) -> Firer:
    return Firer(store, TaskService(store, policy_of(Settings())))


async def fired_events(store: Store) -> list[Any]:
    return [e for e in await store.read_events(after=0, limit=10_000) if e.type == "schedule.fired"]


async def test_a_schedule_round_trips(store: Store) -> None:
    s = make_schedule(last_fire_at=T0, last_task_id="t1")
    await store.commit([InsertSchedule(s)])
    assert await store.get_schedule(s.id) == s
    assert await store.get_schedule("nope") is None
    paused = s.evolve(paused=True, next_fire_at=None, version=2)
    await store.commit([UpdateSchedule(paused)])
    assert await store.get_schedule(s.id) == paused
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateSchedule(s.evolve(name="stale", version=2))])
    assert await store.get_schedule(s.id) == paused


async def test_schedules_list_by_id_in_pages(store: Store) -> None:
    made = [make_schedule() for _ in range(5)]
    await store.commit([InsertSchedule(s) for s in made])
    first = await store.list_schedules(limit=3, cursor=None)
    assert first.next_cursor is not None
    rest = await store.list_schedules(limit=3, cursor=first.next_cursor)
    assert rest.next_cursor is None
    assert [s.id for s in first.items + rest.items] == sorted(s.id for s in made)


async def test_next_fire_at_is_a_deadline(store: Store) -> None:
    soon = make_schedule(next_fire_at=T0 + timedelta(minutes=1))
    later = make_schedule(next_fire_at=T0 + timedelta(minutes=2))
    paused = make_schedule(next_fire_at=None, paused=True)
    await store.commit([InsertSchedule(x) for x in (later, paused, soon)])
    assert await store.next_deadline(T0) == soon.next_fire_at
    assert await store.due_schedules(T0, 10) == []
    due = await store.due_schedules(T0 + timedelta(minutes=5), 10)
    assert [s.id for s in due] == [soon.id, later.id]
    assert [s.id for s in await store.due_schedules(T0 + timedelta(minutes=5), 1)] == [soon.id]


async def test_a_fire_time_is_recorded_once_and_a_repeat_writes_nothing(store: Store) -> None:
    s = make_schedule()
    await store.commit([InsertSchedule(s)])
    first = make_task()
    await store.commit([InsertFire(Fire(s.id, T0, first.id, T0)), InsertTask(first)])
    again = make_task()
    with pytest.raises(DuplicateKey):
        await store.commit([InsertFire(Fire(s.id, T0, again.id, T0)), InsertTask(again)])
    assert await store.get_task(again.id) is None
    assert await store.schedule_fires(s.id, limit=10) == [Fire(s.id, T0, first.id, T0)]


async def test_a_firing_that_fails_midway_leaves_its_fire_time_to_fire(store: Store) -> None:
    s = make_schedule()
    taken = make_task()
    await store.commit([InsertSchedule(s), InsertTask(taken)])
    # The task insert fails after the fire record: the whole commit goes.
    with pytest.raises(DuplicateKey):
        await store.commit([InsertFire(Fire(s.id, T0, taken.id, T0)), InsertTask(taken)])
    assert await store.schedule_fires(s.id, limit=10) == []


async def test_delete_takes_the_fire_records(store: Store) -> None:
    s = make_schedule()
    await store.commit([InsertSchedule(s), InsertFire(Fire(s.id, T0, None, T0))])
    assert await store.delete_schedule(s.id) is True
    assert await store.delete_schedule(s.id) is False
    assert await store.get_schedule(s.id) is None
    assert await store.schedule_fires(s.id, limit=10) == []


async def test_two_firers_on_one_database_fire_each_time_once(make_store: StoreFactory) -> None:
    stores = [make_store(), make_store()]
    for st in stores:
        await st.open()
    try:
        await stores[0].migrate()
        due = datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
        made = [
            make_schedule(schedule="0 * * * *", timezone="UTC", next_fire_at=due, misfire=m)
            for m in (Misfire.SKIP, Misfire.LATEST, Misfire.ALL)
            for _ in range(4)
        ]
        await stores[0].commit([InsertSchedule(s) for s in made])
        firers = [firer_on(st) for st in stores]
        now = due + timedelta(seconds=5)
        counts = await asyncio.gather(*(f.fire_due(now) for f in firers * 2))
        assert sum(counts) == len(made)
        events = await fired_events(stores[1])
        assert sorted(e.data["schedule_id"] for e in events) == sorted(s.id for s in made)
        for s in made:
            fires = await stores[1].schedule_fires(s.id, limit=10)
            assert [f.fire_time for f in fires] == [due]
            task = await stores[1].get_task(fires[0].task_id or "")
            assert task is not None and task.schedule_id == s.id
            after = await stores[1].get_schedule(s.id)
            assert after is not None
            assert after.next_fire_at == due + timedelta(hours=1)
            assert after.last_task_id == task.id
    finally:
        for st in stores:
            await st.close()


async def test_a_restarted_firer_with_an_old_read_fires_nothing_again(
    make_store: StoreFactory,
) -> None:
    before, after = make_store(), make_store()
    await before.open()
    await before.migrate()
    due = datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    s = make_schedule(schedule="0 * * * *", timezone="UTC", next_fire_at=due)
    await before.commit([InsertSchedule(s)])
    try:
        assert await firer_on(before).fire_due(due + timedelta(seconds=1)) == 1
    finally:
        await before.close()  # the replica "dies" here
    await after.open()
    try:
        restarted = firer_on(after)
        # It had read the schedule before the firing landed: the fire record stops it.
        assert await restarted._fire(s, due, due + timedelta(hours=1), None) is None
        assert await restarted.fire_due(due + timedelta(seconds=2)) == 0
        # Even a schedule pointing at that time again, at its current version (only the
        # fire record to stop it), does not fire it twice; it moves on.
        current = await after.get_schedule(s.id)
        assert current is not None
        back = current.evolve(next_fire_at=due, version=current.version + 1)
        await after.commit([UpdateSchedule(back)])
        assert await restarted.fire_due(due + timedelta(seconds=3)) == 0
        assert len(await fired_events(after)) == 1
        assert len(await after.schedule_fires(s.id, limit=10)) == 1
        moved = await after.get_schedule(s.id)
        assert moved is not None and moved.next_fire_at == due + timedelta(hours=1)
    finally:
        await after.close()


async def test_a_schedule_that_cannot_fire_is_paused_and_the_others_fire(store: Store) -> None:
    due = datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    broken = make_schedule(timezone="Mars/Olympus_Mons", next_fire_at=due)
    bad_template = make_schedule(
        schedule="0 * * * *", timezone="UTC", next_fire_at=due, task_template={"nope": 1}
    )
    good = make_schedule(schedule="0 * * * *", timezone="UTC", next_fire_at=due)
    await store.commit([InsertSchedule(x) for x in (broken, bad_template, good)])
    assert await firer_on(store).fire_due(due + timedelta(seconds=1)) == 1
    stopped = await store.get_schedule(broken.id)
    assert stopped is not None and stopped.paused and stopped.next_fire_at is None
    passed = await store.get_schedule(bad_template.id)
    assert passed is not None and passed.next_fire_at == due + timedelta(hours=1)
    assert passed.last_task_id is None
    failed = [
        e.data["schedule_id"]
        for e in await store.read_events(after=0, limit=100)
        if e.type == "schedule.fire_failed"
    ]
    assert sorted(failed) == sorted([broken.id, bad_template.id])
    assert [e.data["schedule_id"] for e in await fired_events(store)] == [good.id]
