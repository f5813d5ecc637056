"""EventFeed waits: woken by the log, cancelled cleanly; the tasks it keeps from commits."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.engine.feed import EventFeed
from dispatchd.store.base import InsertTask, Store, UpdateTask
from tests.contract.test_store import make_task


def feed() -> EventFeed:
    return EventFeed(cast(Store, None))  # waiting never touches the store


async def test_a_wait_ends_when_the_log_passes_the_cursor() -> None:
    f = feed()
    waiting = asyncio.create_task(f.wait(0, 30))
    await asyncio.sleep(0)
    f.advanced(1)
    assert await waiting is True


async def test_a_wait_times_out_false() -> None:
    assert await feed().wait(0, 0.01) is False


async def test_a_cancellation_that_meets_a_wake_up_is_not_lost() -> None:
    """The log grows and the reader is cancelled in the same loop turn (a shutdown during
    traffic): the reader must end cancelled, not carry on as if woken."""
    f = feed()
    waiting = asyncio.create_task(f.wait(0, 30))
    await asyncio.sleep(0)
    f.advanced(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- the tasks of events, as this process's commits wrote them --------------------------


class CountingStore:
    """Serves `get_tasks` from a dict and counts what is asked for."""

    def __init__(self, tasks: dict[str, Any]) -> None:
        self.tasks = tasks
        self.asked: list[list[str]] = []

    async def get_tasks(self, ids: list[str]) -> list[Any]:
        self.asked.append(list(ids))
        return [self.tasks[i] for i in ids if i in self.tasks]


def ev(event_id: int, task_id: str) -> Event:
    return Event(type="task.started", created_at=utcnow(), task_id=task_id, id=event_id)


async def test_tasks_written_here_at_or_after_their_events_are_not_read_back() -> None:
    stored = make_task(id="a", title="as stored")
    written = make_task(id="a", title="as written")
    store = CountingStore({"a": stored, "b": make_task(id="b")})
    f = EventFeed(cast(Store, store))
    f.written([UpdateTask(written, written.status, None)], [ev(5, "a")])

    found = await f.tasks_of([ev(4, "a"), ev(5, "a")])
    assert found["a"].title == "as written" and store.asked == []

    # An event of the task later than the copy (another replica's): read from the store.
    found = await f.tasks_of([ev(6, "a"), ev(7, "b")])
    assert found["a"].title == "as stored" and store.asked == [["a", "b"]]


async def test_the_task_memory_forgets_the_oldest_writes() -> None:
    store = CountingStore({})
    f = EventFeed(cast(Store, store))
    f.task_memory = 2
    for n, task_id in enumerate(["a", "b", "c"], 1):
        f.written([InsertTask(make_task(id=task_id))], [ev(n, task_id)])
    found = await f.tasks_of([ev(1, "a"), ev(2, "b"), ev(3, "c")])
    assert sorted(found) == ["b", "c"] and store.asked == [["a"]]
