"""The storage contract of consumer cursors and retention: `SaveCursor` / `get_cursor`,
`Store.prune`, and the `Pruner` that drives it in batches. Every test runs unchanged against
every engine."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from dispatchd.config import EventsConfig
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Attempt, Comment, Event, ProgressEntry, TaskStatus
from dispatchd.domain.notifications import Kind, Notification
from dispatchd.errors import ConcurrentUpdate
from dispatchd.events import retention
from dispatchd.events.retention import Pruner
from dispatchd.store.base import (
    RETENTION_CURSOR,
    AppendComment,
    AppendEvent,
    AppendProgress,
    InsertNotification,
    InsertTask,
    Pruned,
    SaveAttempt,
    SaveCursor,
    Store,
    UpdateTask,
)
from dispatchd.store.postgres import PostgresStore
from dispatchd.store.sqlite import SQLiteStore
from tests.contract.test_store import T0, insert, make_event, make_task, nonzero

S = TaskStatus
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
TERMINAL = (S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT)
UNFINISHED = (S.PENDING, S.BLOCKED, S.ASSIGNED, S.RUNNING, S.WAITING_INPUT, S.REVIEW)
# Where a task's own rows live besides the task: (table, column holding the task id).
TASK_ROWS = (
    ("attempts", "task_id"),
    ("progress", "task_id"),
    ("comments", "task_id"),
    ("task_deps", "parent_id"),
    ("task_deps", "child_id"),
)


# --- helpers ----------------------------------------------------------------------------


async def append(store: Store, *created: datetime) -> list[int]:
    """Append one event per timestamp, in that order (ids ascending); their ids."""
    events = await store.commit(
        [
            AppendEvent(Event(type="task.progress", created_at=at, data={"n": i}))
            for i, at in enumerate(created)
        ]
    )
    ids = [e.id for e in events]
    assert all(isinstance(i, int) for i in ids)
    return [int(i) for i in ids if i is not None]


async def log_ids(store: Store) -> list[int]:
    return [int(e.id or 0) for e in await store.read_events(after=0, limit=10_000)]


async def rows_of(store: Store, table: str, column: str, ids: Sequence[str]) -> int:
    """How many rows of `table` name one of `ids` in `column` (read past the store's API, as
    rows no public read can reach, such as a dependency edge whose child is gone)."""
    wanted = list(ids)
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        try:
            marks = ", ".join("?" for _ in wanted)
            sql = f"SELECT count(*) FROM {table} WHERE {column} IN ({marks})"
            return int(conn.execute(sql, wanted).fetchone()[0])
        finally:
            conn.close()
    assert isinstance(store, PostgresStore)
    async with await psycopg.AsyncConnection.connect(store.url) as pg:
        cur = await pg.execute(
            f"SELECT count(*) FROM {table} WHERE {column} = ANY(%(ids)s)", {"ids": wanted}
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def with_history(store: Store, status: TaskStatus, **changes: Any) -> str:
    """A task in `status` with an attempt, a progress entry and a comment; its id."""
    task = make_task(status=status, attempt=1, assignee="agent-1", **changes)
    await store.commit(
        [
            InsertTask(task),
            SaveAttempt(Attempt(task.id, 1, "agent-1", assigned_at=T0)),
            AppendProgress(ProgressEntry(task.id, 1, "agent-1", "halfway", 50.0, T0)),
            AppendComment(Comment(task.id, "someone", "a remark", T0)),
        ]
    )
    return task.id


# --- consumer cursors ---------------------------------------------------------------------


async def test_save_cursor_upserts_and_get_cursor_reads(store: Store) -> None:
    assert await store.get_cursor("webhooks") is None

    await store.commit([SaveCursor("webhooks", 5, T0)])
    assert await store.get_cursor("webhooks") == 5
    assert await store.get_cursor("notifier") is None

    # A second save replaces the first, whatever its value: the reader says where it is.
    await store.commit([SaveCursor("webhooks", 12, T0 + SECOND)])
    assert await store.get_cursor("webhooks") == 12
    await store.commit([SaveCursor("webhooks", 9, T0 + 2 * SECOND)])
    assert await store.get_cursor("webhooks") == 9

    # Names are independent; two saves in one commit both land.
    await store.commit([SaveCursor("notifier", 3, T0), SaveCursor("hermes", 2**40, T0)])
    assert await store.get_cursor("notifier") == 3
    assert await store.get_cursor("hermes") == 2**40
    assert await store.get_cursor("webhooks") == 9


async def test_save_cursor_lands_with_the_readers_own_writes(store: Store) -> None:
    task = make_task()
    events = await store.commit(
        [
            InsertTask(task),
            AppendEvent(make_event("task.created", task.id)),
            SaveCursor("webhooks", 41, T0),
        ]
    )
    assert len(events) == 1
    assert await store.get_task(task.id) == task
    assert await store.get_cursor("webhooks") == 41


async def test_save_cursor_is_undone_with_a_failing_commit(store: Store) -> None:
    task = make_task()
    await insert(store, task)
    await store.commit([SaveCursor("webhooks", 7, T0)])
    stale = task.evolve(status=S.CANCELLED, version=3)  # the row is at version 1

    with pytest.raises(ConcurrentUpdate):
        await store.commit(
            [
                SaveCursor("webhooks", 8, T0),
                SaveCursor("notifier", 8, T0),
                UpdateTask(stale, S.PENDING),
            ]
        )
    assert await store.get_cursor("webhooks") == 7
    assert await store.get_cursor("notifier") is None
    assert await store.get_task(task.id) == task


# --- pruning the event log ----------------------------------------------------------------


async def test_prune_deletes_only_the_leading_run_of_old_events(store: Store) -> None:
    # The third event is newer than the cutoff; the two after it are older again.
    ids = await append(store, T0, T0 + SECOND, T0 + 10 * SECOND, T0 + 2 * SECOND, T0 + 3 * SECOND)
    cutoff = T0 + 5 * SECOND

    pruned = await store.prune(events_before=cutoff, tasks_before=None, limit=100)

    assert pruned == Pruned(events=2, tasks=0)
    assert await log_ids(store) == ids[2:]
    assert await store.get_cursor(RETENTION_CURSOR) == ids[1]
    # Nothing more to delete: the cursor stays where it was.
    assert await store.prune(events_before=cutoff, tasks_before=None, limit=100) == Pruned()
    assert await store.get_cursor(RETENTION_CURSOR) == ids[1]


async def test_prune_keeps_an_event_created_exactly_at_the_cutoff(store: Store) -> None:
    ids = await append(store, T0, T0 + SECOND, T0 + 2 * SECOND)

    pruned = await store.prune(events_before=T0 + SECOND, tasks_before=None, limit=100)

    assert pruned.events == 1
    assert await log_ids(store) == ids[1:]
    assert await store.get_cursor(RETENTION_CURSOR) == ids[0]


async def test_prune_of_a_log_with_nothing_old_records_nothing(store: Store) -> None:
    ids = await append(store, T0 + DAY, T0)  # the first is new, so nothing is a prefix

    assert await store.prune(events_before=T0 + SECOND, tasks_before=None, limit=100) == Pruned()
    assert await log_ids(store) == ids
    assert await store.get_cursor(RETENTION_CURSOR) is None


async def test_prune_of_an_empty_log_records_nothing(store: Store) -> None:
    assert await store.prune(events_before=T0, tasks_before=T0, limit=100) == Pruned()
    assert await store.get_cursor(RETENTION_CURSOR) is None


async def test_prune_deletes_at_most_limit_events_per_call(store: Store) -> None:
    ids = await append(store, *(T0 + i * SECOND for i in range(5)), T0 + DAY)
    cutoff = T0 + 60 * SECOND

    seen = []
    for _ in range(4):
        pruned = await store.prune(events_before=cutoff, tasks_before=None, limit=2)
        seen.append((pruned.events, await store.get_cursor(RETENTION_CURSOR)))

    assert seen == [(2, ids[1]), (2, ids[3]), (1, ids[4]), (0, ids[4])]
    assert await log_ids(store) == ids[5:]


async def test_events_continue_after_the_cursor_once_the_whole_log_is_pruned(
    store: Store,
) -> None:
    ids = await append(store, T0, T0 + SECOND)
    await store.prune(events_before=T0 + DAY, tasks_before=None, limit=100)
    assert await log_ids(store) == []

    # Ids are never handed out twice: new events come after the retention cursor.
    (later,) = await append(store, T0 + 2 * SECOND)
    assert later > ids[-1]
    assert [e.id for e in await store.read_events(after=ids[-1], limit=10)] == [later]


async def test_prune_without_events_before_leaves_the_log_alone(store: Store) -> None:
    ids = await append(store, T0, T0 + SECOND)
    done = await with_history(store, S.COMPLETED, finished_at=T0)

    pruned = await store.prune(events_before=None, tasks_before=T0 + DAY, limit=100)

    assert pruned == Pruned(events=0, tasks=1)
    assert await store.get_task(done) is None
    assert await log_ids(store) == ids
    assert await store.get_cursor(RETENTION_CURSOR) is None


# --- pruning finished tasks ---------------------------------------------------------------


async def test_prune_deletes_finished_tasks_with_their_rows(store: Store) -> None:
    cutoff = T0 + DAY
    old = {status: await with_history(store, status, finished_at=T0) for status in TERMINAL}
    # A finished task one microsecond short of the cutoff goes; one finished at it stays.
    edge = await with_history(store, S.COMPLETED, finished_at=cutoff - timedelta(microseconds=1))
    at_cutoff = await with_history(store, S.FAILED, finished_at=cutoff)
    recent = await with_history(store, S.CANCELLED, finished_at=cutoff + DAY)
    # Unfinished tasks stay even with an old finished_at (a retried task keeps its last one).
    unfinished = {
        status: await with_history(store, status, finished_at=T0) for status in UNFINISHED
    }
    never = await with_history(store, S.PENDING)

    # Dependency edges in both directions: a pruned parent of a kept child, and a pruned
    # child of a kept parent.
    kept_parent = make_task(status=S.COMPLETED, finished_at=cutoff + DAY)
    await insert(store, kept_parent)
    pruned_child = make_task(status=S.CANCELLED, finished_at=T0, depends_on=(kept_parent.id,))
    kept_child = make_task(status=S.BLOCKED, depends_on=(old[S.COMPLETED],))
    await insert(store, pruned_child, kept_child)
    assert [t.id for t in await store.children(old[S.COMPLETED])] == [kept_child.id]

    gone = [*old.values(), edge, pruned_child.id]
    kept = [at_cutoff, recent, *unfinished.values(), never, kept_parent.id, kept_child.id]
    before = nonzero((await store.counts()).tasks_by_status)
    events = await log_ids(store)

    pruned = await store.prune(events_before=None, tasks_before=cutoff, limit=100)

    assert pruned == Pruned(events=0, tasks=len(gone))
    for task_id in gone:
        assert await store.get_task(task_id) is None, task_id
        assert await store.task_detail(task_id) is None, task_id
        assert await store.attempts(task_id) == [], task_id
    for table, column in TASK_ROWS:
        assert await rows_of(store, table, column, gone) == 0, (table, column)
    for task_id in kept:
        assert await store.get_task(task_id) is not None, task_id
    for task_id in [at_cutoff, recent, *unfinished.values(), never]:
        detail = await store.task_detail(task_id)
        assert detail is not None
        assert (len(detail.attempts), len(detail.progress), len(detail.comments)) == (1, 1, 1)
    assert await store.children(old[S.COMPLETED]) == []
    assert await rows_of(store, "task_deps", "child_id", [kept_child.id]) == 0

    after = nonzero((await store.counts()).tasks_by_status)
    expected = dict(before)
    for status, n in {"completed": 2, "failed": 1, "cancelled": 2, "timed_out": 1}.items():
        expected[status] -= n
    assert after == nonzero(expected)
    # Tasks leave; the log, which tells their history, is retention's other half.
    assert await log_ids(store) == events
    assert await store.get_cursor(RETENTION_CURSOR) is None


async def test_prune_deletes_at_most_limit_tasks_oldest_first(store: Store) -> None:
    ids = [await with_history(store, S.COMPLETED, finished_at=T0 + i * SECOND) for i in (3, 1, 2)]
    cutoff = T0 + DAY

    first = await store.prune(events_before=None, tasks_before=cutoff, limit=2)
    assert first == Pruned(tasks=2)
    # The two that finished first are the ones gone.
    assert [await store.get_task(i) is None for i in ids] == [False, True, True]
    assert await store.prune(events_before=None, tasks_before=cutoff, limit=2) == Pruned(tasks=1)
    assert await store.prune(events_before=None, tasks_before=cutoff, limit=2) == Pruned()
    assert nonzero((await store.counts()).tasks_by_status) == {}


async def test_prune_without_tasks_before_leaves_tasks_alone(store: Store) -> None:
    done = await with_history(store, S.COMPLETED, finished_at=T0)
    ids = await append(store, T0)

    pruned = await store.prune(events_before=T0 + DAY, tasks_before=None, limit=100)

    assert pruned == Pruned(events=1, tasks=0)
    assert await store.get_task(done) is not None
    assert await store.get_cursor(RETENTION_CURSOR) == ids[0]
    assert nonzero((await store.counts()).tasks_by_status) == {"completed": 1}


# --- the pruner ---------------------------------------------------------------------------


def config(events_days: float, tasks_days: float) -> EventsConfig:
    return EventsConfig(retention_days=events_days, finished_task_retention_days=tasks_days)


async def test_pruner_with_zero_retention_keeps_everything(store: Store) -> None:
    ids = await append(store, T0, T0 + SECOND)
    done = await with_history(store, S.COMPLETED, finished_at=T0)

    pruned = await Pruner(store, config(0, 0)).prune(now=utcnow())

    assert pruned == Pruned()
    assert await log_ids(store) == ids
    assert await store.get_task(done) is not None
    assert await store.get_cursor(RETENTION_CURSOR) is None


async def test_pruner_keeps_each_kind_whose_retention_is_zero(store: Store) -> None:
    ids = await append(store, T0)
    done = await with_history(store, S.FAILED, finished_at=T0)

    assert await Pruner(store, config(0, 1)).prune(now=utcnow()) == Pruned(tasks=1)
    assert await log_ids(store) == ids
    assert await store.get_task(done) is None

    assert await Pruner(store, config(1, 0)).prune(now=utcnow()) == Pruned(events=1)
    assert await log_ids(store) == []


async def test_pruner_loops_over_batches_until_done(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)
    now = utcnow()
    old_events = await append(store, *(now - 40 * DAY + i * SECOND for i in range(8)))
    new_events = await append(store, now - DAY, now)
    old_tasks = [
        await with_history(store, S.COMPLETED, finished_at=now - 100 * DAY + i * SECOND)
        for i in range(7)
    ]
    recent = await with_history(store, S.COMPLETED, finished_at=now - 10 * DAY)

    limits: list[int] = []
    prune = store.prune

    async def counted(**kwargs: Any) -> Pruned:
        limits.append(kwargs["limit"])
        return await prune(**kwargs)

    monkeypatch.setattr(store, "prune", counted)

    pruned = await Pruner(store, config(30, 90)).prune(now=now)

    assert pruned == Pruned(events=8, tasks=7)
    assert len(limits) >= 3 and set(limits) == {3}  # 8 and 7 rows take three batches of 3
    assert await log_ids(store) == new_events
    assert await store.get_cursor(RETENTION_CURSOR) == old_events[-1]
    assert all([await store.get_task(i) is None for i in old_tasks])
    assert await store.get_task(recent) is not None
    assert nonzero((await store.counts()).tasks_by_status) == {"completed": 1}
    # A second run finds nothing left.
    assert await Pruner(store, config(30, 90)).prune(now=now) == Pruned()


async def test_pruner_stops_after_an_exact_multiple_of_the_batch(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)
    now = utcnow()
    old = await append(store, *(now - 40 * DAY + i * SECOND for i in range(6)))

    assert await Pruner(store, config(30, 0)).prune(now=now) == Pruned(events=6)
    assert await log_ids(store) == []
    assert await store.get_cursor(RETENTION_CURSOR) == old[-1]


async def test_prune_deletes_notifications_older_than_the_events_cutoff(store: Store) -> None:
    def note(age: timedelta) -> InsertNotification:
        return InsertNotification(
            Notification(
                kind=Kind.FAILED, task_id=None, data={"n": 1}, event_id=1, created_at=T0 - age
            )
        )

    await store.commit([note(timedelta(days=3)), note(timedelta(days=2)), note(timedelta(0))])
    pruned = await store.prune(events_before=T0 - timedelta(days=1), tasks_before=None, limit=1)
    assert pruned.notifications == 1
    pruned = await store.prune(events_before=T0 - timedelta(days=1), tasks_before=None, limit=5)
    assert pruned.notifications == 1
    left = await store.list_notifications(after=0, limit=10, unacknowledged_only=False)
    assert [n.created_at for n in left] == [T0]
    kept = await store.prune(events_before=None, tasks_before=T0, limit=5)
    assert kept.notifications == 0
