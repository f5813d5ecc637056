"""The SQLite writer runs a transaction on the event loop's thread when it can have the
writer at once, and hands it to the writer thread otherwise: the loop never waits for a
database lock, WAL checkpoints run on a thread of their own, and a lock held too long by
another process fails the write with a clear error."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from dispatchd.errors import DuplicateKey, StoreError
from dispatchd.store import sqlite as sqlite_module
from dispatchd.store import sqlite_commits
from dispatchd.store.connector import Body, execute
from dispatchd.store.sqlite import SQLiteConnector


def insert(key: str) -> Body[int]:
    count: int = yield execute("INSERT INTO t (k, v) VALUES (:k, 1)", {"k": key})
    return count


def outsider(path: Path) -> sqlite3.Connection:
    """Another process's connection to the same file."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


async def test_a_write_runs_on_the_loop_thread_when_the_writer_is_free(
    connector: SQLiteConnector,
) -> None:
    threads: list[int] = []

    def write(conn: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        return int(conn.execute("INSERT INTO t (k, v) VALUES ('a', 1)").rowcount)

    assert await connector._write(write) == 1
    assert threads == [threading.get_ident()]
    assert connector._writer is None  # no writer thread was needed
    rows = await connector.fetch_all("SELECT k FROM t", {})
    assert rows == [{"k": "a"}]


async def test_a_failing_write_is_rolled_back_and_the_next_one_goes_ahead(
    connector: SQLiteConnector,
) -> None:
    assert await connector.transaction(insert("a")) == 1

    def twice(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES ('b', 1)")
        conn.execute("INSERT INTO t (k, v) VALUES ('a', 1)")

    with pytest.raises(DuplicateKey):
        await connector._write(twice)
    assert await connector.transaction(insert("c")) == 1
    rows = await connector.fetch_all("SELECT k FROM t ORDER BY k", {})
    assert [r["k"] for r in rows] == ["a", "c"]  # "b" went with its transaction


async def test_a_lock_held_elsewhere_sends_the_write_to_the_writer_thread_and_the_loop_runs_on(
    connector: SQLiteConnector, tmp_path: Path
) -> None:
    other = outsider(tmp_path / "db.sqlite")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (k, v) VALUES ('theirs', 1)")
    threads: list[int] = []

    def write(conn: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        return int(conn.execute("INSERT INTO t (k, v) VALUES ('ours', 1)").rowcount)

    job = asyncio.ensure_future(connector._write(write))
    ticks = 0
    for _ in range(20):  # the loop keeps turning while the write waits for the lock
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not job.done() and threads == []
    other.execute("COMMIT")
    other.close()
    assert await asyncio.wait_for(job, 5) == 1
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    rows = await connector.fetch_all("SELECT k FROM t ORDER BY k", {})
    assert [r["k"] for r in rows] == ["ours", "theirs"]
    # With the lock free again, the next write runs inline.
    threads.clear()
    await connector._write(lambda conn: threads.append(threading.get_ident()))
    assert threads == [threading.get_ident()]


async def test_a_lock_held_too_long_fails_the_write_with_a_store_error(
    connector: SQLiteConnector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_S", 0.2)
    other = outsider(tmp_path / "db.sqlite")
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            await asyncio.wait_for(connector.transaction(insert("late")), 5)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await connector.transaction(insert("later")) == 1


async def test_writes_in_a_row_let_the_loop_run_in_between(connector: SQLiteConnector) -> None:
    seen: list[str] = []

    async def writer() -> None:
        for k in range(3):
            await connector.transaction(insert(f"k{k}"))
            seen.append(f"wrote k{k}")

    async def other() -> None:
        for k in range(3):
            seen.append(f"other {k}")
            await asyncio.sleep(0)

    await asyncio.gather(writer(), other())
    assert seen.index("other 1") < seen.index("wrote k2"), seen


async def test_checkpoints_run_off_the_writer_and_keep_the_wal_in_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_commits, "CHECKPOINT_S", 0.05)
    connector = SQLiteConnector(tmp_path / "db.sqlite")
    await connector.open()
    try:
        await connector.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)", {})
        writer = connector._writer_connection()
        # The writer never checkpoints inside a commit.
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for k in range(200):
            await connector.transaction(insert(f"k{k}"))
        for _ in range(100):
            if connector._checkpoints.rounds:
                break
            await asyncio.sleep(0.02)
        assert connector._checkpoints.rounds >= 1
        # Nothing more written: no more rounds.
        await asyncio.sleep(0.2)
        rounds = connector._checkpoints.rounds
        await asyncio.sleep(0.2)
        assert connector._checkpoints.rounds == rounds
    finally:
        await connector.close()
    assert connector._checkpoints._thread is None  # stopped with the store


def test_a_stop_that_comes_as_a_round_begins_still_ends_the_checkpoint_thread(
    tmp_path: Path,
) -> None:
    """`stop` sets both events; if it does so just as a round begins (after the pause,
    before the round clears `dirty`), the thread must still end: else `close` waits for
    it for ever."""
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).close()
    checkpoints = sqlite_commits.Checkpoints(lambda: sqlite3.connect(path))
    stopping = checkpoints._stopping
    real_wait = stopping.wait

    def stop_arrives(timeout: float | None = None) -> bool:
        real_wait(0)
        stopping.set()  # as `stop` does, between the pause and the round
        checkpoints._dirty.set()
        return False

    stopping.wait = stop_arrives  # type: ignore[method-assign]
    checkpoints.wrote()
    thread = checkpoints._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
