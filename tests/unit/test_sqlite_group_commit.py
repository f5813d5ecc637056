"""The SQLite writer's group commit: jobs queued while it works share one commit, a failing
job is undone alone, and no job is answered before the commit that holds its writes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from dispatchd.errors import DuplicateKey, StoreError
from dispatchd.store.connector import Body, execute, one
from dispatchd.store.sqlite import SQLiteConnector


def insert(key: str, value: int = 1) -> Body[int]:
    count: int = yield execute("INSERT INTO t (k, v) VALUES (:k, :v)", {"k": key, "v": value})
    return count


def insert_then_fail(key: str) -> Body[None]:
    yield execute("INSERT INTO t (k, v) VALUES (:k, 1)", {"k": key})
    raise RuntimeError("the body gave up")


async def keys(connector: SQLiteConnector) -> set[str]:
    rows = await connector.fetch_all("SELECT k FROM t", {})
    return {row["k"] for row in rows}


async def hold_writer(connector: SQLiteConnector) -> tuple[threading.Event, asyncio.Task[Any]]:
    """Keep the writer thread busy in a job of its own until the event is set, so that the
    jobs sent meanwhile (the writer connection is taken: none runs inline) queue up and go
    as one group."""
    release = threading.Event()
    started = threading.Event()

    def blocking(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    holder = asyncio.ensure_future(connector._on_thread(blocking))
    await asyncio.to_thread(started.wait, 10)
    return release, holder


def record_groups(connector: SQLiteConnector, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    run_group = connector._run_group

    def counted(fns: list[Any]) -> Any:
        sizes.append(len(fns))
        return run_group(fns)

    monkeypatch.setattr(connector, "_run_group", counted)
    return sizes


async def test_queued_jobs_share_one_commit(
    connector: SQLiteConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = record_groups(connector, monkeypatch)
    release, holder = await hold_writer(connector)
    jobs = [asyncio.ensure_future(connector.transaction(insert(f"k{i}"))) for i in range(20)]
    await asyncio.sleep(0.05)  # every job is in the queue
    assert not any(job.done() for job in jobs)
    release.set()
    assert await asyncio.gather(*jobs) == [1] * 20
    await holder
    assert sizes == [20]
    assert await keys(connector) == {f"k{i}" for i in range(20)}


async def test_a_failing_job_is_undone_alone(
    connector: SQLiteConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = record_groups(connector, monkeypatch)
    await connector.transaction(insert("taken"))
    release, holder = await hold_writer(connector)
    first = asyncio.ensure_future(connector.transaction(insert("a")))
    failing = asyncio.ensure_future(connector.transaction(insert_then_fail("b")))
    duplicate = asyncio.ensure_future(connector.transaction(insert("taken")))
    last = asyncio.ensure_future(connector.transaction(insert("c")))
    await asyncio.sleep(0.05)
    release.set()
    await holder
    assert await first == 1
    with pytest.raises(RuntimeError, match="gave up"):
        await failing
    with pytest.raises(DuplicateKey):  # translated as for a job alone
        await duplicate
    assert await last == 1
    assert sizes == [4]
    assert await keys(connector) == {"taken", "a", "c"}


async def test_later_jobs_see_earlier_jobs_of_their_group(
    connector: SQLiteConnector,
) -> None:
    def read(key: str) -> Body[int | None]:
        row = yield one("SELECT v FROM t WHERE k = :k", {"k": key})
        return None if row is None else int(row["v"])

    release, holder = await hold_writer(connector)
    wrote = asyncio.ensure_future(connector.transaction(insert("x", 7)))
    seen = asyncio.ensure_future(connector.transaction(read("x")))
    await asyncio.sleep(0.05)
    release.set()
    await holder
    assert await wrote == 1
    assert await seen == 7


class FailingCommit:
    """The writer's connection, except that its COMMIT fails."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, params)


async def test_a_failed_commit_fails_every_job_of_the_group(
    connector: SQLiteConnector,
) -> None:
    release, holder = await hold_writer(connector)
    jobs = [asyncio.ensure_future(connector.transaction(insert(f"k{i}"))) for i in range(3)]
    await asyncio.sleep(0.05)
    real = connector._writer_conn
    assert real is not None
    connector._writer_conn = FailingCommit(real)  # type: ignore[assignment]
    release.set()
    await holder  # its transaction began on the connection before the swap
    for job in jobs:
        with pytest.raises(StoreError, match="disk I/O error"):
            await job
    connector._writer_conn = real
    assert await keys(connector) == set()  # nothing answered as written was kept or lost
    assert await connector.transaction(insert("after")) == 1


class RollsBackOn:
    """The writer's connection, where one statement makes SQLite drop the transaction."""

    def __init__(self, conn: sqlite3.Connection, key: str) -> None:
        self._conn = conn
        self._key = key

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, params: Any = ()) -> Any:
        values = params.values() if isinstance(params, dict) else params
        if self._key in values:
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, params)


async def test_a_transaction_lost_midway_fails_the_jobs_before_and_runs_the_rest(
    connector: SQLiteConnector,
) -> None:
    release, holder = await hold_writer(connector)
    before = asyncio.ensure_future(connector.transaction(insert("before")))
    fatal = asyncio.ensure_future(connector.transaction(insert("fatal")))
    after = asyncio.ensure_future(connector.transaction(insert("after")))
    await asyncio.sleep(0.05)
    real = connector._writer_conn
    assert real is not None
    connector._writer_conn = RollsBackOn(real, "fatal")  # type: ignore[assignment]
    release.set()
    await holder
    await lost_midway(connector, real, before, fatal, after)


async def lost_midway(
    connector: SQLiteConnector,
    real: sqlite3.Connection,
    before: asyncio.Future[int],
    fatal: asyncio.Future[int],
    after: asyncio.Future[int],
) -> None:
    """The writes before the one SQLite rolled the transaction back on fail with the lost
    transaction, that one with its own error, and the write after it lands on its own."""
    with pytest.raises(StoreError, match="rolled back"):
        await before
    with pytest.raises(StoreError, match="disk is full"):
        await fatal
    assert await after == 1
    connector._writer_conn = real
    assert await keys(connector) == {"after"}


async def test_close_answers_every_queued_job(tmp_path: Path) -> None:
    connector = SQLiteConnector(tmp_path / "db.sqlite")
    await connector.open()
    await connector.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)", {})
    release, holder = await hold_writer(connector)
    jobs = [asyncio.ensure_future(connector.transaction(insert(f"k{i}"))) for i in range(5)]
    await asyncio.sleep(0.05)
    # close() waits for the writer in this thread: let the holder go from another one.
    threading.Timer(0.1, release.set).start()
    await connector.close()
    await holder
    assert await asyncio.gather(*jobs) == [1] * 5
    check = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 5
    finally:
        check.close()
