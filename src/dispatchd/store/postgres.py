"""The server engine: PostgreSQL through psycopg 3 and an async connection pool.

A write transaction runs on one pooled connection, its statements sent in as few messages
as its reads allow, the commit with the last (`postgres_messages`). A body of reads runs
each statement on its own, outside a transaction, unless it first sends a setting for
them.
Event ids are handed out under a transaction-scoped advisory lock, taken after the
commit's other writes and held until it ends, so ids follow commit order: a reader that has
seen event N never later finds a smaller id appearing behind it. Every commit that appends
events NOTIFYs the other replicas (`watch`, through `CommitNotes`); roles that must run
once hold a session advisory lock (`lease`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import select
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from dispatchd.errors import ConcurrentUpdate, StoreError, ValidationFailed
from dispatchd.jobs import Backoff, JobStatus, backoff_s
from dispatchd.store import postgres_messages as messages
from dispatchd.store.base import Lease
from dispatchd.store.connector import Body, Dialect, Query, Row, drive_async, duplicate_key
from dispatchd.store.rows import POSTGRES as POSTGRES_CODEC
from dispatchd.store.sqlstore import SQLStore

logger = logging.getLogger(__name__)

T = TypeVar("T")
Connection = AsyncConnection[DictRow]

OPEN_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5
# How long a caller waits for a pooled connection before the database counts as unavailable.
CHECKOUT_TIMEOUT_S = 10.0
# A connection back in the pool for longer than this is tested before it is handed out (a
# database restart meanwhile leaves it broken); one in steady use is not, which would cost
# a round trip per checkout.
IDLE_CHECK_S = 2.0

# Keys of the transaction-scoped advisory locks; fixed, so every process agrees on them.
EVENT_ORDER_LOCK = int.from_bytes(b"dsp:evts", "big")
MIGRATION_LOCK = int.from_bytes(b"dsp:migr", "big")
NOTIFY_CHANNEL = "dispatchd_events"
# The commit listener's connection, as pg_stat_activity shows it.
LISTENER_NAME = "dispatchd commit listener"
# The waits before the commit listener connects again.
LISTEN_RETRY = Backoff(0.2, 5.0)

# See `append_events` in queries.sql. The lock is joined to the rows and the rows sorted
# before the insert, so it is taken before any id is drawn; a task's events belong to its
# room (its scope), a room's own `room.*` events to the room named in their data.
APPEND_EVENTS = (
    f"WITH locked AS (SELECT pg_advisory_xact_lock({EVENT_ORDER_LOCK})), "
    "added AS (INSERT INTO events (type, task_id, agent_id, data, created_at, room) "
    "SELECT r.type, r.task_id, r.agent_id, r.data, r.created_at, "
    "coalesce((SELECT scope FROM tasks WHERE id = r.task_id), "
    "CASE WHEN r.type LIKE 'room.%' THEN r.data ->> 'room' END) "
    "FROM locked, unnest(CAST(:type AS text[]), CAST(:task_id AS text[]), "
    "CAST(:agent_id AS text[]), CAST(:data AS jsonb[]), CAST(:created_at AS timestamptz[])) "
    "WITH ORDINALITY AS r(type, task_id, agent_id, data, created_at, n) "
    "ORDER BY r.n RETURNING id) "
    "SELECT array_agg(id ORDER BY id) AS ids, "
    f"pg_notify('{NOTIFY_CHANNEL}', CAST(max(id) AS text)) FROM added"
)

POSTGRES = Dialect(
    name="postgres",
    codec=POSTGRES_CODEC,
    fragments={
        "for_update": " FOR UPDATE",
        # A row another claim is taking is passed over, never waited for.
        "skip_locked": " FOR UPDATE SKIP LOCKED",
        "queue_index": "",
        "by_not_before": "",
        "by_run_at": "",
        "by_finished": "",
        "by_deadline": "",
        "by_lease": "",
        "queue_order": "priority_rank DESC, due_at NULLS LAST, created_at, id",
        "capable": "tasks.capabilities <@ :caps",
        "lock_event_order": f"SELECT pg_advisory_xact_lock({EVENT_ORDER_LOCK})",
        "plan_queue": "SET LOCAL enable_sort = off",
        "append_events": APPEND_EVENTS,
        "lock_migrations": f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})",
        "in_ids": " = ANY(:ids)",
        "event_room": "data ->> 'room'",
        "new_event_room": "CAST(:data AS jsonb) ->> 'room'",
        "id_rows": "unnest(CAST(:ids AS text[])) AS r(value)",
        "for_share": " FOR SHARE",
        "migration_time": "TIMESTAMPTZ NOT NULL DEFAULT now()",
    },
    placeholder="%%(%s)s",
    json_has=lambda col, p: f"{col} @> jsonb_build_array({p}::text)",
    json_has_key=lambda col, p: f"{col} ? {p}",
    dump_list=list,
)


class PostgresConnector:
    dialect = POSTGRES

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Connection] | None = None
        # When each pooled connection was last handed back.
        self._returned: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        self.notes = CommitNotes()

    async def open(self) -> None:
        if self._pool is not None:
            return
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if "connect_timeout" not in conninfo_to_dict(self.url):
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        # One direct attempt first: it fails at once with the real reason (refused, unknown
        # database, bad password), where the pool would retry quietly until its timeout.
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                probe = await Connection.connect(self.url, **kwargs)
            await probe.close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot reach the database: {exc}") from exc
        except TimeoutError as exc:
            raise StoreError(f"cannot reach the database within {OPEN_TIMEOUT_S}s") from exc
        pool = AsyncConnectionPool(
            self.url,
            connection_class=Connection,
            kwargs=kwargs,
            min_size=1,
            max_size=max(1, self._pool_size),
            # A connection left broken by a database restart is replaced, not handed out.
            check=self._check,
            name="dispatchd",
            timeout=CHECKOUT_TIMEOUT_S,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot reach the database: {exc}") from exc
        self._pool = pool

    async def _check(self, conn: Connection) -> None:
        """Test a connection before it is handed out when it has been idle a while, or
        when its socket has something to read: an idle connection is sent nothing, so that
        is a server gone away (a restart, a terminated backend) saying so."""
        returned = self._returned.get(conn)
        idle = returned is None or time.monotonic() - returned > IDLE_CHECK_S
        if idle or _readable(conn):
            await AsyncConnectionPool.check_connection(conn)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _connection(self, wait_s: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection, with database errors translated at this boundary."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.connection(timeout=wait_s) as conn:
                try:
                    yield conn
                finally:
                    self._returned[conn] = time.monotonic()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            # The server's text names lock ids and backends: it goes to the log, not the caller.
            logger.info("transaction aborted by a collision: %s", exc, extra={"action": "commit"})
            raise ConcurrentUpdate("concurrent writes collided; try again") from exc
        except psycopg.errors.UniqueViolation as exc:
            diag = exc.diag
            raise duplicate_key(diag.table_name or "", diag.constraint_name or "") from exc
        except psycopg.DataError as exc:
            # Input the API guard should have refused (NUL characters, out-of-range values);
            # never a server error, and the transaction has rolled back.
            # The reason alone: the server's text may quote the statement, values and all.
            reason = exc.diag.message_primary or str(exc).splitlines()[0]
            raise ValidationFailed(f"value not storable: {reason}", code="invalid_value") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                async with self._connection(wait_s=PING_TIMEOUT_S) as conn:
                    await conn.execute("SELECT 1")
        except TimeoutError as exc:
            raise StoreError("the database did not answer in time") from exc

    async def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        async with self._connection() as conn:
            return (await conn.execute(sql, params)).rowcount

    async def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Row | None:
        async with self._connection() as conn:
            return await (await conn.execute(sql, params)).fetchone()

    async def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        async with self._connection() as conn:
            return list(await (await conn.execute(sql, params)).fetchall())

    async def transaction(self, body: Body[T], *, write: bool = True) -> T:
        if not write:
            # Reads alone run each on its own, as they come (no BEGIN, no COMMIT to wait
            # for). A read body that first sends a setting for its reads (`SET LOCAL`)
            # runs in a transaction, so that the setting holds for them and goes out with
            # the first.
            try:
                first = body.send(None)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            async with self._connection() as conn:
                if first.kind != "send":
                    return await _drive(conn, _starting(first, body))
                return await messages.drive(conn, _starting(first, body))
        seq = self.notes.begin()
        try:
            async with self._connection() as conn:
                return await messages.drive(conn, body)
        finally:
            self.notes.end(seq)

    async def watch(self, advanced: Callable[[int], None], job: JobStatus | None = None) -> None:
        """Report other replicas' commits: LISTEN on the channel every commit notifies,
        reconnecting after a lost connection (after a backoff, the job down meanwhile).
        Runs until cancelled."""
        job = job or JobStatus("commit listener")
        self.notes.advanced = advanced
        failures = 0
        while True:
            doing = "connecting to listen for commits"
            try:
                conn = await AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name=LISTENER_NAME,
                )
            except psycopg.Error as exc:
                failures += 1
                await _listener_failed(job, exc, doing, failures)
                continue
            try:
                doing = "listening for commits"
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                # Commits made while we were not listening: catch up on reconnect.
                cur = await conn.execute("SELECT coalesce(max(id), 0) FROM events")
                row = await cur.fetchone()
                if row is not None:
                    self.notes.heard(int(row[0]))
                failures = 0
                job.ok()
                async for note in conn.notifies():
                    if note.payload.isdigit():
                        self.notes.heard(int(note.payload))
            except psycopg.Error as exc:
                failures += 1
                await _listener_failed(job, exc, doing, failures)
            finally:
                await conn.close()

    def lease(self, name: str, *, check_s: float) -> Lease:
        return AdvisoryLease(self.url, name, check_s=check_s)


class CommitNotes:
    """Commit notifications, each passed on once the write transactions of this process
    that were in flight when it came have ended.

    A replica hears its own commits too, often before the committing coroutine has told
    the readers of this process (which it does as its transaction returns); a reader woken
    by the notification first would find the in-memory feed behind and read the log for
    events it is about to have. Held back, the notification comes just after. None is
    dropped: another replica's waits at most for the local transactions already running,
    and a commit whose answer was lost on the way back still wakes the readers."""

    def __init__(self) -> None:
        self.advanced: Callable[[int], None] | None = None
        self._started = 0
        self._open: set[int] = set()
        # (the last transaction started when it came, the log's last id it reported)
        self._held: list[tuple[int, int]] = []

    def begin(self) -> int:
        """A write transaction starts; the number to `end` it with."""
        self._started += 1
        self._open.add(self._started)
        return self._started

    def end(self, seq: int) -> None:
        self._open.discard(seq)
        if not self._held:
            return
        floor = min(self._open, default=self._started + 1)
        ready = [last for bound, last in self._held if bound < floor]
        if ready:
            self._held = [(bound, last) for bound, last in self._held if bound >= floor]
            # After the ending transaction's caller has told the readers, which it does
            # without yielding once the transaction returns.
            asyncio.get_running_loop().call_soon(self._pass, max(ready))

    def heard(self, last: int) -> None:
        """The log reaches `last`, says a notification (or the listener's catch-up)."""
        if self._open:
            self._held.append((self._started, last))
        else:
            self._pass(last)

    def _pass(self, last: int) -> None:
        if self.advanced is not None:
            self.advanced(last)


def _readable(conn: Connection) -> bool:
    try:
        return bool(select.select([conn.pgconn.socket], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True


class PostgresStore(SQLStore):
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        super().__init__(PostgresConnector(url, pool_size=pool_size))


async def _listener_failed(job: JobStatus, exc: Exception, doing: str, failures: int) -> None:
    wait_s = backoff_s(failures, LISTEN_RETRY.base_s, LISTEN_RETRY.cap_s)
    job.failed(exc, doing)
    logger.warning(
        "commit listener failed while %s: %s; retrying in %.2fs",
        doing,
        exc,
        wait_s,
        extra={"action": "listen"},
    )
    await asyncio.sleep(wait_s)


def _starting(first: Query, body: Body[T]) -> Body[T]:
    """`body`, whose first query was already taken from it."""
    try:
        result = yield first
        while True:
            try:
                query = body.send(result)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            result = yield query
    finally:
        body.close()


async def _drive(conn: Connection, body: Body[T]) -> T:
    """Run a body of reads, each statement on its own."""

    async def read(query: Query) -> Any:
        if query.kind == "together":
            return [await read(each) for each in query.params]
        cur = await conn.execute(query.sql, query.params)
        if query.kind == "one":
            return await cur.fetchone()
        if query.kind == "all":
            return await cur.fetchall()
        raise ValueError(f"a body of reads sent a {query.kind} query")

    return await drive_async(body, read)


def lock_key(name: str) -> int:
    """The advisory lock id of the role `name`: the same in every process."""
    digest = hashlib.blake2b(f"dispatchd:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLease:
    """A PostgreSQL session advisory lock named after the role, on its own connection
    (see `Store.lease`)."""

    def __init__(self, url: str, name: str, *, check_s: float) -> None:
        self.url = url
        self.name = name
        self.key = lock_key(name)
        self.check_s = check_s
        self._conn: AsyncConnection[tuple[object, ...]] | None = None

    async def acquire(self) -> None:
        waiting = False
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                    )
                cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                row = await cur.fetchone()
                if row is not None and row[0] is True:
                    logger.info("this replica holds the %s lease", self.name)
                    return
                if not waiting:
                    logger.info("another replica holds the %s lease; standing by", self.name)
                    waiting = True
            except psycopg.Error as exc:
                logger.warning("cannot take the %s lease: %s", self.name, exc)
                await self.release()
            await asyncio.sleep(self.check_s)

    async def lost(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            conn = self._conn
            if conn is None or conn.closed:
                break
            try:
                async with asyncio.timeout(max(self.check_s, CONNECT_TIMEOUT_S)):
                    await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                logger.warning("lost the %s lease: %s", self.name, exc or "no answer")
                break

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()  # ending the session releases its advisory locks
