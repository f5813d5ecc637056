"""The event log's growth, told to the readers inside this process.

Every commit in this process reports its events here at once; on PostgreSQL a LISTEN
connection reports other replicas' commits too. Readers keep their own cursor and wait for
the log to pass it: no polling, no fixed tick. Recent local events are kept in memory so
that a reader close behind the head does not go back to the database for them, but only
while they are known to be the whole log (consecutive ids); otherwise it reads the store.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from dispatchd.domain.models import Event, Task
from dispatchd.store.base import InsertTask, Op, Store, UpdateTask

RECENT = 4096
# Tasks remembered from this process's commits (the least recently written forgotten first).
TASK_MEMORY = 8192


class EventFeed:
    def __init__(self, store: Store, *, recent: int = RECENT) -> None:
        self.store = store
        self.latest = 0
        self._recent: deque[Event] = deque(maxlen=recent)
        self._waiters: set[asyncio.Future[None]] = set()
        self._listeners: list[Callable[[int], None]] = []
        # task id -> (the task as last written here, the last event of it then appended)
        self._tasks: OrderedDict[str, tuple[Task, int]] = OrderedDict()
        self.task_memory = TASK_MEMORY

    def listen(self, listener: Callable[[int], None]) -> None:
        """Call `listener(last_id)` each time the log grows."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self.latest = max(self.latest, await self.store.last_event_id())

    # --- writers ----------------------------------------------------------------------

    def committed(self, events: Sequence[Event]) -> None:
        """A commit in this process appended `events` (ids ascending)."""
        for event in events:
            assert event.id is not None
            last = self._recent[-1].id if self._recent else None
            if last is not None and event.id != last + 1:
                self._recent.clear()  # a gap: someone else's commit sits in between
            self._recent.append(event)
        if events and events[-1].id is not None:
            self.advanced(events[-1].id)

    def written(self, ops: Sequence[Op], events: Sequence[Event]) -> None:
        """A commit in this process wrote `ops` and appended `events` (`Store.on_written`)."""
        last: dict[str, int] = {}
        for event in events:
            if event.task_id is not None and event.id is not None:
                last[event.task_id] = event.id
        tasks = self._tasks
        for op in ops:
            if not isinstance(op, InsertTask | UpdateTask):
                continue
            task = op.task
            known = tasks.pop(task.id, None)
            # A write without an event of its task is newer still than the events before.
            at = last.get(task.id, known[1] if known is not None else 0)
            tasks[task.id] = (task, at)
        while len(tasks) > self.task_memory:
            tasks.popitem(last=False)

    def task(self, task_id: str) -> Task | None:
        """The task as a commit of this process last wrote it, if remembered."""
        known = self._tasks.get(task_id)
        return known[0] if known is not None else None

    def last_event_of(self, task_id: str) -> int | None:
        """The id of the task's last event a commit of this process appended, if remembered."""
        known = self._tasks.get(task_id)
        return known[1] if known is not None else None

    async def tasks_of(self, events: Sequence[Event]) -> dict[str, Task]:
        """The tasks of `events`, each as it was at its latest event among them or later:
        from this process's commits when they wrote it at or after that event, otherwise
        read (a task retention deleted is left out)."""
        need: dict[str, int] = {}
        for event in events:
            if event.task_id is not None and event.id is not None:
                need[event.task_id] = max(event.id, need.get(event.task_id, 0))
        found: dict[str, Task] = {}
        missing: list[str] = []
        for task_id, at in need.items():
            known = self._tasks.get(task_id)
            if known is not None and known[1] >= at:
                found[task_id] = known[0]
            else:
                missing.append(task_id)
        if missing:
            for task in await self.store.get_tasks(sorted(missing)):
                found[task.id] = task
        return found

    def advanced(self, last_id: int) -> None:
        """The log reaches at least `last_id` (a commit here or on another replica)."""
        if last_id <= self.latest:
            return
        self.latest = last_id
        for listener in self._listeners:
            listener(last_id)
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- readers ----------------------------------------------------------------------

    async def wait(self, after: int, wait_s: float | None = None) -> bool:
        """Wait until the log holds an event after `after`; False on timeout."""
        while self.latest <= after:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` can swallow a
                # cancellation that arrives as the waiter completes, and a reader cancelled
                # at shutdown would then wait on for ever.
                async with asyncio.timeout(wait_s):
                    await waiter
            except TimeoutError:
                return self.latest > after
            finally:
                self._waiters.discard(waiter)
        return True

    async def read(self, after: int, limit: int = 1000) -> list[Event]:
        """The events after `after`, in order, from memory when it holds all of them."""
        recent = self._recent
        if recent and recent[0].id is not None and recent[-1].id == self.latest:
            first = recent[0].id
            if first <= after + 1 <= self.latest:
                start = after + 1 - first
                return [recent[i] for i in range(start, min(start + limit, len(recent)))]
            if after >= self.latest:
                return []
        return await self.store.read_events(after=after, limit=limit)
