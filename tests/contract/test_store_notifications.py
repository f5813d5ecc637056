"""The storage contract of notifications: `InsertNotification`, `SaveDigest` and
`AdvanceCursor` in a commit, `open_digest`, `list_notifications` and
`acknowledge_notifications`. Every test runs unchanged against every engine."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from dispatchd.domain.models import Event
from dispatchd.domain.notifications import Digest, Kind, Notification
from dispatchd.errors import ConcurrentUpdate
from dispatchd.store.base import (
    AdvanceCursor,
    InsertNotification,
    InsertTask,
    SaveDigest,
    Store,
)
from tests.contract.conftest import StoreFactory
from tests.contract.test_store import T0, US, make_task

SECOND = timedelta(seconds=1)
CURSOR = "notifications"


def entry(n: int, kind: Kind = Kind.FAILED, task_id: str | None = "t1") -> Notification:
    return Notification(
        kind=kind,
        task_id=task_id,
        data={"message": f"entry {n}", "n": n, "nested": {"ü": [1, 2.5, None, True]}},
        event_id=100 + n,
        created_at=T0 + n * SECOND + 7 * US,
    )


def completion(event_id: int, task_id: str, seconds: float = 0) -> Event:
    return Event(
        id=event_id,
        type="task.completed",
        created_at=T0 + timedelta(seconds=seconds),
        task_id=task_id,
        agent_id="w1",
        data={"summary": f"done {task_id}"},
    )


async def add(store: Store, *entries: Notification, expected: int | None, to: int) -> None:
    await store.commit(
        [AdvanceCursor(CURSOR, expected, to, T0), *(InsertNotification(e) for e in entries)]
    )


# --- entries ---------------------------------------------------------------------------


async def test_entries_round_trip_in_the_order_they_were_added(store: Store) -> None:
    assert await store.list_notifications(after=0, limit=10) == []
    first = [entry(1), entry(2, Kind.QUESTION), entry(3, Kind.DIGEST, task_id=None)]
    await add(store, *first, expected=None, to=10)
    await add(store, entry(4, Kind.TIMED_OUT), expected=10, to=11)

    found = await store.list_notifications(after=0, limit=10)
    ids = [n.id for n in found]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids) and len(set(ids)) == 4
    for got, want in zip(found, [*first, entry(4, Kind.TIMED_OUT)], strict=True):
        assert got.kind is want.kind and got.task_id == want.task_id
        assert got.data == want.data and got.event_id == want.event_id
        assert got.created_at == want.created_at  # microseconds kept
        assert got.acknowledged_at is None and got.acknowledged_by is None

    # Paging by id: after and limit.
    assert [n.id for n in await store.list_notifications(after=ids[0], limit=2)] == ids[1:3]
    assert await store.list_notifications(after=ids[-1], limit=10) == []


async def test_acknowledgement_by_ids_and_up_to(store: Store) -> None:
    await add(store, *(entry(i) for i in range(1, 7)), expected=None, to=6)
    ids = [n.id for n in await store.list_notifications(after=0, limit=10)]
    assert len(ids) == 6
    i1, i2, i3, i4, i5, i6 = (i for i in ids if i is not None)

    marked = await store.acknowledge_notifications(ids=[i2, i4, 10**15], by="ann", at=T0)
    assert marked == 2  # an unknown id counts for nothing
    # Again, with one new: only the new one counts, and the first acknowledger stays.
    marked = await store.acknowledge_notifications(ids=[i2, i5], by="bob", at=T0 + SECOND)
    assert marked == 1
    found = {n.id: n for n in await store.list_notifications(after=0, limit=10)}
    assert found[i2].acknowledged_by == "ann" and found[i2].acknowledged_at == T0
    assert found[i5].acknowledged_by == "bob" and found[i5].acknowledged_at == T0 + SECOND
    assert found[i1].acknowledged_at is None

    open_ids = [
        n.id for n in await store.list_notifications(after=0, limit=10, unacknowledged_only=True)
    ]
    assert open_ids == [i1, i3, i6]
    assert [
        n.id for n in await store.list_notifications(after=i1, limit=1, unacknowledged_only=True)
    ] == [i3]

    assert await store.acknowledge_notifications(up_to=i3, by="cy", at=T0) == 2  # i1, i3
    open_ids = [
        n.id for n in await store.list_notifications(after=0, limit=10, unacknowledged_only=True)
    ]
    assert open_ids == [i6]
    assert await store.acknowledge_notifications(up_to=i6, by="cy", at=T0) == 1
    assert await store.list_notifications(after=0, limit=10, unacknowledged_only=True) == []
    assert await store.acknowledge_notifications(up_to=i6, by="cy", at=T0) == 0
    assert await store.acknowledge_notifications(by="cy", at=T0) == 0  # nothing named


# --- the open digest --------------------------------------------------------------------


async def test_open_digest_is_saved_replaced_and_removed(store: Store) -> None:
    assert await store.open_digest() is None
    digest = Digest.open(T0 + 3 * US, timedelta(seconds=60), 7)
    task = make_task(title="Résumé ✓")
    digest.add(completion(7, task.id), task)
    await store.commit([AdvanceCursor(CURSOR, None, 7, T0), SaveDigest(digest, T0)])

    got = await store.open_digest()
    assert got == digest and got is not None
    assert got.data()["completed"] == [
        {
            "task_id": task.id,
            "title": "Résumé ✓",
            "requester": task.requester,
            "agent_id": "w1",
            "summary": f"done {task.id}",
            "at": "2024-02-29T23:59:58.123456Z",
        }
    ]

    digest.add(completion(9, "t2", 1), None)
    await store.commit([AdvanceCursor(CURSOR, 7, 9, T0), SaveDigest(digest, T0)])
    got = await store.open_digest()
    assert got is not None and got.event_id == 9 and len(got.completed) == 2

    await store.commit([AdvanceCursor(CURSOR, 9, 9, T0), SaveDigest(None, T0)])
    assert await store.open_digest() is None
    # Removing it again is harmless.
    await store.commit([SaveDigest(None, T0)])
    assert await store.open_digest() is None


# --- the cursor only moves from where it was read ------------------------------------------


async def test_advance_cursor_refuses_a_stale_position_and_writes_nothing(store: Store) -> None:
    await store.commit([AdvanceCursor(CURSOR, None, 5, T0)])
    assert await store.get_cursor(CURSOR) == 5
    task = make_task()

    # Created again, or moved from a position it has left: the whole commit is refused.
    for expected in (None, 4, 6):
        with pytest.raises(ConcurrentUpdate):
            await store.commit(
                [
                    AdvanceCursor(CURSOR, expected, 9, T0),
                    InsertNotification(entry(1)),
                    SaveDigest(Digest.open(T0, SECOND, 9), T0),
                    InsertTask(task),
                ]
            )
    assert await store.get_cursor(CURSOR) == 5
    assert await store.list_notifications(after=0, limit=10) == []
    assert await store.open_digest() is None
    assert await store.get_task(task.id) is None

    # From where it is, it moves (standing still included), and only that cursor moves.
    await store.commit([AdvanceCursor(CURSOR, 5, 5, T0)])
    await store.commit([AdvanceCursor(CURSOR, 5, 8, T0), InsertNotification(entry(1))])
    assert await store.get_cursor(CURSOR) == 8
    assert await store.get_cursor("other") is None
    assert len(await store.list_notifications(after=0, limit=10)) == 1


async def test_two_writers_from_the_same_position_one_wins(
    store: Store, make_store: StoreFactory
) -> None:
    """Two stores (two replicas on PostgreSQL) commit from the same cursor at once: one
    commit lands whole, the other is refused whole."""
    second = make_store()
    await second.open()
    stores = [store, second]
    try:
        await stores[0].commit([AdvanceCursor(CURSOR, None, 10, T0)])
        for round_ in range(5):
            start = 10 + round_ * 10

            async def write(s: Store, n: int, start: int = start) -> bool:
                try:
                    await s.commit(
                        [
                            AdvanceCursor(CURSOR, start, start + 10, T0),
                            InsertNotification(entry(n)),
                            InsertNotification(entry(n + 1)),
                        ]
                    )
                except ConcurrentUpdate:
                    return False
                return True

            results = await asyncio.gather(write(stores[0], 1), write(stores[1], 3))
            assert sorted(results) == [False, True], results
            assert await stores[1].get_cursor(CURSOR) == start + 10
        found = await stores[0].list_notifications(after=0, limit=100)
        assert len(found) == 10
        # Each landed commit wrote its pair together.
        pairs = [(found[i].data["n"], found[i + 1].data["n"]) for i in range(0, 10, 2)]
        assert all(b == a + 1 for a, b in pairs), pairs
    finally:
        await second.close()


# --- readers for everyone ----------------------------------------------------------------


async def test_a_requester_lists_its_entries_and_every_digest(store: Store) -> None:
    mine = replace(entry(1), requester="alice")
    theirs = replace(entry(2, task_id="t2"), requester="bob")
    digest = entry(3, Kind.DIGEST, task_id=None)
    later = replace(entry(4, Kind.QUESTION), requester="alice")
    await add(store, mine, theirs, digest, later, expected=None, to=104)
    listed = await store.list_notifications(after=0, limit=10)
    assert [n.requester for n in listed] == ["alice", "bob", None, "alice"]

    for_alice = await store.list_notifications(after=0, limit=10, requester="alice")
    assert [n.id for n in for_alice] == [listed[0].id, listed[2].id, listed[3].id]
    assert for_alice[0] == replace(mine, id=listed[0].id)
    paged = await store.list_notifications(after=for_alice[0].id or 0, limit=1, requester="alice")
    assert [n.id for n in paged] == [listed[2].id]
    assert [n.id for n in await store.list_notifications(after=0, limit=10, requester="carol")] == [
        listed[2].id
    ]
    await store.acknowledge_notifications(ids=[listed[0].id or 0], by="admin", at=T0)
    unacked = await store.list_notifications(
        after=0, limit=10, requester="alice", unacknowledged_only=True
    )
    assert [n.id for n in unacked] == [listed[2].id, listed[3].id]
