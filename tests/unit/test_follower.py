"""The loop every follower of the event log runs (events/follower.py), over a real SQLite
store and feed with a consumer that records what it is handed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import ConcurrentUpdate, DispatchError
from dispatchd.events.follower import Backoff, Consumer, Follower, stored_cursor
from dispatchd.store.base import RETENTION_CURSOR, AppendEvent, SaveCursor
from dispatchd.store.sqlite import SQLiteStore

CURSOR = "test"
QUICK = Backoff(0.01, 0.02)
LIMIT_S = 5.0
OLD = datetime(2020, 1, 1, tzinfo=UTC)


class Recorder(Consumer):
    """Saves its cursor with each batch; can be told to fail, or to block, on an event."""

    def __init__(self, store: SQLiteStore, *, head: int = 0) -> None:
        self.store = store
        self.head = head
        self.batches: list[list[int]] = []  # every batch it was handed, failed ones too
        self.resumed = 0
        self.paused = 0
        self.idle = 0
        self.fail_on: dict[int, Exception] = {}  # event id: raised once when handed
        self.fail_resume: list[Exception] = []  # raised by the next resumes, in turn
        self.block_on: int | None = None

    @property
    def handled(self) -> list[int]:
        """The events handled for good, in order (a failed batch is not in it)."""
        return [i for batch in self.batches if batch[0] >= 0 for i in batch]

    async def resume(self) -> int | None:
        self.resumed += 1
        if self.fail_resume:
            raise self.fail_resume.pop(0)
        return await stored_cursor(self.store, CURSOR, self.head)

    async def handle(self, events: Sequence[Event]) -> None:
        ids = [e.id for e in events if e.id is not None]
        for event_id in ids:
            if event_id == self.block_on:
                await asyncio.Event().wait()
            failure = self.fail_on.pop(event_id, None)
            if failure is not None:
                self.batches.append([-1, *ids])  # marked as failed
                raise failure
        await self.store.commit([SaveCursor(CURSOR, ids[-1], utcnow())])
        self.batches.append(ids)

    async def caught_up(self) -> float | None:
        self.idle += 1
        return None

    async def pause(self) -> None:
        self.paused += 1


@pytest.fixture
async def feed(store: SQLiteStore) -> EventFeed:
    made = EventFeed(store)
    store.on_commit(made.committed)
    await made.start()
    return made


async def append(store: SQLiteStore, count: int, *, at: datetime | None = None) -> int:
    """Append `count` events; the id of the last."""
    events = await store.commit(
        [AppendEvent(Event(type="task.created", created_at=at or utcnow())) for _ in range(count)]
    )
    last = events[-1].id
    assert last is not None
    return last


def follower_of(
    store: SQLiteStore,
    feed: EventFeed,
    consumer: Consumer,
    *,
    batch: int = 100,
    idle_s: float = 60.0,
    backoff: Backoff = QUICK,
    **options: float,
) -> Follower:
    return Follower(
        "test follower",
        store,
        feed,
        consumer,
        batch=batch,
        idle_s=idle_s,
        backoff=backoff,
        **options,  # type: ignore[arg-type]
    )


async def until(check: Callable[[], bool], what: str, limit_s: float = LIMIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not check():
        assert loop.time() < deadline, f"waited {limit_s}s for {what}"
        await asyncio.sleep(0.005)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_it_resumes_from_the_stored_cursor(store: SQLiteStore, feed: EventFeed) -> None:
    await append(store, 5)
    await store.commit([SaveCursor(CURSOR, 3, utcnow())])
    consumer = Recorder(store)
    task = asyncio.create_task(follower_of(store, feed, consumer, batch=1).run())
    try:
        await until(lambda: consumer.idle > 0, "the follower to catch up")
        assert consumer.handled == [4, 5]
        assert await store.get_cursor(CURSOR) == 5
    finally:
        await stop(task)


async def test_a_first_run_starts_at_the_head_and_saves_it_at_once(
    store: SQLiteStore, feed: EventFeed
) -> None:
    head = await append(store, 3)
    consumer = Recorder(store, head=head)
    task = asyncio.create_task(follower_of(store, feed, consumer).run())
    try:
        await until(lambda: consumer.idle > 0, "the follower to catch up")
        assert consumer.batches == []
        assert await store.get_cursor(CURSOR) == head
        last = await append(store, 2)
        await until(lambda: consumer.handled == [head + 1, last], "the new events")
    finally:
        await stop(task)


async def test_it_moves_past_what_retention_deleted(
    store: SQLiteStore, feed: EventFeed, caplog: pytest.LogCaptureFixture
) -> None:
    await append(store, 4, at=OLD)
    last = await append(store, 2)
    await store.commit([SaveCursor(CURSOR, 1, utcnow())])
    pruned = await store.prune(events_before=OLD + timedelta(days=1), tasks_before=None, limit=100)
    assert pruned.events == 4 and await store.get_cursor(RETENTION_CURSOR) == 4
    consumer = Recorder(store)
    task = asyncio.create_task(follower_of(store, feed, consumer).run())
    try:
        await until(lambda: consumer.idle > 0, "the follower to catch up")
    finally:
        await stop(task)
    assert consumer.handled == [5, last]
    (gap,) = [r for r in caplog.records if "retention" in r.getMessage()]
    assert gap.levelno == logging.ERROR
    assert gap.getMessage() == (
        "events 2 to 4 were deleted by retention before the test follower got them"
    )


async def test_a_failing_batch_is_logged_and_tried_again_after_a_backoff(
    store: SQLiteStore, feed: EventFeed, caplog: pytest.LogCaptureFixture
) -> None:
    await append(store, 4)
    consumer = Recorder(store)
    consumer.fail_on[3] = RuntimeError("the handler broke")
    follower = follower_of(store, feed, consumer, batch=2, backoff=Backoff(0.2, 0.2))
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: consumer.handled == [1, 2], "the first batch")
        await until(lambda: len(consumer.batches) == 2, "the failing batch")
        failed_at = loop.time()
        await until(lambda: consumer.handled == [1, 2, 3, 4], "the batch to be tried again")
        # The wait is drawn from the upper half of the backoff.
        assert loop.time() - failed_at >= 0.1
        assert consumer.batches == [[1, 2], [-1, 3, 4], [3, 4]]
        assert follower.failures == 0  # a batch got through: the next failure waits the least
        assert consumer.resumed == 2  # from the stored cursor again
        assert consumer.paused >= 1
        # It goes on with what comes next.
        last = await append(store, 1)
        await until(lambda: consumer.handled[-1] == last, "the next event")
    finally:
        await stop(task)
    (record,) = [r for r in caplog.records if "failed while" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage().startswith("test follower failed while handling events 3 to 4;")


async def test_an_expected_failure_is_a_warning_and_the_waits_grow_while_it_lasts(
    store: SQLiteStore, feed: EventFeed, caplog: pytest.LogCaptureFixture
) -> None:
    await append(store, 1)
    consumer = Recorder(store)
    consumer.fail_resume = [DispatchError("no database") for _ in range(3)]
    follower = follower_of(store, feed, consumer, backoff=Backoff(0.01, 1.0))
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: consumer.handled == [1], "the follower to get through")
    finally:
        await stop(task)
    records = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    assert all(r.exc_info is None for r in records)
    first = records[0].getMessage()
    assert first.startswith("test follower: database unavailable (no database) while resuming")
    waits = [float(r.getMessage().rsplit(" ", 1)[1].removesuffix("s")) for r in records]
    assert 0.005 <= waits[0] <= 0.01 and 0.02 <= waits[2] <= 0.04


async def test_a_cursor_moved_elsewhere_resumes_at_once(
    store: SQLiteStore, feed: EventFeed
) -> None:
    await append(store, 2)
    consumer = Recorder(store)
    consumer.fail_on[2] = ConcurrentUpdate("cursor moved")
    # A backoff that would outlast the test: a moved cursor must not wait it out.
    follower = follower_of(store, feed, consumer, batch=1, backoff=Backoff(60, 60))
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: consumer.handled == [1, 2], "both events", limit_s=2)
        assert follower.failures == 0
    finally:
        await stop(task)


@pytest.mark.parametrize("where", ["waiting", "backing off", "handling"])
async def test_it_stops_at_once_when_cancelled(
    store: SQLiteStore, feed: EventFeed, where: str
) -> None:
    await append(store, 1)
    consumer = Recorder(store)
    if where == "backing off":
        consumer.fail_on[1] = RuntimeError("broken")
    if where == "handling":
        consumer.block_on = 1
    follower = follower_of(store, feed, consumer, idle_s=60, backoff=Backoff(60, 60))
    task = asyncio.create_task(follower.run())
    if where == "waiting":
        await until(lambda: consumer.idle > 0, "the follower to wait")
    else:
        await until(lambda: consumer.resumed > 0, "the follower to start")
        await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    async with asyncio.timeout(1):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert consumer.paused >= 1


async def test_a_commit_wakes_it_without_waiting_out_its_timeout(
    store: SQLiteStore, feed: EventFeed
) -> None:
    consumer = Recorder(store)
    task = asyncio.create_task(follower_of(store, feed, consumer, idle_s=60).run())
    try:
        await until(lambda: consumer.idle > 0, "the follower to wait")
        await asyncio.sleep(0.05)
        assert consumer.idle == 1, "it waits; it does not poll"
        last = await append(store, 1)
        await until(lambda: consumer.handled == [last], "the new event", limit_s=1)
    finally:
        await stop(task)


class Nothing(Recorder):
    """Follows nothing until told where to start (as the webhooks with none active)."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store)
        self.start: int | None = None

    async def resume(self) -> int | None:
        self.resumed += 1
        return self.start


async def test_reload_resumes_and_with_nothing_to_follow_only_reload_wakes_it(
    store: SQLiteStore, feed: EventFeed
) -> None:
    consumer = Nothing(store)
    follower = follower_of(store, feed, consumer, idle_s=60)
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: consumer.resumed == 1, "the first resume")
        await append(store, 3)
        await asyncio.sleep(0.05)
        assert consumer.resumed == 1, "new events do not matter while it follows nothing"
        consumer.start = 1
        follower.reload()
        await until(lambda: consumer.handled == [2, 3], "the events after the new start")
        assert consumer.resumed == 2
    finally:
        await stop(task)


async def test_refresh_resumes_on_time_while_idle(store: SQLiteStore, feed: EventFeed) -> None:
    consumer = Recorder(store)
    follower = follower_of(store, feed, consumer, idle_s=60, refresh_s=0.05)
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: consumer.resumed >= 3, "two refreshes", limit_s=2)
    finally:
        await stop(task)


class Lease:
    """Held when the test grants it; lost when the test revokes it."""

    def __init__(self) -> None:
        self.granted = asyncio.Event()
        self.revoked = asyncio.Event()
        self.releases = 0

    async def acquire(self) -> None:
        await self.granted.wait()
        self.revoked.clear()

    async def lost(self) -> None:
        await self.revoked.wait()
        self.granted.clear()

    async def release(self) -> None:
        self.releases += 1


async def test_it_follows_only_while_it_holds_its_lease(
    store: SQLiteStore, feed: EventFeed
) -> None:
    await append(store, 2)
    consumer = Recorder(store)
    lease = Lease()
    follower = Follower(
        "leased", store, feed, consumer, batch=100, idle_s=60, backoff=QUICK, lease=lease
    )
    task = asyncio.create_task(follower.run())
    try:
        await asyncio.sleep(0.05)
        assert consumer.resumed == 0, "another replica holds the lease"
        lease.granted.set()
        await until(lambda: consumer.handled == [1, 2], "the events")

        lease.revoked.set()
        await until(lambda: lease.releases == 1, "the lease to be let go")
        assert consumer.paused >= 1
        await append(store, 1)
        await asyncio.sleep(0.05)
        assert consumer.handled == [1, 2], "nothing is handled without the lease"

        lease.granted.set()
        await until(lambda: consumer.handled == [1, 2, 3], "the event written meanwhile")
        assert consumer.resumed == 2
    finally:
        await stop(task)
