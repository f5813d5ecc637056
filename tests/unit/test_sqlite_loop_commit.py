"""Writes made on the event loop in one turn share one SQLite transaction and one commit
(`LoopCommit`): each runs at once in a savepoint, a failing one is undone alone, none is
answered before the commit that holds it, and a failed commit fails them all."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from dispatchd.errors import DuplicateKey, StoreError
from dispatchd.store import sqlite as sqlite_module
from dispatchd.store.connector import Body, execute, one
from dispatchd.store.sqlite import SQLiteConnector
from tests.unit.test_sqlite_group_commit import (
    FailingCommit,
    RollsBackOn,
    insert,
    keys,
    lost_midway,
)


def traced(connector: SQLiteConnector) -> list[str]:
    """The statements the writer connection runs from now on (BEGIN, SAVEPOINT, COMMIT…)."""
    seen: list[str] = []
    conn = connector._writer_connection()
    conn.set_trace_callback(lambda sql: seen.append(sql.split()[0].upper()))
    return seen


def outside(tmp_path: Path) -> set[str]:
    """The keys another connection sees: what is committed."""
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        return {row[0] for row in conn.execute("SELECT k FROM t")}
    finally:
        conn.close()


async def test_writes_of_one_turn_share_one_commit(connector: SQLiteConnector) -> None:
    seen = traced(connector)
    assert (
        await asyncio.gather(*(connector.transaction(insert(f"k{i}")) for i in range(5))) == [1] * 5
    )
    assert seen.count("BEGIN") == 1 and seen.count("COMMIT") == 1
    assert seen.count("SAVEPOINT") == 5
    assert connector._writer is None  # all of it on the loop's thread
    assert await keys(connector) == {f"k{i}" for i in range(5)}


async def test_writes_of_later_turns_commit_on_their_own(connector: SQLiteConnector) -> None:
    seen = traced(connector)
    for i in range(3):
        assert await connector.transaction(insert(f"k{i}")) == 1
    assert seen.count("COMMIT") == 3


async def test_no_write_is_answered_before_its_commit(
    connector: SQLiteConnector, tmp_path: Path
) -> None:
    job = asyncio.ensure_future(connector.transaction(insert("a")))
    await asyncio.sleep(0)  # the write ran, in the open transaction
    assert connector._shared is not None
    assert not job.done()
    assert outside(tmp_path) == set()  # not committed, so not answered
    assert await job == 1
    assert outside(tmp_path) == {"a"}


async def test_a_later_write_of_the_turn_sees_the_earlier_ones(
    connector: SQLiteConnector,
) -> None:
    def read(key: str) -> Body[int | None]:
        row = yield one("SELECT v FROM t WHERE k = :k", {"k": key})
        return None if row is None else int(row["v"])

    wrote, seen = await asyncio.gather(
        connector.transaction(insert("x", 7)), connector.transaction(read("x"))
    )
    assert (wrote, seen) == (1, 7)


async def test_a_failing_write_is_undone_alone_and_answered_with_the_commit(
    connector: SQLiteConnector,
) -> None:
    await connector.transaction(insert("taken"))

    def insert_then_fail(key: str) -> Body[None]:
        yield execute("INSERT INTO t (k, v) VALUES (:k, 1)", {"k": key})
        raise RuntimeError("the body gave up")

    first = asyncio.ensure_future(connector.transaction(insert("a")))
    failing = asyncio.ensure_future(connector.transaction(insert_then_fail("b")))
    duplicate = asyncio.ensure_future(connector.transaction(insert("taken")))
    last = asyncio.ensure_future(connector.transaction(insert("c")))
    await asyncio.sleep(0)  # every write ran; none committed yet
    assert not any(job.done() for job in (first, failing, duplicate, last))
    with pytest.raises(RuntimeError, match="gave up"):
        await failing
    with pytest.raises(DuplicateKey):  # translated as for a write alone
        await duplicate
    assert (await first, await last) == (1, 1)
    assert await keys(connector) == {"taken", "a", "c"}


async def test_a_failed_commit_fails_every_write_it_held(connector: SQLiteConnector) -> None:
    real = connector._writer_connection()
    connector._writer_conn = FailingCommit(real)  # type: ignore[assignment]
    jobs = [asyncio.ensure_future(connector.transaction(insert(f"k{i}"))) for i in range(3)]
    for job in jobs:
        with pytest.raises(StoreError, match="disk I/O error"):
            await job
    connector._writer_conn = real
    assert await keys(connector) == set()
    assert await connector.transaction(insert("after")) == 1  # the writer is free again


async def test_a_transaction_lost_midway_fails_the_writes_it_held(
    connector: SQLiteConnector,
) -> None:
    real = connector._writer_connection()
    connector._writer_conn = RollsBackOn(real, "fatal")  # type: ignore[assignment]
    before = asyncio.ensure_future(connector.transaction(insert("before")))
    fatal = asyncio.ensure_future(connector.transaction(insert("fatal")))
    after = asyncio.ensure_future(connector.transaction(insert("after")))
    # A write after it in the same turn goes into a transaction of its own.
    await lost_midway(connector, real, before, fatal, after)


async def test_a_full_transaction_is_committed_and_the_next_writes_start_another(
    connector: SQLiteConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "GROUP_MAX", 4)
    seen = traced(connector)
    done = await asyncio.gather(*(connector.transaction(insert(f"k{i}")) for i in range(10)))
    assert done == [1] * 10
    assert seen.count("COMMIT") == 3  # 4 + 4 + 2
    assert len(await keys(connector)) == 10


async def test_close_commits_the_open_transaction(tmp_path: Path) -> None:
    connector = SQLiteConnector(tmp_path / "db.sqlite")
    await connector.open()
    await connector.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)", {})
    jobs = [asyncio.ensure_future(connector.transaction(insert(f"k{i}"))) for i in range(3)]
    await asyncio.sleep(0)  # they ran; the commit is due at the loop's next turn
    await connector.close()
    assert await asyncio.gather(*jobs) == [1] * 3
    assert outside(tmp_path) == {"k0", "k1", "k2"}


async def test_a_write_refused_for_another_of_its_turn_is_answered_once_that_one_is_seen(
    connector: SQLiteConnector, tmp_path: Path
) -> None:
    """Two creates with one idempotency key in one turn: the second fails on the first's
    row, and learns it only when that row is committed, so that its caller's next read
    (on another connection) finds the task it lost to."""
    first = asyncio.ensure_future(connector.transaction(insert("key")))
    second = asyncio.ensure_future(connector.transaction(insert("key")))
    with pytest.raises(DuplicateKey):
        await second
    assert outside(tmp_path) == {"key"}
    assert await first == 1


async def test_a_cancelled_caller_does_not_undo_its_write(
    connector: SQLiteConnector, tmp_path: Path
) -> None:
    job = asyncio.ensure_future(connector.transaction(insert("a")))
    await asyncio.sleep(0)
    job.cancel()
    other = await connector.transaction(insert("b"))
    assert other == 1
    # The write ran before the cancel and was committed with the turn's transaction.
    assert outside(tmp_path) == {"a", "b"}
