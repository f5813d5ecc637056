"""The embedded engine: SQLite in WAL mode.

All writes go through one connection, so writers queue in the process instead of fighting
over the database lock; readers use their own connections in a small pool of threads, which
WAL lets run beside the writer.

A write transaction runs whole on the event loop's thread when the writer connection is
free and the database lock can be had at once: a transaction is a few statements
of some microseconds each, and handing it to a thread and back cost more than running it,
in hops and in the two threads trading the GIL at every statement. The writes the loop
makes in one turn share one transaction and one commit, each in a savepoint, answered once
the commit is done (`sqlite_commits.LoopCommit`). Otherwise (the writer thread is busy,
another process holds the lock) the job goes to the writer thread, which waits for the
lock, and a job never waits on the loop. WAL checkpoints, which sync the file, run on a
thread of their own (`Checkpoints`), never inside a write.

The writer thread takes its jobs from a queue. Jobs that wait in that queue while it works
share one commit (group commit): one BEGIN, a SAVEPOINT per job so that a failing job is
undone alone, one COMMIT, then every job's answer. No job is answered before the commit
that holds its writes; if that commit fails, every job in it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dispatchd.errors import StoreError
from dispatchd.jobs import JobStatus
from dispatchd.store.base import Lease, LocalLease
from dispatchd.store.connector import (
    PLACEHOLDER,
    Body,
    Dialect,
    Query,
    Row,
    check,
    drive,
    duplicate_key,
    statements,
)
from dispatchd.store.rows import SQLITE as SQLITE_CODEC
from dispatchd.store.sqlite_commits import Checkpoints, LoopCommit
from dispatchd.store.sqlstore import SQLStore

T = TypeVar("T")

logger = logging.getLogger(__name__)

SQLITE = Dialect(
    name="sqlite",
    codec=SQLITE_CODEC,
    fragments={
        # The single writer thread already keeps other writers out: no row locks.
        "for_update": "",
        "skip_locked": "",
        # Without statistics SQLite prefers the equality on `status` and sorts every
        # pending task; the queue index already holds them in claim order, so the first
        # rows that fit end the scan (a claim stays ~0.1 ms at a million pending tasks).
        "queue_index": " INDEXED BY tasks_queue",
        # The same preference would scan every pending (or blocked) task for the few whose
        # backoff (run_at) falls in the sweep's window: each sweep would grow with the queue.
        "by_not_before": " INDEXED BY tasks_not_before",
        "by_run_at": " INDEXED BY tasks_run_at",
        # /stats and the pruner would read (and sort) every finished task kept, for the
        # last 15 minutes' or the oldest few.
        "by_finished": " INDEXED BY tasks_finished",
        # The sweep's deadlines and leases: by status it would read every running task.
        "by_deadline": " INDEXED BY tasks_deadline",
        "by_lease": " INDEXED BY tasks_lease",
        "queue_order": "priority_rank DESC, due_at IS NULL, due_at, created_at, id",
        "capable": "NOT EXISTS (SELECT 1 FROM json_each(tasks.capabilities) c "
        "WHERE c.value NOT IN (SELECT value FROM json_each(:caps)))",
        "lock_event_order": "",
        "plan_queue": "",
        "append_events": "",
        "lock_migrations": "",
        "in_ids": " IN (SELECT value FROM json_each(:ids))",
        "event_room": "json_extract(data, '$.room')",
        # The room a `room.*` event being appended names (`insert_event`).
        "new_event_room": "json_extract(:data, '$.room')",
        # The ids bound as `:ids`, one row each (`r.value`).
        "id_rows": "json_each(:ids) AS r",
        "for_share": "",
        "migration_time": "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    },
    json_has=lambda col, p: f"EXISTS (SELECT 1 FROM json_each({col}) WHERE value = {p})",
    json_has_key=lambda col, p: f"EXISTS (SELECT 1 FROM json_each({col}) WHERE key = {p})",
    dump_list=SQLITE_CODEC.dump_json,
)


_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_Outcome = tuple[Any, BaseException | None]

# The most jobs one commit holds: enough to fold a burst of small writes into one commit,
# few enough that the first of them is not kept waiting long for its answer.
GROUP_MAX = 64
# How long the writer thread waits for a database lock another process holds.
BUSY_TIMEOUT_S = 10.0


class SQLiteConnector:
    dialect = SQLITE

    def __init__(self, path: Path, *, readers: int = 4, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._synchronous = synchronous
        # Held through each write transaction, by the loop (inline) or the writer thread.
        self._writing = threading.Lock()
        self._checkpoints = Checkpoints(self._connect)
        self._reader_pool = ThreadPoolExecutor(
            readers, thread_name_prefix="dispatchd-sqlite-reader"
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        # The transaction the loop's writes share until its next turn, while one is open.
        self._shared: LoopCommit | None = None
        self._closed = False

    # --- connections ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: a connection opened after the file was deleted fails instead of quietly
        # creating an empty database (`open` creates the file once).
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        # Rows come as plain tuples and are made dicts by `_rows`: a `sqlite3.Row` looks a
        # name up by a linear scan, which cost more than the rest of decoding a task row.
        # Another process on the same file (a second `serve`, `db upgrade`) may hold the lock;
        # set the wait first, since switching to WAL itself takes the lock.
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            sqlite3.connect(self.path).close()
        await self._write(lambda conn: None)

    async def close(self) -> None:
        self._closed = True
        if self._shared is not None:
            self._commit_shared(self._shared)
        writer, self._writer = self._writer, None
        if writer is not None:
            self._jobs.put(None)
            writer.join()
        self._checkpoints.stop()
        self._reader_pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def ping(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            # An open connection keeps answering after its file is deleted or unmounted;
            # the data is gone for every new connection, so the store is not reachable.
            if not self.path.exists():
                raise StoreError(f"database file {self.path} is missing")
            conn.execute("SELECT 1").fetchone()

        await self._read(run)

    # --- the writer thread and the readers -------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a transaction: here when the writer is free (in the transaction
        this turn of the loop shares, `LoopCommit`), else on the writer thread."""
        if self._closed:
            raise StoreError("the store is closed")
        shared = self._shared
        if shared is not None and (shared.lost is not None or len(shared.waiting) >= GROUP_MAX):
            self._commit_shared(shared)  # full, or rolled back by SQLite: start another
            shared = None
        if shared is None:
            shared = self._open_shared()
        if shared is None:
            return await self._on_thread(fn)
        return await shared.run(lambda conn: _translated(functools.partial(fn, conn)))

    def _open_shared(self) -> LoopCommit | None:
        """Begin the transaction the loop's writes share until its next turn; None when the
        writer is busy or another process holds the database lock."""
        if not self._writing.acquire(blocking=False):
            return None
        try:
            conn = self._writer_connection()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self._writing.release()
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return None  # another process holds the lock: the writer thread waits for it
            raise StoreError(f"database error: {exc}") from exc
        except BaseException:
            self._writing.release()
            raise
        loop = asyncio.get_running_loop()
        shared = self._shared = LoopCommit(conn, loop)
        loop.call_soon(self._commit_shared, shared)
        return shared

    def _commit_shared(self, shared: LoopCommit) -> None:
        if self._shared is not shared:
            return  # committed already (full, or the store closed)
        self._shared = None
        try:
            shared.commit()
        finally:
            self._writing.release()
            self._checkpoints.wrote()

    async def _on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="dispatchd-sqlite-writer", daemon=True
                    )
                    self._writer.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, loop, future))
        return await future

    def _write_loop(self) -> None:
        stop = False
        while not stop and (job := self._jobs.get()) is not None:
            group = [job]
            while len(group) < GROUP_MAX:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # close(): finish this group, then stop
                    stop = True
                    break
                group.append(more)
            with self._writing:
                if len(group) == 1:
                    outcomes = [self._run_alone(job[0])]
                else:
                    outcomes = self._run_group([fn for fn, _, _ in group])
            self._checkpoints.wrote()
            for (_, loop, future), (result, error) in zip(group, outcomes, strict=True):
                # RuntimeError: the caller's loop is closed, nobody is waiting.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, result, error)

    def _run_alone(self, fn: Callable[[sqlite3.Connection], Any]) -> _Outcome:
        try:
            return _translated(functools.partial(self._in_transaction, fn)), None
        except BaseException as exc:  # every failure goes to the job's caller
            return None, exc

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._finish(self._begin(), fn)

    @staticmethod
    def _finish(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in the transaction just begun on `conn`, and commit it."""
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _run_group(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[_Outcome]:
        """Run `fns` in one transaction, each in a savepoint of its own, and commit once."""
        try:
            conn = _translated(self._begin)
        except BaseException as exc:
            return [(None, exc)] * len(fns)
        outcomes: list[_Outcome] = []
        for fn in fns:
            try:
                conn.execute("SAVEPOINT job")
                result = _translated(functools.partial(fn, conn))
                conn.execute("RELEASE job")
                outcomes.append((result, None))
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # the check below tells what is left
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error): the
                    # jobs before this one are undone too; the rest run on their own.
                    lost = StoreError(f"the shared commit was rolled back: {exc}")
                    rest = [self._run_alone(later) for later in fns[len(outcomes) + 1 :]]
                    return [*_failed(outcomes, lost), (None, exc), *rest]
                outcomes.append((None, exc))
        try:
            _translated(lambda: conn.execute("COMMIT"))
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return _failed(outcomes, exc)
        return outcomes

    def _begin(self) -> sqlite3.Connection:
        """BEGIN IMMEDIATE on the writer thread, waiting for a lock another process holds."""
        conn = self._writer_connection()
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return conn
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _writer_connection(self) -> sqlite3.Connection:
        # The writer's connection is made by its first job (so that its failure is that
        # job's), and used by one thread at a time, under `_writing`. It never waits for
        # the lock by itself (`_begin` does, on the writer thread) and leaves checkpoints
        # to `Checkpoints`.
        if self._writer_conn is None:
            conn = self._connect()
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # Each write runs in a savepoint (`LoopCommit`, the writer thread's groups),
            # whose journal of the pages it changes would otherwise be a temporary file:
            # written to at each first change of a page, several system calls a write.
            # The writer's statements are small; readers, which may sort large results,
            # keep the default.
            conn.execute("PRAGMA temp_store = MEMORY")
            self._writer_conn = conn
        return self._writer_conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            # Connecting is inside the translation: a reader thread's first connection to a
            # file that is gone fails like any other statement (StoreError).
            return _translated(lambda: fn(self._reader_conn()))

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, call)

    # --- the four operations -------------------------------------------------------------

    async def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        return await self._write(lambda conn: int(_execute(conn, sql, params).rowcount))

    async def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Row | None:
        return await self._read(lambda conn: _first(_execute(conn, sql, params)))

    async def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        return await self._read(lambda conn: _rows(_execute(conn, sql, params)))

    async def transaction(self, body: Body[T], *, write: bool = True) -> T:
        def run(conn: sqlite3.Connection) -> T:
            return drive(body, lambda query: _run(conn, query))

        return await (self._write(run) if write else self._read(run))

    # --- what only a server database does ------------------------------------------------

    async def watch(self, advanced: Callable[[int], None], job: JobStatus | None = None) -> None:
        """Other processes do not write this file while we serve it: nothing to watch."""
        await asyncio.Event().wait()

    def lease(self, name: str, *, check_s: float) -> Lease:
        return LocalLease()


class SQLiteStore(SQLStore):
    def __init__(self, path: Path, *, readers: int = 4, synchronous: str = "NORMAL") -> None:
        self.path = path
        super().__init__(SQLiteConnector(path, readers=readers, synchronous=synchronous))


def _translated(call: Callable[[], T]) -> T:
    try:
        return call()
    except sqlite3.IntegrityError as exc:
        text = str(exc)  # "UNIQUE constraint failed: tasks.requester, tasks.idempotency_key"
        if "UNIQUE" not in text:
            raise
        table = text.partition(": ")[2].partition(".")[0]
        raise duplicate_key(table, text) from exc
    except sqlite3.OperationalError as exc:
        raise StoreError(f"database error: {exc}") from exc


def _failed(outcomes: list[_Outcome], error: BaseException) -> list[_Outcome]:
    """Every job of a group whose commit did not happen fails, the successful ones too."""
    return [(None, error if failed is None else failed) for _, failed in outcomes]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting (cancelled)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _rows(cur: sqlite3.Cursor) -> list[Row]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _first(cur: sqlite3.Cursor) -> Row | None:
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))


def _run(conn: sqlite3.Connection, query: Query) -> Any:
    kind, sql, params = query.kind, query.sql, query.params
    if kind == "execute":
        return _execute(conn, sql, params).rowcount
    if kind == "send":
        _execute(conn, sql, params)
        return None
    if kind == "checked":
        check(query, _execute(conn, sql, params).rowcount)
        return None
    if kind == "one":
        return _first(_execute(conn, sql, params))
    if kind == "all":
        return _rows(_execute(conn, sql, params))
    if kind == "many":
        # The row count of an executemany is the sum of its runs' counts.
        changed = _execute_many(conn, sql, params).rowcount
        if query.fail is not None and changed != len(params):
            raise query.fail
        return None
    if kind == "together":
        return [_run(conn, each) for each in params]
    if kind == "ids":
        if not params:
            return []
        _execute_many(conn, sql, params)
        # The writer thread is the only writer and an AUTOINCREMENT key counts up by one
        # per row, so the rows just inserted hold the ids up to the last one, in order.
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        return list(range(last - len(params) + 1, last + 1))
    for statement in statements(sql):  # a migration script
        conn.execute(statement)
    return None


# sqlite3 binds a named parameter by asking SQLite its name and looking it up in the
# dict, for each parameter of each row; numbered parameters (`?1`) bound from a tuple cost
# a third less for a task's insert of 56 columns. The statements keep `:name` (one
# placeholder style for both engines); each is numbered once, here.


def _execute(conn: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
    numbered, values = _numbered(sql)
    return conn.execute(numbered, values(params))


def _execute_many(
    conn: sqlite3.Connection, sql: str, rows: Sequence[Mapping[str, Any]]
) -> sqlite3.Cursor:
    numbered, values = _numbered(sql)
    return conn.executemany(numbered, [values(row) for row in rows])


@functools.lru_cache(maxsize=4096)
def _numbered(sql: str) -> tuple[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]]:
    """`sql` with each `:name` as `?N` (N by first use), and what takes the values in
    that order from a row of named values."""
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"?{order.setdefault(match.group(1), len(order) + 1)}"

    numbered = PLACEHOLDER.sub(number, sql)
    names = tuple(order)

    def values(params: Mapping[str, Any]) -> tuple[Any, ...]:
        try:
            return tuple([params[name] for name in names])
        except KeyError as exc:
            raise sqlite3.ProgrammingError(
                f"You did not supply a value for binding parameter :{exc.args[0]}."
            ) from None

    return numbered, values
