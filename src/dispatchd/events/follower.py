"""One loop for every follower of the event log inside the server: the NATS publisher, the
notifier, the webhook follower and the metrics. Each of them is only a `Consumer`: where it
stands and what it does with a batch.

A follower starts where its consumer says (the cursor it keeps in the store, or where it
stood in memory) and moves past the events retention deleted before it got them, with an
error in the log. It reads a batch and hands it to the consumer, which saves its cursor
past the batch with the batch's effect (in the same transaction, or once the effect is
confirmed), so a restart resumes exactly there. Once it has read everything it waits to be
woken by the feed (a commit here, a NOTIFY from another replica) or for the consumer's
timeout, never polling. On an error it logs what it was doing, waits (doubling, with
jitter, capped) and resumes from the consumer's saved position, so the batch is tried
again; only a cancellation stops it. A consumer that must act on one replica at a time
follows only while it holds its lease (`Store.lease`).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import ConcurrentUpdate, DispatchError
from dispatchd.jobs import (
    POISON_AFTER,
    Backoff,
    JobStatus,
    backoff_s,
    first_of,
    stop_if_cancelled,
)
from dispatchd.store.base import (
    RETENTION_CURSOR,
    AdvanceCursor,
    Lease,
    LocalLease,
    SaveCursor,
    Store,
)

__all__ = ["Backoff", "Consumer", "Follower", "backoff_s", "stored_cursor"]

log = logging.getLogger(__name__)

# An empty read while the feed has heard of later events (the store not showing them yet)
# is tried again this soon, once per new head, before waiting for the log to grow.
RECHECK_S = 0.05


class Consumer(ABC):
    """What a follower does with the log: `resume` and `handle`; the rest has defaults."""

    @abstractmethod
    async def resume(self) -> int | None:
        """The cursor to go on from, read from where the consumer keeps it; None while
        there is nothing to follow. Called at the start, after an error, and when the
        follower is asked to `reload` or its `refresh_s` has passed."""

    @abstractmethod
    async def handle(self, events: Sequence[Event]) -> None:
        """Act on `events` (the next ones after the cursor, in log order) and save the
        cursor past them with the effect."""

    async def caught_up(self) -> float | None:
        """Every event so far is handled: do what waited for that; how long to wait for
        more at most (None: the follower's `idle_s`)."""
        return None

    def explain(self, exc: Exception) -> str | None:
        """An expected failure (an outage) in a few words, logged as a warning; None for
        anything else, logged as an error with its traceback."""
        if isinstance(exc, DispatchError):
            return f"database unavailable ({exc})"
        return None

    async def pause(self) -> None:
        """The follower stops following for now (an error, the lease lost, stopping):
        let go of what only a follower that is running needs."""
        return None

    async def skip(self, event: Event) -> bool:
        """Move the cursor past `event` without acting on it: it failed every time it was
        handled alone, and would block every event behind it. False: this consumer cannot
        skip, and the follower keeps retrying."""
        return False


async def stored_cursor(store: Store, name: str, head: int, *, fenced: bool = False) -> int:
    """The cursor saved under `name`. The first time there is none: `head` (the log's end
    when dispatchd started, so that an old database's history is not replayed), saved at
    once. `fenced` saves it with `AdvanceCursor`, so that two replicas starting together
    do not both take it."""
    saved = await store.get_cursor(name)
    if saved is not None:
        return saved
    now = utcnow()
    first = AdvanceCursor(name, None, head, now) if fenced else SaveCursor(name, head, now)
    await store.commit([first])
    return head


class Follower:
    def __init__(
        self,
        name: str,
        store: Store,
        feed: EventFeed,
        consumer: Consumer,
        *,
        batch: int,
        idle_s: float,
        backoff: Backoff,
        refresh_s: float | None = None,
        lease: Lease | None = None,
    ) -> None:
        """`name` says who it is in the log; `batch` events at most are read per turn;
        `idle_s` is the longest wait without news (a safety net: the feed wakes it);
        `refresh_s`, if given, makes it `resume` that often even while busy (a position
        that changes elsewhere, such as another replica's webhooks)."""
        self.name = name
        self.store = store
        self.feed = feed
        self.consumer = consumer
        self.batch = batch
        self.idle_s = idle_s
        self.backoff = backoff
        self.refresh_s = refresh_s
        self.lease = lease or LocalLease()
        self.failures = 0  # in a row, without a batch handled in between
        self.job = JobStatus(name)
        # Failures in a row while handling the events after this position: after
        # POISON_AFTER the events are handled one at a time, and an event that fails
        # POISON_AFTER times more alone is set aside (`Consumer.skip`).
        self._stuck_at: int | None = None
        self._stuck_tries = 0
        self._failed_at = 0.0
        self._reload = False
        self._wake = asyncio.Event()
        self._listening = False

    def reload(self) -> None:
        """The consumer's position changed: `resume` before the next read."""
        self._reload = True
        self._wake.set()

    def _grown(self, last_id: int) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Follow the log, while holding the lease, until cancelled."""
        if not self._listening:
            # Here rather than at construction: a follower that never runs is not told.
            self.feed.listen(self._grown)
            self._listening = True
        while True:
            stop_if_cancelled()
            try:
                await self.lease.acquire()
                await first_of(self._follow(), self.lease.lost())
            except Exception as exc:
                await self._failed(exc, "taking or holding its lease")
            finally:
                await self._let_go()

    async def _let_go(self) -> None:
        await self._quietly(self.consumer.pause)
        await self._quietly(self.lease.release)

    async def _quietly(self, step: Callable[[], Awaitable[None]]) -> None:
        """Let go of something; a failure to is logged, not raised, so the loop goes on."""
        try:
            await step()
        except Exception:
            log.exception("%s could not let go of a resource", self.name, extra=self._extra())

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        position: int | None = None
        resumed_at = 0.0
        seen = 0  # the feed's head when the store last showed nothing past the position
        while True:
            stop_if_cancelled()
            self._wake.clear()
            doing = "resuming"
            try:
                refresh_due = self.refresh_s is not None and (
                    loop.time() - resumed_at >= self.refresh_s
                )
                if position is None or self._reload or refresh_due:
                    self._reload = False
                    resumed_at = loop.time()
                    position = await self._resume()
                    if position is None:
                        self.job.ok()  # nothing to follow is no failure
                        await self._sleep(self.refresh_s or self.idle_s, reload_only=True)
                        continue
                doing = f"reading after event {position}"
                alone = self._stuck_at == position and self._stuck_tries >= POISON_AFTER
                events = await self.feed.read(position, 1 if alone else self.batch)
                if events:
                    first, last = events[0].id, events[-1].id
                    assert first is not None and last is not None
                    doing = f"handling events {first} to {last}"
                    try:
                        await self.consumer.handle(events)
                    except ConcurrentUpdate:
                        raise
                    except Exception as exc:
                        if await self._poisoned(position, events, exc):
                            position = None
                            continue
                        raise
                    position = last
                    self.failures = 0
                    self.job.ok()
                    continue
                latest = self.feed.latest
                if latest > position and latest > seen:
                    seen = latest
                    await asyncio.sleep(RECHECK_S)
                    continue
                doing = f"idle after event {position}"
                self.job.ok()
                wait_s = await self.consumer.caught_up()
                wait_s = self.idle_s if wait_s is None else wait_s
                if self.refresh_s is not None:
                    wait_s = min(wait_s, resumed_at + self.refresh_s - loop.time())
                await self._sleep(wait_s)
            except ConcurrentUpdate as exc:
                # Another writer moved the consumer's cursor (a replica that held the lease
                # a moment ago): take up its state at once.
                log.info("%s: %s; resuming", self.name, exc, extra=self._extra())
                position = None
            except Exception as exc:
                position = None
                await self._failed(exc, doing)

    async def _poisoned(self, position: int, events: Sequence[Event], exc: Exception) -> bool:
        """Count a failure to handle the events after `position`; True when the one event
        handled alone has failed often enough and was set aside (skipped, logged with its
        error, counted)."""
        if self._stuck_at != position:
            self._stuck_at, self._stuck_tries = position, 0
        self._stuck_tries += 1
        if len(events) != 1 or self._stuck_tries < 2 * POISON_AFTER:
            return False
        event = events[0]
        # An outage (the consumer knows its own) is waited out, never skipped over.
        if self.consumer.explain(exc) is not None or not await self.consumer.skip(event):
            return False
        tries, self._stuck_at, self._stuck_tries = self._stuck_tries, None, 0
        what = f"event {event.id} ({event.type})"
        log.error(
            "%s set aside %s after %d failures: %r",
            self.name,
            what,
            tries,
            exc,
            exc_info=exc,
            extra={**self._extra("follower_set_aside"), "event_id": event.id},
        )
        self.job.set_aside(what, exc)
        return True

    async def _resume(self) -> int | None:
        position = await self.consumer.resume()
        if position is None:
            return None
        pruned = await self.store.get_cursor(RETENTION_CURSOR)
        if pruned is None or position >= pruned:
            return position
        log.error(
            "events %d to %d were deleted by retention before the %s got them",
            position + 1,
            pruned,
            self.name,
            extra=self._extra("follower_gap"),
        )
        return pruned

    async def _sleep(self, timeout_s: float, *, reload_only: bool = False) -> None:
        """Wait up to `timeout_s` to be woken: by the log growing or by `reload`, or by
        `reload` alone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return
            if not reload_only or self._reload:
                return
            self._wake.clear()

    async def _failed(self, exc: Exception, doing: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._failed_at > self.backoff.cap_s:
            self.failures = 0  # the first failure after a good spell waits the least
        self._failed_at = now
        self.failures += 1
        wait_s = backoff_s(self.failures, self.backoff.base_s, self.backoff.cap_s)
        self.job.failed(exc, doing)
        await self._quietly(self.consumer.pause)
        problem = self.consumer.explain(exc)
        if problem is None:
            log.error(
                "%s failed while %s; retrying in %.2fs",
                self.name,
                doing,
                wait_s,
                exc_info=exc,
                extra=self._extra("follower_retry"),
            )
        else:
            log.warning(
                "%s: %s while %s; retrying in %.2fs",
                self.name,
                problem,
                doing,
                wait_s,
                extra=self._extra("follower_retry"),
            )
        await asyncio.sleep(wait_s)

    def _extra(self, action: str = "follower") -> dict[str, str]:
        return {"action": action, "follower": self.name}
