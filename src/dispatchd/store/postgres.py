"""The server engine: PostgreSQL through psycopg 3 and an async connection pool.

Each commit is one transaction on a pooled connection. Event ids are handed out under a
transaction-scoped advisory lock, taken after the commit's other writes and held until it
ends, so ids follow commit order: a reader that has seen event N never later finds a smaller
id appearing behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, assert_never

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Agent, Attempt, Event, Task, TaskDetail
from dispatchd.errors import (
    AgentUnavailable,
    ConcurrentUpdate,
    DuplicateKey,
    StoreError,
    ValidationFailed,
)
from dispatchd.store import migrations
from dispatchd.store.base import (
    RETENTION_CURSOR,
    AdvanceCursor,
    AgentFilter,
    AgentLoad,
    AppendComment,
    AppendEvent,
    AppendProgress,
    ClaimPlan,
    ClaimQuery,
    ClaimView,
    CommitListener,
    Counts,
    DeleteAgent,
    Due,
    InsertAgent,
    InsertNotification,
    InsertTask,
    Op,
    Page,
    PatchAttempt,
    Pruned,
    QueueStats,
    RenewLeases,
    SaveAttempt,
    SaveCursor,
    SaveDigest,
    TakeSlot,
    TaskFilter,
    TouchTask,
    UpdateAgent,
    UpdateTask,
)
from dispatchd.store.postgres_notifications import PostgresNotifications
from dispatchd.store.postgres_webhooks import PostgresWebhooks
from dispatchd.store.query import (
    ACTIVE,
    TASK_ROWS,
    agent_where,
    claimable_where,
    insert_sql,
    load_deltas,
    log_prefix,
    prune_notifications_sql,
    retention_sql,
    save_cursor_sql,
    stats_sql,
    task_where,
    update_versioned_sql,
)
from dispatchd.store.rows import (
    AGENT_COLUMNS,
    POSTGRES,
    TASK_COLUMNS,
    agent_from_row,
    agent_params,
    attempt_from_row,
    attempt_params,
    comment_from_row,
    comment_params,
    counter_deltas,
    encode_cursor,
    event_from_row,
    event_params,
    patch_attempt_params,
    progress_from_row,
    progress_params,
    task_from_row,
    task_params,
)

logger = logging.getLogger(__name__)

Connection = AsyncConnection[DictRow]

OPEN_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5
# How long a caller waits for a pooled connection before the database counts as unavailable.
CHECKOUT_TIMEOUT_S = 10.0

# Keys of the transaction-scoped advisory locks; fixed, so every process agrees on them.
EVENT_ORDER_LOCK = int.from_bytes(b"dsp:evts", "big")
MIGRATION_LOCK = int.from_bytes(b"dsp:migr", "big")


def _ph(name: str) -> str:
    return f"%({name})s"


INSERT_TASK = insert_sql("tasks", TASK_COLUMNS, _ph)
UPDATE_TASK = update_versioned_sql("tasks", TASK_COLUMNS, _ph)
INSERT_AGENT = insert_sql("agents", AGENT_COLUMNS, _ph)
UPDATE_AGENT = update_versioned_sql("agents", AGENT_COLUMNS, _ph)
# The row lock first: an assignment to the agent that is committing meanwhile (it holds
# the lock through TakeSlot) is then visible to the check of the next statement.
LOCK_AGENT = "SELECT 1 FROM agents WHERE id = %(id)s FOR UPDATE"
DELETE_AGENT = (
    "DELETE FROM agents WHERE id = %(id)s AND version = %(version)s AND NOT EXISTS "
    f"(SELECT 1 FROM tasks WHERE assignee = %(id)s AND status IN {ACTIVE})"
)
INSERT_ATTEMPT = (
    "INSERT INTO attempts (task_id, number, agent_id, assigned_at, started_at, ended_at, "
    "outcome, error) VALUES (%(task_id)s, %(number)s, %(agent_id)s, %(assigned_at)s, "
    "%(started_at)s, %(ended_at)s, %(outcome)s, %(error)s)"
)
PATCH_ATTEMPT = (
    "UPDATE attempts SET started_at = COALESCE(%(started_at)s, started_at), "
    "ended_at = COALESCE(%(ended_at)s, ended_at), outcome = COALESCE(%(outcome)s, outcome), "
    "error = COALESCE(%(error)s, error) WHERE task_id = %(task_id)s AND number = %(number)s"
)
INSERT_PROGRESS = (
    "INSERT INTO progress (task_id, attempt, agent_id, message, percent, created_at) "
    "VALUES (%(task_id)s, %(attempt)s, %(agent_id)s, %(message)s, %(percent)s, %(created_at)s)"
)
INSERT_COMMENT = (
    "INSERT INTO comments (task_id, author, body, created_at) "
    "VALUES (%(task_id)s, %(author)s, %(body)s, %(created_at)s)"
)
INSERT_EVENT = (
    "INSERT INTO events (type, task_id, agent_id, data, created_at) "
    "VALUES (%(type)s, %(task_id)s, %(agent_id)s, %(data)s, %(created_at)s) RETURNING id"
)
NOTIFY_CHANNEL = "dispatchd_events"
NOTIFY = f"SELECT pg_notify('{NOTIFY_CHANNEL}', %(last)s)"
LOCK_EVENT_ORDER = f"SELECT pg_advisory_xact_lock({EVENT_ORDER_LOCK})"
RENEW_LEASES = (
    "UPDATE tasks SET lease_expires_at = %(until)s, version = version + 1 "
    "WHERE assignee = %(agent_id)s AND status IN ('running', 'waiting_input')"
)
INSERT_DEP = (
    "INSERT INTO task_deps (parent_id, child_id) VALUES (%(parent)s, %(child)s) "
    "ON CONFLICT DO NOTHING"
)
TOUCH_TASK = (
    "UPDATE tasks SET version = version + 1, dependents = dependents + 1 "
    "WHERE id = %(id)s AND version = %(version)s"
)
TAKE_SLOT = (
    "UPDATE agents SET last_assigned_at = %(at)s WHERE id = %(id)s AND NOT drained "
    "AND (NOT %(check)s OR status NOT IN ('offline', 'degraded')) "
    "AND active + %(planned)s + %(count)s <= %(limit)s"
)
ADD_LOAD = "UPDATE agents SET active = greatest(active + %(delta)s, 0) WHERE id = %(id)s"
QUEUE_ORDER = "priority_rank DESC, due_at NULLS LAST, created_at, id"
CAPABLE = "tasks.capabilities <@ %(caps)s"
LOCK_AGENT = "SELECT * FROM agents WHERE id = %(id)s FOR UPDATE"
SELECT_ASSIGNED = (
    "SELECT * FROM tasks WHERE assignee = %(agent_id)s AND status = 'assigned' "
    "ORDER BY priority_rank DESC, created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
)
SELECT_CHILDREN = (
    "SELECT t.* FROM task_deps d JOIN tasks t ON t.id = d.child_id "
    "WHERE d.parent_id = %(id)s AND t.status = 'blocked' ORDER BY t.id"
)
DUE_TIMED_OUT = (
    "SELECT * FROM tasks WHERE deadline_at <= %(now)s "
    "AND status IN ('running', 'waiting_input') LIMIT %(limit)s"
)
DUE_LEASE = (
    "SELECT * FROM tasks WHERE lease_expires_at <= %(now)s "
    "AND status IN ('running', 'waiting_input') LIMIT %(limit)s"
)
DUE_NOT_STARTED = (
    "SELECT * FROM tasks WHERE lease_expires_at <= %(now)s AND status = 'assigned' LIMIT %(limit)s"
)
DUE_READY = (
    "SELECT * FROM tasks WHERE not_before > %(since)s AND not_before <= %(now)s "
    "AND status = 'pending' ORDER BY not_before LIMIT %(limit)s"
)
# A blocked task whose run_at came and whose parents are all completed; one still waiting
# on a parent is left to the parent's completion.
PARENTS_DONE = (
    "NOT EXISTS (SELECT 1 FROM task_deps d JOIN tasks p ON p.id = d.parent_id "
    "WHERE d.child_id = tasks.id AND p.status <> 'completed')"
)
DUE_RUN_AT = (
    "SELECT * FROM tasks WHERE status = 'blocked' AND run_at IS NOT NULL "
    f"AND run_at <= %(now)s AND {PARENTS_DONE} LIMIT %(limit)s"
)
NEXT_DEADLINE = (
    "SELECT least("
    "(SELECT min(deadline_at) FROM tasks WHERE deadline_at IS NOT NULL), "
    "(SELECT min(lease_expires_at) FROM tasks WHERE lease_expires_at IS NOT NULL), "
    "(SELECT min(not_before) FROM tasks WHERE not_before > %(since)s AND status = 'pending'), "
    "(SELECT min(run_at) FROM tasks WHERE status = 'blocked' AND run_at IS NOT NULL "
    f"AND {PARENTS_DONE})) AS x"
)
SELECT_LAST_EVENT = "SELECT coalesce(max(id), 0) AS n FROM events"
SELECT_CURSOR = "SELECT last_event_id FROM cursors WHERE name = %(name)s"
PRUNE_EVENTS, PRUNE_TASKS = retention_sql(_ph)
PRUNE_NOTIFICATIONS = prune_notifications_sql(_ph)
STATS_OPEN, STATS_OLDEST, STATS_FINISHED = stats_sql(_ph)
DROP_EVENTS = "DELETE FROM events WHERE id <= %(through)s"
SAVE_CURSOR = save_cursor_sql(_ph)
SELECT_AGENTS = "SELECT * FROM agents WHERE id = ANY(%(ids)s) ORDER BY id"
SELECT_ALL_AGENTS = "SELECT * FROM agents ORDER BY id"
BUMP_COUNT = (
    "INSERT INTO task_counts (status, n) VALUES (%(status)s, %(delta)s) "
    "ON CONFLICT (status) DO UPDATE SET n = task_counts.n + excluded.n"
)

LOCK_MIGRATIONS = f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
SELECT_MIGRATIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)"

PING = "SELECT 1"
SELECT_TASK = "SELECT * FROM tasks WHERE id = %(id)s"
SELECT_TASKS = "SELECT * FROM tasks WHERE id = ANY(%(ids)s) ORDER BY id"
SELECT_TASK_BY_IDEMPOTENCY_KEY = (
    "SELECT * FROM tasks WHERE requester = %(requester)s AND idempotency_key = %(key)s"
)
SELECT_ATTEMPTS = "SELECT * FROM attempts WHERE task_id = %(task_id)s ORDER BY number"
SELECT_PROGRESS = "SELECT * FROM progress WHERE task_id = %(task_id)s ORDER BY id"
SELECT_COMMENTS = "SELECT * FROM comments WHERE task_id = %(task_id)s ORDER BY id"
SELECT_ACTIVE_TASKS = (
    f"SELECT * FROM tasks WHERE assignee = %(agent_id)s AND status IN {ACTIVE} ORDER BY id"
)
SELECT_AGENT = "SELECT * FROM agents WHERE id = %(id)s"
SELECT_AGENT_BY_HASH = "SELECT * FROM agents WHERE token_hash = %(token_hash)s"
SELECT_AGENT_LOAD = "SELECT a.* FROM agents a"
SELECT_TASK_COUNTS = "SELECT status, n FROM task_counts"
SELECT_AGENT_COUNTS = "SELECT status, count(*) AS n FROM agents GROUP BY status"
SELECT_DRAINED_COUNT = "SELECT count(*) AS n FROM agents WHERE drained"
SELECT_TASK_EVENTS = "SELECT * FROM events WHERE task_id = %(task_id)s ORDER BY id"
SELECT_EVENTS_AFTER = "SELECT * FROM events WHERE id > %(after)s ORDER BY id LIMIT %(limit)s"


def _capability_clause(param: str) -> str:
    # query.py reuses this for labels by renaming the column.
    return f"capabilities @> jsonb_build_array({param}::text)"


def _agent_capability_clause(param: str) -> str:
    return f"a.capabilities ? {param}"


class PostgresStore(PostgresWebhooks, PostgresNotifications):
    dialect = "postgres"

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._listeners: list[CommitListener] = []

    def on_commit(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def _told(self, events: list[Event]) -> list[Event]:
        if events:
            for listener in self._listeners:
                listener(events)
        return events

    async def watch(self, advanced: Callable[[int], None]) -> None:
        """Report other replicas' commits: LISTEN on the channel every commit notifies,
        reconnecting after a lost connection. Runs until cancelled."""
        while True:
            try:
                conn = await AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
            except psycopg.Error as exc:
                logger.warning("cannot listen for commits: %s", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                # Commits made while we were not listening: catch up on reconnect.
                cur = await conn.execute(SELECT_LAST_EVENT)
                row = await cur.fetchone()
                if row is not None:
                    advanced(int(row[0]))
                async for note in conn.notifies():
                    if note.payload.isdigit():
                        advanced(int(note.payload))
            except psycopg.Error as exc:
                logger.warning("lost the commit listener: %s", exc)
                await asyncio.sleep(0.2)
            finally:
                await conn.close()

    # --- connections ------------------------------------------------------------------

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
            check=AsyncConnectionPool.check_connection,
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
                yield conn
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            # The server's text names lock ids and backends: it goes to the log, not the caller.
            logger.info("transaction aborted by a collision: %s", exc, extra={"action": "commit"})
            raise ConcurrentUpdate("concurrent writes collided; try again") from exc
        except psycopg.errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name
            raise DuplicateKey(f"duplicate key: {constraint}", constraint=constraint) from exc
        except psycopg.DataError as exc:
            # Input the API guard should have refused (NUL characters, out-of-range values);
            # never a server error, and the transaction has rolled back.
            raise ValidationFailed(f"value not storable: {exc}", code="invalid_value") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def _fetchone(self, query: str, params: Mapping[str, Any]) -> DictRow | None:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def _fetchall(self, query: str, params: Mapping[str, Any]) -> list[DictRow]:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                async with self._connection(wait_s=PING_TIMEOUT_S) as conn:
                    await conn.execute(PING)
        except TimeoutError as exc:
            raise StoreError("the database did not answer in time") from exc

    async def migrate(self) -> list[int]:
        async with self._connection() as conn, conn.transaction():
            # Two processes starting at once: the second waits, then finds nothing to do.
            await conn.execute(LOCK_MIGRATIONS)
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            cur = await conn.execute(SELECT_MIGRATIONS)
            applied = {row["version"] for row in await cur.fetchall()}
            done = []
            for migration in migrations.pending(self.dialect, applied):
                # Without parameters a script of several statements runs as one query.
                await conn.execute(migration.sql)
                await conn.execute(
                    RECORD_MIGRATION, {"version": migration.version, "name": migration.name}
                )
                done.append(migration.version)
        if done:
            logger.info("applied migrations", extra={"action": "migrate", "versions": done})
        return done

    # --- writes -----------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> list[Event]:
        async with self._connection() as conn, conn.transaction():
            events = await self._commit(conn, ops)
        return self._told(events)

    async def _commit(self, conn: Connection, ops: Sequence[Op]) -> list[Event]:
        counts: dict[str, int] = defaultdict(int)
        loads: dict[str, int] = defaultdict(int)
        to_append: list[Event] = []
        for op in ops:
            if isinstance(op, AppendEvent):
                to_append.append(op.event)
            else:
                await self._apply(conn, op, counts, loads)
        for agent_id in sorted(loads):
            if loads[agent_id]:
                await conn.execute(ADD_LOAD, {"id": agent_id, "delta": loads[agent_id]})
        events: list[Event] = []
        if to_append:
            # Held until this transaction ends: the next writer's ids come after ours and
            # only once ours are visible.
            await conn.execute(LOCK_EVENT_ORDER)
            for event in to_append:
                cur = await conn.execute(INSERT_EVENT, event_params(event, POSTGRES))
                row = await cur.fetchone()
                assert row is not None
                events.append(_with_id(event, int(row["id"])))
            # Delivered at commit, to every replica's listener.
            await conn.execute(NOTIFY, {"last": str(events[-1].id)})
        # In a fixed order, so that two commits never wait on each other's counter rows.
        for status in sorted(counts):
            if counts[status]:
                await conn.execute(BUMP_COUNT, {"status": status, "delta": counts[status]})
        return events

    async def _apply(
        self, conn: Connection, op: Op, counts: dict[str, int], loads: dict[str, int]
    ) -> None:
        match op:
            case InsertTask(task):
                try:
                    await conn.execute(INSERT_TASK, task_params(task, POSTGRES))
                except psycopg.errors.UniqueViolation as exc:
                    constraint = exc.diag.constraint_name or ""
                    field = "idempotency_key" if "idempotency" in constraint else "id"
                    raise DuplicateKey(
                        f"task {field} already exists", field=field, task_id=task.id
                    ) from exc
                counts[task.status.value] += 1
                if task.depends_on:
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            INSERT_DEP, [{"parent": p, "child": task.id} for p in task.depends_on]
                        )
                for agent_id, delta in load_deltas(None, None, task):
                    loads[agent_id] += delta
            case UpdateTask(task, previous, previous_assignee):
                cur = await conn.execute(UPDATE_TASK, task_params(task, POSTGRES))
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"task {task.id} changed meanwhile", task_id=task.id)
                for status, delta in counter_deltas(previous.value, task.status.value):
                    counts[status] += delta
                for agent_id, delta in load_deltas(previous, previous_assignee, task):
                    loads[agent_id] += delta
            case TouchTask(task_id, version):
                cur = await conn.execute(TOUCH_TASK, {"id": task_id, "version": version})
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"task {task_id} changed meanwhile", task_id=task_id)
            case TakeSlot(agent_id, limit, at, check_status, count):
                params = {
                    "id": agent_id,
                    "limit": limit,
                    "at": at,
                    "planned": loads[agent_id],
                    "check": check_status,
                    "count": count,
                }
                cur = await conn.execute(TAKE_SLOT, params)
                if cur.rowcount != 1:
                    raise AgentUnavailable(
                        f"agent {agent_id} cannot take a task now", agent_id=agent_id
                    )
            case SaveAttempt(attempt):
                await conn.execute(INSERT_ATTEMPT, attempt_params(attempt, POSTGRES))
            case PatchAttempt():
                await conn.execute(PATCH_ATTEMPT, patch_attempt_params(op, POSTGRES))
            case AppendProgress(entry):
                await conn.execute(INSERT_PROGRESS, progress_params(entry, POSTGRES))
            case AppendComment(comment):
                await conn.execute(INSERT_COMMENT, comment_params(comment, POSTGRES))
            case InsertAgent(agent):
                try:
                    await conn.execute(INSERT_AGENT, agent_params(agent, POSTGRES))
                except psycopg.errors.UniqueViolation as exc:
                    raise DuplicateKey(
                        f"agent {agent.id} already exists", field="id", agent_id=agent.id
                    ) from exc
            case UpdateAgent(agent):
                cur = await conn.execute(UPDATE_AGENT, agent_params(agent, POSTGRES))
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"agent {agent.id} changed meanwhile", agent_id=agent.id)
            case DeleteAgent(agent_id, version):
                await conn.execute(LOCK_AGENT, {"id": agent_id})
                cur = await conn.execute(DELETE_AGENT, {"id": agent_id, "version": version})
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"agent {agent_id} changed meanwhile", agent_id=agent_id)
            case RenewLeases(agent_id, until):
                await conn.execute(
                    RENEW_LEASES, {"agent_id": agent_id, "until": POSTGRES.dump_time(until)}
                )
            case SaveCursor(name, last_event_id, at):
                await conn.execute(SAVE_CURSOR, {"name": name, "last": last_event_id, "at": at})
            case AdvanceCursor() | InsertNotification() | SaveDigest():
                await self._apply_notification(conn, op)
            case AppendEvent():
                raise AssertionError("events are appended by _commit, after the other writes")
            case _:
                assert_never(op)

    # --- reads --------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._fetchone(SELECT_TASK, {"id": task_id})
        return task_from_row(row, POSTGRES) if row else None

    async def get_tasks(self, task_ids: Sequence[str]) -> list[Task]:
        ids = list(task_ids)
        if not ids:
            return []
        rows = await self._fetchall(SELECT_TASKS, {"ids": ids})
        return [task_from_row(r, POSTGRES) for r in rows]

    async def find_by_idempotency_key(self, requester: str, key: str) -> Task | None:
        row = await self._fetchone(
            SELECT_TASK_BY_IDEMPOTENCY_KEY, {"requester": requester, "key": key}
        )
        return task_from_row(row, POSTGRES) if row else None

    async def list_tasks(
        self, flt: TaskFilter, *, limit: int, cursor: str | None, descending: bool = True
    ) -> Page[Task]:
        where, params = task_where(flt, cursor, descending, _ph, _capability_clause)
        order = "DESC" if descending else "ASC"
        sql = f"SELECT * FROM tasks {where} ORDER BY id {order} LIMIT {int(limit) + 1}"
        rows = await self._fetchall(sql, params)
        tasks = [task_from_row(r, POSTGRES) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(tasks, encode_cursor(tasks[-1].id) if more and tasks else None)

    async def task_detail(self, task_id: str) -> TaskDetail | None:
        params = {"task_id": task_id}
        async with self._connection() as conn:
            cur = await conn.execute(SELECT_TASK, {"id": task_id})
            row = await cur.fetchone()
            if row is None:
                return None
            attempts = await (await conn.execute(SELECT_ATTEMPTS, params)).fetchall()
            progress = await (await conn.execute(SELECT_PROGRESS, params)).fetchall()
            comments = await (await conn.execute(SELECT_COMMENTS, params)).fetchall()
        return TaskDetail(
            task=task_from_row(row, POSTGRES),
            attempts=tuple(attempt_from_row(r, POSTGRES) for r in attempts),
            progress=tuple(progress_from_row(r, POSTGRES) for r in progress),
            comments=tuple(comment_from_row(r, POSTGRES) for r in comments),
        )

    async def attempts(self, task_id: str) -> list[Attempt]:
        rows = await self._fetchall(SELECT_ATTEMPTS, {"task_id": task_id})
        return [attempt_from_row(r, POSTGRES) for r in rows]

    async def active_tasks_of(self, agent_id: str) -> list[Task]:
        rows = await self._fetchall(SELECT_ACTIVE_TASKS, {"agent_id": agent_id})
        return [task_from_row(r, POSTGRES) for r in rows]

    async def get_agent(self, agent_id: str) -> Agent | None:
        row = await self._fetchone(SELECT_AGENT, {"id": agent_id})
        return agent_from_row(row, POSTGRES) if row else None

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None:
        row = await self._fetchone(SELECT_AGENT_BY_HASH, {"token_hash": token_hash})
        return agent_from_row(row, POSTGRES) if row else None

    async def list_agents(
        self, flt: AgentFilter, *, limit: int, cursor: str | None
    ) -> Page[AgentLoad]:
        where, params = agent_where(flt, cursor, _ph, _agent_capability_clause, POSTGRES.dump_time)
        sql = f"{SELECT_AGENT_LOAD} {where} ORDER BY a.id LIMIT {int(limit) + 1}"
        rows = await self._fetchall(sql, params)
        items = [AgentLoad(agent_from_row(r, POSTGRES), int(r["active"])) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].agent.id) if more and items else None)

    async def counts(self) -> Counts:
        async with self._connection() as conn:
            task_rows = await (await conn.execute(SELECT_TASK_COUNTS)).fetchall()
            agent_rows = await (await conn.execute(SELECT_AGENT_COUNTS)).fetchall()
            drained_row = await (await conn.execute(SELECT_DRAINED_COUNT)).fetchone()
        tasks = {r["status"]: int(r["n"]) for r in task_rows}
        agents = {r["status"]: int(r["n"]) for r in agent_rows}
        drained = int(drained_row["n"]) if drained_row else 0
        if drained:
            agents["draining"] = drained
        return Counts(tasks_by_status=tasks, agents_by_status=agents)

    async def events_for_task(self, task_id: str) -> list[Event]:
        rows = await self._fetchall(SELECT_TASK_EVENTS, {"task_id": task_id})
        return [event_from_row(r, POSTGRES) for r in rows]

    async def read_events(self, *, after: int, limit: int) -> list[Event]:
        rows = await self._fetchall(SELECT_EVENTS_AFTER, {"after": after, "limit": limit})
        return [event_from_row(r, POSTGRES) for r in rows]

    async def queue_stats(self, since: datetime, limit: int) -> QueueStats:
        async with self._connection() as conn:
            rows = await (await conn.execute(STATS_OPEN)).fetchall()
            open_tasks = {(r["status"], r["priority"]): int(r["n"]) for r in rows}
            oldest = await (await conn.execute(STATS_OLDEST)).fetchone()
            cur = await conn.execute(STATS_FINISHED, {"since": since, "limit": limit})
            finished = [
                (r["created_at"], r["started_at"], r["finished_at"], r["status"])
                for r in await cur.fetchall()
            ]
        return QueueStats(open_tasks, oldest["at"] if oldest else None, finished)

    async def get_cursor(self, name: str) -> int | None:
        row = await self._fetchone(SELECT_CURSOR, {"name": name})
        return int(row["last_event_id"]) if row else None

    async def prune(
        self, *, events_before: datetime | None, tasks_before: datetime | None, limit: int
    ) -> Pruned:
        events = tasks = notifications = 0
        async with self._connection() as conn, conn.transaction():
            if events_before is not None:
                params = {"before": events_before, "limit": limit}
                notifications = (await conn.execute(PRUNE_NOTIFICATIONS, params)).rowcount
                # Under the event-order lock: no commit appends while the prefix is cut.
                await conn.execute(LOCK_EVENT_ORDER)
                cur = await conn.execute(PRUNE_EVENTS, {"limit": limit})
                rows = [(int(r["id"]), r["created_at"]) for r in await cur.fetchall()]
                through = log_prefix(rows, events_before)
                if through is not None:
                    cur = await conn.execute(DROP_EVENTS, {"through": through})
                    events = cur.rowcount
                    params = {"name": RETENTION_CURSOR, "last": through, "at": utcnow()}
                    await conn.execute(SAVE_CURSOR, params)
            if tasks_before is not None:
                params = {"before": tasks_before, "limit": limit}
                found = await (await conn.execute(PRUNE_TASKS, params)).fetchall()
                ids = [r["id"] for r in found]
                for table, column in TASK_ROWS if found else ():
                    await conn.execute(
                        f"DELETE FROM {table} WHERE {column} = ANY(%(ids)s)", {"ids": ids}
                    )
                by_status: dict[str, int] = defaultdict(int)
                for row in found:
                    by_status[row["status"]] -= 1
                for status in sorted(by_status):
                    await conn.execute(BUMP_COUNT, {"status": status, "delta": by_status[status]})
                tasks = len(found)
        return Pruned(events=events, tasks=tasks, notifications=notifications)

    async def last_event_id(self) -> int:
        row = await self._fetchone(SELECT_LAST_EVENT, {})
        return int(row["n"]) if row else 0

    # --- assignment -------------------------------------------------------------------

    async def get_agents(self, agent_ids: Sequence[str]) -> list[Agent]:
        ids = list(agent_ids)
        if not ids:
            return []
        rows = await self._fetchall(SELECT_AGENTS, {"ids": ids})
        return [agent_from_row(r, POSTGRES) for r in rows]

    async def all_agents(self) -> list[Agent]:
        rows = await self._fetchall(SELECT_ALL_AGENTS, {})
        return [agent_from_row(r, POSTGRES) for r in rows]

    async def claimable(self, query: ClaimQuery) -> list[Task]:
        sql, params = _claimable_sql(query, lock=False)
        rows = await self._fetchall(sql, params)
        return [task_from_row(r, POSTGRES) for r in rows]

    async def claim(self, query: ClaimQuery, plan: ClaimPlan) -> list[Event]:
        sql, params = _claimable_sql(query, lock=True)
        async with self._connection() as conn, conn.transaction():
            # The agent row first: claims and pushes to one agent queue here, so its load
            # is read and raised by one transaction at a time.
            row = await (await conn.execute(LOCK_AGENT, {"id": query.agent_id})).fetchone()
            agent = agent_from_row(row, POSTGRES) if row else None
            assigned: list[Task] = []
            candidates: list[Task] = []
            if agent is not None:
                cur = await conn.execute(
                    SELECT_ASSIGNED, {"agent_id": query.agent_id, "limit": query.limit}
                )
                assigned = [task_from_row(r, POSTGRES) for r in await cur.fetchall()]
                cur = await conn.execute(sql, params)
                candidates = [task_from_row(r, POSTGRES) for r in await cur.fetchall()]
            ops = plan(ClaimView(agent, assigned, candidates))
            events = await self._commit(conn, ops) if ops else []
        return self._told(events)

    async def children(self, parent_id: str) -> list[Task]:
        rows = await self._fetchall(SELECT_CHILDREN, {"id": parent_id})
        return [task_from_row(r, POSTGRES) for r in rows]

    async def due(self, now: datetime, since: datetime, limit: int) -> Due:
        params = {"now": now, "since": since, "limit": limit}
        found: list[list[Task]] = []
        async with self._connection() as conn:
            for sql in (DUE_TIMED_OUT, DUE_LEASE, DUE_NOT_STARTED, DUE_READY, DUE_RUN_AT):
                rows = await (await conn.execute(sql, params)).fetchall()
                found.append([task_from_row(r, POSTGRES) for r in rows])
        return Due(*found)

    async def next_deadline(self, since: datetime) -> datetime | None:
        row = await self._fetchone(NEXT_DEADLINE, {"since": since})
        return POSTGRES.load_time(row["x"]) if row and row["x"] else None


def _claimable_sql(query: ClaimQuery, *, lock: bool) -> tuple[str, dict[str, Any]]:
    where, params = claimable_where(query, _ph, CAPABLE)
    params["caps"] = POSTGRES.dump_json(list(query.capabilities))
    params["limit"] = query.limit
    # SKIP LOCKED: a row another claim is taking is passed over, never waited for.
    tail = " FOR UPDATE SKIP LOCKED" if lock else ""
    sql = f"SELECT * FROM tasks {where} ORDER BY {QUEUE_ORDER} LIMIT %(limit)s{tail}"
    return sql, params


def _with_id(event: Event, event_id: int) -> Event:
    return Event(
        id=event_id,
        type=event.type,
        created_at=event.created_at,
        task_id=event.task_id,
        agent_id=event.agent_id,
        data=event.data,
    )
