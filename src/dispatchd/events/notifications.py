"""The notifier: turns the event log into notifications for humans (docs/events.md).

It follows the log (`events/follower.py`) from the store cursor `notifications`. For each
batch of events that gives an entry (a final failure, a final timeout, an escalation, a
question, a digest closed) it writes the entries, the open digest and the cursor's move in
one transaction. Completions and progress alone only grow the open digest in memory: it is
saved with the cursor at most every `DIGEST_SAVE_S` (one commit then, not one per batch).
A restart therefore resumes exactly: it reads the saved cursor and digest and handles the
events after that cursor again, which adds the same items to the same digest (its windows
follow the events' own times); no event is notified twice or lost. A digest whose window
has ended is closed on time even when no further event arrives: the notifier sleeps until
then, woken early by the feed when the log grows.

The first time it runs on a database (no saved cursor) it starts at the head of the log as
it was when dispatchd started, not at its beginning. Events deleted by retention before it
read them (it was stopped for longer than `events.retention_days`) are skipped, with an
error in the log.

On PostgreSQL one replica writes notifications at a time: the one holding the
`notifications` lease (see `Store.lease`). Its cursor only moves from the position it
was read at (`AdvanceCursor`), so even a replica that briefly acts after losing the lease
writes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from dispatchd.config import NotificationsConfig
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.domain.notifications import DIGESTED, IMMEDIATE, Digest, immediate
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import DispatchError
from dispatchd.events.follower import Backoff, Consumer, Follower, stored_cursor
from dispatchd.store.base import (
    AdvanceCursor,
    InsertNotification,
    Lease,
    Op,
    SaveDigest,
    Store,
)

log = logging.getLogger(__name__)

CURSOR = "notifications"
# Events read per batch (and per transaction).
BATCH = 1000
# An idle notifier with no open digest reads the log this often even without news.
IDLE_S = 30.0
# Batches that give no notification do not move the saved cursor (re-reading them after a
# restart gives nothing either), until it lags this many events behind.
SAVE_EVERY = 5000
# The open digest grown by completions and progress is saved at most this often (how far
# the stored copy, which other replicas show, may lag behind this notifier's).
DIGEST_SAVE_S = 1.0
# Waits after a database error: doubling from the first up to the second.
RETRY = Backoff(1.0, 10.0)
LEASE_CHECK_S = 5.0


class Notifier(Consumer):
    def __init__(
        self,
        store: Store,
        feed: EventFeed,
        config: NotificationsConfig,
        *,
        lease: Lease | None = None,
        lease_check_s: float = LEASE_CHECK_S,
    ) -> None:
        self.store = store
        self.feed = feed
        self.window = timedelta(seconds=config.batch_window_s)
        self.head = 0  # where to start on a database that has no saved cursor yet
        self.cursor = 0  # the last event handled
        self.saved: int | None = None  # the cursor as stored
        self.digest: Digest | None = None  # the open digest, with the items not yet saved
        self.unsaved = False  # `digest` has items the stored copy has not
        self.following = False  # `digest` is this replica's, loaded and kept up to date
        self.digest_save_s = DIGEST_SAVE_S
        self._saved_at = 0.0  # event loop time of the last save
        self._waiters: set[asyncio.Future[None]] = set()  # long-polling readers
        self.follower = Follower(
            "notifier",
            store,
            feed,
            self,
            batch=BATCH,
            idle_s=IDLE_S,
            backoff=RETRY,
            lease=lease or store.lease(CURSOR, check_s=lease_check_s),
        )

    async def run(self, head: int) -> None:
        """Write notifications while this replica holds the lease; runs until cancelled.
        `head` is the log's last event when the runtime started."""
        self.head = head
        await self.follower.run()

    async def resume(self) -> int:
        await self.load()
        return self.cursor

    async def load(self) -> None:
        """Read the saved cursor and the open digest; save the starting cursor the first
        time."""
        self.following = False
        self.saved = self.cursor = await stored_cursor(self.store, CURSOR, self.head, fenced=True)
        self.digest = await self.store.open_digest()
        self.unsaved = False
        self._saved_at = asyncio.get_running_loop().time()
        self.following = True

    async def pause(self) -> None:
        """Stopping (or an error, or the lease lost): save the digest's unsaved items if
        the store lets us (else the next notifier replays them), and answer from the
        stored digest until loaded again, since another replica may take over."""
        if self.following and self.unsaved:
            with contextlib.suppress(DispatchError):  # ConcurrentUpdate: not ours any more
                await self._commit([])
        self.following = False

    async def open_digest(self) -> Digest | None:
        """The digest still collecting items: this replica's own while its notifier runs
        here (its unsaved items included), otherwise the one stored."""
        if self.following:
            return self.digest
        return await self.store.open_digest()

    async def caught_up(self) -> float:
        """Close the digest whose window has ended (every event so far is in it); the wait
        until the open one's window ends."""
        digest = self.digest
        if digest is None:
            return IDLE_S
        remaining = (digest.closes_at - utcnow()).total_seconds()
        if remaining > 0:
            if not self.unsaved:
                return remaining
            save_in = self._saved_at + self.digest_save_s - asyncio.get_running_loop().time()
            if save_in > 0:
                return min(remaining, save_in)
            await self._commit([SaveDigest(digest, utcnow())])
            return remaining
        now = utcnow()
        await self._commit([InsertNotification(digest.closed(now)), SaveDigest(None, now)])
        self.digest = None
        return IDLE_S

    async def handle(self, events: Sequence[Event]) -> None:
        """Notify `events` (the next ones after the cursor): in one transaction when they
        give an entry, when the open digest is due to be saved, or when the saved cursor
        lags `SAVE_EVERY` behind."""
        last = events[-1].id
        assert last is not None
        tasks = await self.feed.tasks_of(
            [e for e in events if e.type in IMMEDIATE or e.type in DIGESTED]
        )
        digest = self.digest.copy() if self.digest is not None else None
        ops: list[Op] = []
        changed = False
        now = utcnow()
        for event in events:
            task = tasks.get(event.task_id) if event.task_id else None
            entry = immediate(event, task) if event.type in IMMEDIATE else None
            if entry is not None:
                ops.append(InsertNotification(entry))
            if event.type not in DIGESTED:
                continue
            assert event.id is not None
            if digest is not None and not (digest.covers(event) and digest.has_room_for(event)):
                ops.append(InsertNotification(digest.closed(now)))
                digest = None
            if digest is None:
                digest = Digest.open(event.created_at, self.window, event.id)
            digest.add(event, task)
            changed = True
        unsaved = changed or self.unsaved
        save_due = self._saved_at + self.digest_save_s <= asyncio.get_running_loop().time()
        if ops or (unsaved and save_due) or last - (self.saved or 0) >= SAVE_EVERY:
            if unsaved:
                ops.append(SaveDigest(digest, now))
            await self._commit(ops, last)
        else:
            self.unsaved = unsaved
        self.digest = digest
        self.cursor = last

    async def skip(self, event: Event) -> bool:
        assert event.id is not None
        await self._commit([], event.id)
        self.cursor = event.id
        return True

    async def _commit(self, ops: list[Op], last: int | None = None) -> None:
        """Commit `ops` with the cursor's move to `last` (None: it stays, but must still be
        where it was read)."""
        to = self.cursor if last is None else last
        if self.unsaved and not any(isinstance(op, SaveDigest) for op in ops):
            # The saved cursor never passes items only the unsaved digest holds.
            ops = [*ops, SaveDigest(self.digest, utcnow())]
        await self.store.commit([AdvanceCursor(CURSOR, self.saved, to, utcnow()), *ops])
        self.saved = to
        if any(isinstance(op, SaveDigest) for op in ops):
            self.unsaved = False
            self._saved_at = asyncio.get_running_loop().time()
        if any(isinstance(op, InsertNotification) for op in ops):
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def written(self, wait_s: float) -> None:
        """Wait until this replica's notifier writes an entry, or `wait_s` passes (a
        long-polling reader then looks again: on PostgreSQL another replica may hold the
        notifier's lease, so no wake-up from here is certain)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
