"""The storage contract of the cheaper writes: a batch's inserts and events written as one
statement each, and updates that write only the columns that changed, behind the same
version check. Every test runs unchanged against every engine."""

from __future__ import annotations

import pytest

from dispatchd.domain.ids import new_id
from dispatchd.domain.models import Attempt, AttemptOutcome, Priority, TaskStatus
from dispatchd.errors import ConcurrentUpdate, DuplicateKey
from dispatchd.store.base import (
    AppendEvent,
    InsertTask,
    PatchAttempt,
    SaveAttempt,
    Store,
    TouchTask,
    UpdateTask,
)
from dispatchd.store.rows import to_row
from tests.contract.test_store import T0, full_task, insert, make_event, make_task, nonzero
from tests.contract.test_store_engine import query

S = TaskStatus


# --- a batch of inserts -------------------------------------------------------------------


async def test_a_batch_of_tasks_lands_with_its_events_in_order(store: Store) -> None:
    parent = make_task()
    await insert(store, parent)
    before = await store.last_event_id()
    tasks = [make_task(title=f"task {i}") for i in range(50)]
    # Some depend on the parent, one is blocked on it.
    tasks[3] = tasks[3].evolve(depends_on=(parent.id,), status=S.BLOCKED)
    ops = [InsertTask(t) for t in tasks] + [
        AppendEvent(make_event("task.created", t.id, i=i)) for i, t in enumerate(tasks)
    ]
    events = await store.commit(ops)

    assert [e.task_id for e in events] == [t.id for t in tasks]
    ids = [e.id for e in events]
    assert all(i is not None and i > before for i in ids)
    assert ids == sorted(set(ids))
    stored = await store.read_events(after=before, limit=1000)
    assert [(e.id, e.task_id, e.data) for e in stored] == [
        (e.id, t.id, {"i": i}) for i, (e, t) in enumerate(zip(events, tasks, strict=True))
    ]
    found = {t.id: t for t in await store.get_tasks([t.id for t in tasks])}
    assert found == {t.id: t for t in tasks}
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 50, "blocked": 1}
    assert [t.id for t in await store.children(parent.id)] == [tasks[3].id]


async def test_a_batch_of_attempts_lands(store: Store) -> None:
    tasks = [make_task(status=S.ASSIGNED, assignee=f"agent-{i}", attempt=1) for i in range(5)]
    attempts = [Attempt(t.id, 1, f"agent-{i}", assigned_at=T0) for i, t in enumerate(tasks)]
    await store.commit(
        [*(InsertTask(t) for t in tasks), *(SaveAttempt(a) for a in attempts)]
        + [AppendEvent(make_event("task.assigned", t.id)) for t in tasks]
    )
    for task, attempt in zip(tasks, attempts, strict=True):
        assert await store.attempts(task.id) == [attempt]


async def test_tasks_with_different_empty_columns_land_whole_in_one_batch(store: Store) -> None:
    # An insert names only the columns that hold a value: these four make three sets.
    plain = make_task()
    again = full_task().evolve(id=new_id(), idempotency_key="another")
    tasks = [plain, full_task(), make_task(owner="team-a"), again]
    events = await store.commit(
        [InsertTask(t) for t in tasks]
        + [AppendEvent(make_event("task.created", t.id)) for t in tasks]
    )
    assert [e.task_id for e in events] == [t.id for t in tasks]
    found = {t.id: t for t in await store.get_tasks([t.id for t in tasks])}
    assert found == {t.id: t for t in tasks}


async def test_a_column_an_insert_leaves_out_is_null(store: Store) -> None:
    # What a task leaves empty is not written: each of those columns must default to NULL
    # on every engine (a migration giving one a default would change what is read back).
    task = make_task()
    await insert(store, task)
    codec = store.connector.dialect.codec
    empty = [column for column, value in to_row(task, codec).items() if value is None]
    assert "owner" in empty and "progress_percent" in empty
    sql = store.connector.dialect.sql("SELECT * FROM tasks WHERE id = :id")
    raw = await store.connector.fetch_one(sql, {"id": task.id})
    assert raw is not None
    assert {column: raw[column] for column in empty} == dict.fromkeys(empty)
    assert await store.get_task(task.id) == task


async def test_a_batch_with_a_duplicate_writes_nothing(store: Store) -> None:
    existing = make_task()
    await insert(store, existing)
    before = await store.last_event_id()
    tasks = [make_task() for _ in range(10)]
    tasks[6] = tasks[6].evolve(id=existing.id)
    with pytest.raises(DuplicateKey):
        await store.commit(
            [InsertTask(t) for t in tasks]
            + [AppendEvent(make_event("task.created", t.id)) for t in tasks]
        )
    assert await store.get_tasks([t.id for t in tasks if t.id != existing.id]) == []
    assert await store.get_task(existing.id) == existing
    assert await store.last_event_id() == before
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 1}


# --- updates of the changed columns -------------------------------------------------------


async def test_an_update_from_its_read_writes_the_new_task(store: Store) -> None:
    task = full_task()
    await insert(store, task)
    done = task.evolve(
        status=S.COMPLETED,
        result=["any", {"json": 1}],
        summary=None,  # a column set to NULL is written too
        lease_expires_at=None,
        context={**task.context, "more": True},
        labels=(),
        version=task.version + 1,
    )
    await store.commit([UpdateTask(done, task.status, task.assignee, task)])
    assert await store.get_task(task.id) == done


async def test_an_update_writes_only_what_differs_from_its_read(store: Store) -> None:
    task = make_task(title="stored title", prompt="stored prompt")
    await insert(store, task)
    # The read it was computed from says otherwise about the title and the prompt, and the
    # new task agrees with that read: those columns are not written, the stored ones stay.
    read = task.evolve(title="read title", prompt="read prompt")
    running = read.evolve(status=S.RUNNING, assignee="agent-1", attempt=1, version=2)
    await store.commit([UpdateTask(running, S.PENDING, None, read)])
    stored = await store.get_task(task.id)
    assert stored == task.evolve(status=S.RUNNING, assignee="agent-1", attempt=1, version=2)


async def test_a_changed_priority_moves_the_task_in_the_queue(store: Store) -> None:
    first, second = make_task(created_at=T0), make_task(created_at=T0)
    first = first.evolve(id="a" + first.id)
    second = second.evolve(id="b" + second.id)
    await insert(store, first, second)
    assert [t.id for t in await store.claimable(query())] == [first.id, second.id]
    urgent = second.evolve(priority=Priority.CRITICAL, version=2)
    await store.commit([UpdateTask(urgent, S.PENDING, None, second)])
    assert [t.id for t in await store.claimable(query())] == [second.id, first.id]


@pytest.mark.parametrize("version", [1, 2, 4], ids=["older", "same", "skips-one"])
async def test_a_column_update_must_follow_the_stored_version(store: Store, version: int) -> None:
    task = make_task(version=2)
    await insert(store, task)
    new = task.evolve(status=S.CANCELLED, version=version)
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateTask(new, S.PENDING, None, task)])
    assert await store.get_task(task.id) == task


async def test_a_column_update_computed_before_a_touch_is_refused(store: Store) -> None:
    task, other = make_task(), make_task()
    await insert(store, task, other)
    # A child created meanwhile bumps the parent's version and counts itself.
    await store.commit([TouchTask(task.id, task.version)])
    stale = task.evolve(status=S.CANCELLED, version=task.version + 1)
    moved = other.evolve(status=S.CANCELLED, version=other.version + 1)
    before = await store.last_event_id()
    with pytest.raises(ConcurrentUpdate):
        await store.commit(
            [
                UpdateTask(moved, S.PENDING, None, other),
                UpdateTask(stale, S.PENDING, None, task),
                AppendEvent(make_event("task.cancelled", task.id)),
            ]
        )
    assert await store.get_task(other.id) == other
    assert await store.get_task(task.id) == task.evolve(version=task.version + 1, dependents=1)
    assert await store.last_event_id() == before


async def test_a_claims_updates_and_attempts_land_together(store: Store) -> None:
    """Ten tasks taken at once, each with its attempt, and one of them written twice in a
    row (started, then completed) with its attempt opened and closed: every row lands."""
    tasks = [make_task() for _ in range(10)]
    await insert(store, *tasks)
    ops = []
    taken = []
    for i, task in enumerate(tasks):
        running = task.evolve(status=S.RUNNING, assignee=f"agent-{i % 3}", attempt=1, version=2)
        taken.append(running)
        ops += [
            UpdateTask(running, S.PENDING, None, task),
            SaveAttempt(Attempt(task.id, 1, running.assignee or "", assigned_at=T0)),
        ]
    done = taken[4].evolve(status=S.COMPLETED, result="ok", version=3)
    ops += [
        UpdateTask(done, S.RUNNING, taken[4].assignee, taken[4]),
        PatchAttempt(done.id, 1, ended_at=T0, outcome=AttemptOutcome.COMPLETED),
    ]
    await store.commit(ops)
    expected = [*taken[:4], done, *taken[5:]]
    stored = {t.id: t for t in await store.get_tasks([t.id for t in tasks])}
    assert stored == {t.id: t for t in expected}
    attempts = await store.attempts(done.id)
    assert [(a.agent_id, a.ended_at, a.outcome) for a in attempts] == [
        ("agent-1", T0, AttemptOutcome.COMPLETED)
    ]
    assert nonzero((await store.counts()).tasks_by_status) == {"running": 9, "completed": 1}


async def test_one_stale_update_among_many_writes_none_of_them(store: Store) -> None:
    tasks = [make_task() for _ in range(6)]
    await insert(store, *tasks)
    await store.commit([TouchTask(tasks[3].id, tasks[3].version)])
    before = await store.last_event_id()
    ops = []
    for task in tasks:
        running = task.evolve(status=S.RUNNING, assignee="agent-1", attempt=1, version=2)
        ops += [
            UpdateTask(running, S.PENDING, None, task),
            SaveAttempt(Attempt(task.id, 1, "agent-1", assigned_at=T0)),
            AppendEvent(make_event("task.started", task.id)),
        ]
    with pytest.raises(ConcurrentUpdate):
        await store.commit(ops)
    stored = {t.id: t for t in await store.get_tasks([t.id for t in tasks])}
    assert stored == {
        t.id: t for t in [*tasks[:3], tasks[3].evolve(version=2, dependents=1), *tasks[4:]]
    }
    assert [await store.attempts(t.id) for t in tasks] == [[]] * 6
    assert await store.last_event_id() == before
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 6}


async def test_an_update_of_a_missing_task_is_a_conflict(store: Store) -> None:
    ghost = make_task(id=new_id())
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateTask(ghost.evolve(version=2), S.PENDING, None, ghost)])


async def test_a_batch_of_events_keeps_each_ones_room(store: Store) -> None:
    tasks = [make_task(scope="infra"), make_task(), make_task(scope="infra")]
    await store.commit(
        [InsertTask(t) for t in tasks]
        + [AppendEvent(make_event("task.created", t.id)) for t in tasks]
        + [AppendEvent(make_event("room.created", room="research"))]
    )
    infra = await store.room_events("infra", limit=10)
    assert [e.task_id for e in infra] == [tasks[2].id, tasks[0].id]
    assert [e.type for e in await store.room_events("research", limit=10)] == ["room.created"]
