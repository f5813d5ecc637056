"""Which events notify whom, and how the notifier cuts digests, without the API: the pure
rules of `domain/notifications.py`, then the notifier over an embedded store driven with
events whose times the test chooses (so windows are exact, with no waiting)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatchd.config import NotificationsConfig
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.domain.notifications import MAX_ITEMS, Digest, Kind, for_requester, immediate
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import ConcurrentUpdate
from dispatchd.events.notifications import CURSOR, Notifier
from dispatchd.store.base import AppendEvent, InsertTask, SaveDigest
from dispatchd.store.sqlite import SQLiteStore
from tests.contract.test_store import make_task

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


def event(type_: str, at: float = 0, task_id: str | None = "t1", **data: Any) -> Event:
    return Event(
        type=type_,
        created_at=T0 + timedelta(seconds=at),
        task_id=task_id,
        agent_id="w1",
        data=data,
        id=1,
    )


# --- what a requester reads ------------------------------------------------------------------


def test_a_requester_reads_its_own_entries_and_its_part_of_a_digest() -> None:
    alices, bobs = make_task(id="a1", requester="alice"), make_task(id="b1", requester="bob")
    failed = immediate(event("task.failed", task_id="a1", error="x", final=True), alices)
    assert failed is not None and failed.requester == "alice"
    assert for_requester(failed, "alice") == failed
    assert for_requester(failed, "bob") is None

    digest = Digest.open(T0, WINDOW, 1)
    digest.add(event("task.completed", task_id="a1", summary="ok"), alices)
    digest.add(event("task.progress", task_id="b1", message="m", percent=5), bobs)
    digest.add(event("task.progress", task_id="b1", message="n", percent=9), bobs)
    closed = digest.closed(T0 + WINDOW)
    mine = for_requester(closed, "bob")
    assert mine is not None and mine.id == closed.id
    assert [i["task_id"] for i in mine.data["progress"]] == ["b1"]
    assert mine.data["completed"] == []
    assert mine.data["counts"] == {"completed": 0, "progress": 1, "progress_updates": 2}
    assert mine.data["message"] == "2 progress updates on 1 task"
    assert mine.data["closed_at"] == closed.data["closed_at"]
    assert for_requester(closed, "carol") is None
    only = digest.only("alice")
    assert only is not None and [i["task_id"] for i in only.completed] == ["a1"]
    assert digest.size == 2  # cutting leaves the digest itself whole


# --- what gives an entry of its own ----------------------------------------------------------


@pytest.mark.parametrize(
    ("e", "kind"),
    [
        (event("task.failed", error="boom", final=True), Kind.FAILED),
        (event("task.failed", error="dep", final=True, dependency="t0"), Kind.FAILED),
        (event("task.rejected", feedback="no", final=True), Kind.FAILED),
        (event("task.timed_out", error="late", final=True), Kind.TIMED_OUT),
        (event("task.escalated", to="senior", error="boom"), Kind.ESCALATED),
        (event("task.waiting_input", question="which?"), Kind.QUESTION),
    ],
)
def test_events_that_need_a_person_give_an_entry(e: Event, kind: Kind) -> None:
    task = make_task(id="t1", title="Build ✓")
    entry = immediate(e, task)
    assert entry is not None and entry.kind is kind
    assert entry.task_id == "t1" and entry.event_id == 1 and entry.created_at == T0
    assert entry.data["title"] == "Build ✓" and entry.data["event_type"] == e.type
    assert entry.data["details"] == dict(e.data) | (
        {"question": "which?"} if kind is Kind.QUESTION else {}
    )
    assert str(entry.data["message"]).startswith("task 'Build ✓' ")


@pytest.mark.parametrize(
    "e",
    [
        event("task.rejected", feedback="again", final=False),
        # The notice of a task with nowhere to escalate comes with its final failure.
        event("task.escalated", to=None, notify="alice", error="boom"),
        event("task.failed", error="boom", final=False),
        event("task.completed"),
        event("task.retrying", error="boom"),
    ],
)
def test_other_events_give_none(e: Event) -> None:
    assert immediate(e, None) is None


def test_a_question_falls_back_to_the_task_and_an_unknown_task_to_its_id() -> None:
    task = make_task(id="t1", title="x", question="from the task?")
    entry = immediate(event("task.waiting_input"), task)
    assert entry is not None and entry.data["question"] == "from the task?"
    gone = immediate(event("task.failed", error="e", final=True), None)
    assert gone is not None and gone.data["title"] is None
    assert gone.data["message"] == "task t1 failed: e"


def test_a_digest_names_each_task_once_per_list() -> None:
    digest = Digest.open(T0, WINDOW, 1)
    digest.add(event("task.progress", 1, "a", message="one", percent=10), None)
    digest.add(event("task.progress", 2, "a", percent=50), None)
    digest.add(event("task.completed", 3, "a", summary="x" * 2000), None)
    digest.add(event("task.progress", 4, "b", message="b1"), None)
    data = digest.data()
    assert data["counts"] == {"completed": 1, "progress": 2, "progress_updates": 3}
    a, b = data["progress"]
    assert (a["message"], a["percent"], a["updates"]) == ("one", 50, 2)
    assert (b["message"], b["percent"], b["updates"]) == ("b1", None, 1)
    assert len(data["completed"][0]["summary"]) == 500
    assert data["message"] == "1 task completed; 3 progress updates on 2 tasks"
    assert Digest.from_data(digest.opened_at, digest.closes_at, 1, data) == digest


def test_a_digest_copy_can_change_without_changing_the_original() -> None:
    digest = Digest.open(T0, WINDOW, 1)
    digest.add(event("task.progress", 1, "a", message="one", percent=10), None)
    digest.add(event("task.completed", 2, "b", summary="done"), None)
    before = digest.data()
    copied = digest.copy()
    assert copied == digest
    copied.add(event("task.progress", 3, "a", message="two", percent=90), None)
    copied.add(event("task.completed", 4, "c", summary="also"), None)
    assert digest.data() == before
    assert copied.data()["progress"][0]["percent"] == 90
    assert len(copied.data()["completed"]) == 2


# --- the notifier over a store ----------------------------------------------------------------


async def notifier_on(store: SQLiteStore) -> Notifier:
    feed = EventFeed(store)
    store.on_commit(feed.committed)
    await feed.start()
    notifier = Notifier(store, feed, NotificationsConfig(batch_window_s=WINDOW.total_seconds()))
    notifier.head = feed.latest
    await notifier.load()
    return notifier


async def drain(notifier: Notifier) -> None:
    """Handle every event in the log (no waiting for windows)."""
    while True:
        events = await notifier.feed.read(notifier.cursor, 1000)
        if not events:
            return
        await notifier.handle(events)


async def test_windows_follow_the_events_times(store: SQLiteStore) -> None:
    tasks = [make_task(title=f"job {i}") for i in range(4)]
    await store.commit([InsertTask(t) for t in tasks])
    notifier = await notifier_on(store)
    # Two inside the first window, one on its edge (the next window), one much later.
    await store.commit(
        [
            AppendEvent(event("task.completed", at, t.id))
            for at, t in zip((0, 59.9, 60, 200), tasks, strict=True)
        ]
    )
    await drain(notifier)

    closed = await store.list_notifications(after=0, limit=10)
    assert [n.kind for n in closed] == [Kind.DIGEST, Kind.DIGEST]
    first, second = (n.data for n in closed)
    assert [i["task_id"] for i in first["completed"]] == [tasks[0].id, tasks[1].id]
    assert [i["title"] for i in first["completed"]] == ["job 0", "job 1"]
    assert [i["task_id"] for i in second["completed"]] == [tasks[2].id]
    assert second["opened_at"] == "2026-01-02T03:05:05.000000Z"
    still = await store.open_digest()
    assert still is not None and still.opened_at == T0 + timedelta(seconds=200)
    assert [i["task_id"] for i in still.completed] == [tasks[3].id]
    assert await store.get_cursor(CURSOR) == notifier.cursor == still.event_id


async def test_a_full_digest_closes_and_the_next_item_opens_another(store: SQLiteStore) -> None:
    notifier = await notifier_on(store)
    full = [event("task.progress", 0, "p", message="first")]
    full += [event("task.completed", 0, f"t{i}") for i in range(MAX_ITEMS - 1)]
    # A later update of a task already named still fits; a new task does not.
    more = [event("task.progress", 1, "p", message="second"), event("task.completed", 1, "last")]
    await store.commit([AppendEvent(e) for e in full + more])
    await drain(notifier)

    (closed,) = await store.list_notifications(after=0, limit=10)
    assert len(closed.data["completed"]) == MAX_ITEMS - 1
    assert [(p["task_id"], p["message"], p["updates"]) for p in closed.data["progress"]] == [
        ("p", "second", 2)
    ]
    rest = await store.open_digest()
    assert rest is not None and [i["task_id"] for i in rest.completed] == ["last"]
    assert rest.progress == []


async def test_a_new_notifier_starts_at_the_head_and_resumes_from_its_cursor(
    store: SQLiteStore,
) -> None:
    await store.commit([AppendEvent(event("task.failed", 0, "old", error="e", final=True))])
    first = await notifier_on(store)  # a database whose history predates notifications
    await drain(first)
    assert await store.list_notifications(after=0, limit=10) == []

    await store.commit([AppendEvent(event("task.failed", 1, "new", error="e", final=True))])
    second = await notifier_on(store)  # a restart before the first one read it
    await drain(second)
    (entry,) = await store.list_notifications(after=0, limit=10)
    assert entry.task_id == "new"
    # The first one's view is stale: what it would write is refused, not written twice.
    with pytest.raises(ConcurrentUpdate):
        await drain(first)
    assert len(await store.list_notifications(after=0, limit=10)) == 1


async def test_completions_alone_grow_the_digest_in_memory_and_save_it_on_time(
    store: SQLiteStore,
) -> None:
    tasks = [make_task(title=f"job {i}") for i in range(3)]
    await store.commit([InsertTask(t) for t in tasks])
    notifier = await notifier_on(store)
    saved_at = await store.get_cursor(CURSOR)
    commits: list[int] = []
    store.on_commit(lambda events: commits.append(len(events)))
    for task in tasks:  # now, so that the window is still open when the save falls due
        done = dataclasses.replace(event("task.completed", 0, task.id), created_at=utcnow())
        await store.commit([AppendEvent(done)])
    commits.clear()
    await drain(notifier)

    # Nothing is due: no commit, the stored cursor and digest stay where they were...
    assert commits == []
    assert await store.get_cursor(CURSOR) == saved_at
    assert await store.open_digest() is None
    # ...but the digest a reader is shown has every item.
    shown = await notifier.open_digest()
    assert shown is not None and [i["task_id"] for i in shown.completed] == [t.id for t in tasks]

    # Once the save is due, waiting for more saves it with the cursor.
    notifier.digest_save_s = 0.0
    wait_s = await notifier.caught_up()
    assert 0 < wait_s <= WINDOW.total_seconds()
    stored = await store.open_digest()
    assert stored is not None and stored.data() == shown.data()
    assert await store.get_cursor(CURSOR) == notifier.cursor


async def test_a_restart_before_the_digest_is_saved_gives_the_same_digest(
    store: SQLiteStore,
) -> None:
    tasks = [make_task(title=f"job {i}") for i in range(4)]
    await store.commit([InsertTask(t) for t in tasks])
    first = await notifier_on(store)
    await store.commit([AppendEvent(event("task.completed", 0, tasks[0].id))])
    first.digest_save_s = 0.0
    await drain(first)  # saved at once
    first.digest_save_s = 3600.0
    await store.commit(
        [AppendEvent(event("task.completed", at, t.id)) for at, t in enumerate(tasks[1:], 1)]
    )
    await drain(first)
    before = await first.open_digest()
    assert before is not None and before.size == 4
    stored = await store.open_digest()
    assert stored is not None and stored.size == 1  # the last three only in memory

    # A crash now: the next notifier replays the events after the saved cursor.
    second = await notifier_on(store)
    await drain(second)
    after = await second.open_digest()
    assert after is not None and after.data() == before.data()
    # Its window closes with each task once.
    await store.commit([AppendEvent(event("task.completed", 500, "late"))])
    await drain(second)
    closed = await store.list_notifications(after=0, limit=10)
    assert [i["task_id"] for i in closed[0].data["completed"]] == [t.id for t in tasks]


async def test_a_notifier_that_stops_saves_its_digest_then_shows_the_stored_one(
    store: SQLiteStore,
) -> None:
    notifier = await notifier_on(store)
    await store.commit([AppendEvent(event("task.completed", 0, "t1"))])
    await drain(notifier)
    assert await store.open_digest() is None
    await notifier.pause()
    stored = await store.open_digest()
    assert stored is not None and [i["task_id"] for i in stored.completed] == ["t1"]
    assert await store.get_cursor(CURSOR) == notifier.cursor
    # Another replica may hold the role now: what is shown is what is stored.
    await store.commit([SaveDigest(None, utcnow())])
    assert await notifier.open_digest() is None
