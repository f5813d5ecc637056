"""`transact` with the task as this process last wrote it (`known`): the copy saves the
read when it is the row, and anything else it leads to is decided again on the row."""

from __future__ import annotations

from dispatchd.domain import lifecycle
from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Change
from dispatchd.domain.models import Task, TaskStatus
from dispatchd.engine.feed import EventFeed
from dispatchd.engine.transitions import commit_changes, transact
from dispatchd.store.base import TouchTask
from dispatchd.store.sqlite import SQLiteStore
from tests.contract.test_store import make_task


class Reads:
    def __init__(self, store: SQLiteStore) -> None:
        self.n = 0
        read = store.get_task

        async def counted(task_id: str) -> Task | None:
            self.n += 1
            return await read(task_id)

        store.get_task = counted  # type: ignore[method-assign]


async def created(store: SQLiteStore) -> tuple[EventFeed, Task]:
    feed = EventFeed(store)
    store.on_written(feed.written)
    task = make_task()
    done = await commit_changes(store, [(lifecycle.create(task, utcnow(), blocked=False), None)])
    return feed, done.tasks[task.id]


async def cancel(task: Task) -> list[tuple[Change, Task | None]]:
    return [(lifecycle.cancel(task, utcnow(), by="admin", reason="test"), task)]


async def test_the_copy_of_the_last_write_saves_the_read(store: SQLiteStore) -> None:
    feed, task = await created(store)
    assert feed.task(task.id) == task
    reads = Reads(store)
    done = await transact(store, task.id, cancel, known=feed.task)
    assert done.status is TaskStatus.CANCELLED and reads.n == 0
    assert feed.task(task.id) == done == await store.get_task(task.id)


async def test_a_copy_behind_the_row_fails_its_version_check_and_the_row_is_read(
    store: SQLiteStore,
) -> None:
    feed, task = await created(store)
    await store.commit([TouchTask(task.id, task.version)])  # the row moves on, the copy not
    reads = Reads(store)
    done = await transact(store, task.id, cancel, known=feed.task)
    assert done.status is TaskStatus.CANCELLED and reads.n == 1
    assert done.version == task.version + 2


async def test_an_error_or_nothing_to_do_on_a_copy_is_decided_again_on_the_row(
    store: SQLiteStore,
) -> None:
    _, task = await created(store)
    reads = Reads(store)
    # A copy that says the task is finished: cancelling it is refused; the row says pending.
    finished = task.evolve(status=TaskStatus.COMPLETED)
    done = await transact(store, task.id, cancel, known=lambda _: finished)
    assert done.status is TaskStatus.CANCELLED and reads.n == 1

    # A copy on which there is nothing to do: the row still has the last word.
    _, other = await created(store)
    shown = other.evolve(title="already done")

    async def unless_done(t: Task) -> list[tuple[Change, Task | None]]:
        return [] if t.title == "already done" else await cancel(t)

    done = await transact(store, other.id, unless_done, known=lambda _: shown)
    assert done.status is TaskStatus.CANCELLED and reads.n == 2
