"""The embedded engine: SQLite in WAL mode.

All writes go through one connection owned by one thread, so writers queue in the process
instead of fighting over the database lock; readers use their own connections in a small
pool of threads, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar, assert_never

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Agent, Attempt, Event, Task, TaskDetail
from dispatchd.errors import AgentUnavailable, ConcurrentUpdate, DuplicateKey, StoreError
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
    SQLITE,
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
from dispatchd.store.sqlite_notifications import SQLiteNotifications
from dispatchd.store.sqlite_webhooks import SQLiteWebhooks

T = TypeVar("T")


def _ph(name: str) -> str:
    return f":{name}"


INSERT_TASK = insert_sql("tasks", TASK_COLUMNS, _ph)
UPDATE_TASK = update_versioned_sql("tasks", TASK_COLUMNS, _ph)
INSERT_AGENT = insert_sql("agents", AGENT_COLUMNS, _ph)
UPDATE_AGENT = update_versioned_sql("agents", AGENT_COLUMNS, _ph)
INSERT_ATTEMPT = (
    "INSERT INTO attempts (task_id, number, agent_id, assigned_at, started_at, ended_at, "
    "outcome, error) VALUES (:task_id, :number, :agent_id, :assigned_at, :started_at, "
    ":ended_at, :outcome, :error)"
)
PATCH_ATTEMPT = (
    "UPDATE attempts SET started_at = COALESCE(:started_at, started_at), "
    "ended_at = COALESCE(:ended_at, ended_at), outcome = COALESCE(:outcome, outcome), "
    "error = COALESCE(:error, error) WHERE task_id = :task_id AND number = :number"
)
INSERT_PROGRESS = (
    "INSERT INTO progress (task_id, attempt, agent_id, message, percent, created_at) "
    "VALUES (:task_id, :attempt, :agent_id, :message, :percent, :created_at)"
)
INSERT_COMMENT = (
    "INSERT INTO comments (task_id, author, body, created_at) "
    "VALUES (:task_id, :author, :body, :created_at)"
)
INSERT_EVENT = (
    "INSERT INTO events (type, task_id, agent_id, data, created_at) "
    "VALUES (:type, :task_id, :agent_id, :data, :created_at) RETURNING id"
)
RENEW_LEASES = (
    "UPDATE tasks SET lease_expires_at = :until, version = version + 1 "
    "WHERE assignee = :agent_id AND status IN ('running', 'waiting_input')"
)
INSERT_DEP = "INSERT OR IGNORE INTO task_deps (parent_id, child_id) VALUES (?, ?)"
TOUCH_TASK = (
    "UPDATE tasks SET version = version + 1, dependents = dependents + 1 "
    "WHERE id = :id AND version = :version"
)
TAKE_SLOT = (
    "UPDATE agents SET last_assigned_at = :at WHERE id = :id AND drained = 0 "
    "AND (:check = 0 OR status NOT IN ('offline', 'degraded')) "
    "AND active + :planned + :count <= :limit"
)
ADD_LOAD = "UPDATE agents SET active = max(active + :delta, 0) WHERE id = :id"
DELETE_AGENT = (
    "DELETE FROM agents WHERE id = :id AND version = :version AND NOT EXISTS "
    f"(SELECT 1 FROM tasks WHERE assignee = :id AND status IN {ACTIVE})"
)
QUEUE_ORDER = "priority_rank DESC, due_at IS NULL, due_at, created_at, id"
CAPABLE = (
    "NOT EXISTS (SELECT 1 FROM json_each(tasks.capabilities) c "
    "WHERE c.value NOT IN (SELECT value FROM json_each(:caps)))"
)
SELECT_ASSIGNED = (
    "SELECT * FROM tasks WHERE assignee = :agent_id AND status = 'assigned' "
    "ORDER BY priority_rank DESC, created_at LIMIT :limit"
)
SELECT_CHILDREN = (
    "SELECT t.* FROM task_deps d JOIN tasks t ON t.id = d.child_id "
    "WHERE d.parent_id = ? AND t.status = 'blocked' ORDER BY t.id"
)
DUE_TIMED_OUT = (
    "SELECT * FROM tasks WHERE deadline_at <= :now "
    "AND status IN ('running', 'waiting_input') LIMIT :limit"
)
DUE_LEASE = (
    "SELECT * FROM tasks WHERE lease_expires_at <= :now "
    "AND status IN ('running', 'waiting_input') LIMIT :limit"
)
DUE_NOT_STARTED = (
    "SELECT * FROM tasks WHERE lease_expires_at <= :now AND status = 'assigned' LIMIT :limit"
)
DUE_READY = (
    "SELECT * FROM tasks WHERE not_before > :since AND not_before <= :now "
    "AND status = 'pending' ORDER BY not_before LIMIT :limit"
)
# A blocked task whose run_at came and whose parents are all completed; one still waiting
# on a parent is left to the parent's completion.
PARENTS_DONE = (
    "NOT EXISTS (SELECT 1 FROM task_deps d JOIN tasks p ON p.id = d.parent_id "
    "WHERE d.child_id = tasks.id AND p.status <> 'completed')"
)
DUE_RUN_AT = (
    "SELECT * FROM tasks WHERE status = 'blocked' AND run_at IS NOT NULL "
    f"AND run_at <= :now AND {PARENTS_DONE} LIMIT :limit"
)
NEXT_DEADLINE = (
    "SELECT min(x) FROM ("
    "SELECT min(deadline_at) AS x FROM tasks WHERE deadline_at IS NOT NULL "
    "UNION ALL SELECT min(lease_expires_at) FROM tasks WHERE lease_expires_at IS NOT NULL "
    "UNION ALL SELECT min(not_before) FROM tasks WHERE not_before > :since "
    "AND status = 'pending' "
    "UNION ALL SELECT min(run_at) FROM tasks WHERE status = 'blocked' AND run_at IS NOT NULL "
    f"AND {PARENTS_DONE})"
)
PRUNE_EVENTS, PRUNE_TASKS = retention_sql(_ph)
PRUNE_NOTIFICATIONS = prune_notifications_sql(_ph)
STATS_OPEN, STATS_OLDEST, STATS_FINISHED = stats_sql(_ph)
SAVE_CURSOR = save_cursor_sql(_ph)
BUMP_COUNT = (
    "INSERT INTO task_counts (status, n) VALUES (:status, :delta) "
    "ON CONFLICT (status) DO UPDATE SET n = n + excluded.n"
)
SELECT_AGENT_LOAD = "SELECT a.* FROM agents a"


def _capability_clause(param: str) -> str:
    return f"EXISTS (SELECT 1 FROM json_each(capabilities) WHERE value = {param})"


def _agent_capability_clause(param: str) -> str:
    return f"EXISTS (SELECT 1 FROM json_each(a.capabilities) WHERE key = {param})"


class SQLiteStore(SQLiteWebhooks, SQLiteNotifications):
    dialect = "sqlite"

    def __init__(self, path: Path, *, readers: int = 4, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="dispatchd-sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(
            readers, thread_name_prefix="dispatchd-sqlite-reader"
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._listeners: list[CommitListener] = []

    def on_commit(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def _told(self, events: list[Event]) -> list[Event]:
        if events:
            for listener in self._listeners:
                listener(events)
        return events

    async def watch(self, advanced: Callable[[int], None]) -> None:
        """Other processes do not write this file while we serve it: nothing to watch."""
        await asyncio.Event().wait()

    # --- connections ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: a connection opened after the file was deleted fails instead of quietly
        # creating an empty database (`open` creates the file once).
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # Another process on the same file (a second `serve`, `db upgrade`) may hold the lock;
        # set the wait first, since switching to WAL itself takes the lock.
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._conn())
            except sqlite3.OperationalError as exc:
                raise StoreError(f"database error: {exc}") from exc
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc):
                    raise
                raise DuplicateKey(f"duplicate key: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._reader_pool, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer_pool, fn)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            sqlite3.connect(self.path).close()
        await self._write(lambda conn: None)

    async def close(self) -> None:
        self._writer_pool.shutdown(wait=True)
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

    async def migrate(self) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL "
                    "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
                )
                applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                done = []
                for migration in migrations.pending(self.dialect, applied):
                    for statement in _split(migration.sql):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                        (migration.version, migration.name),
                    )
                    done.append(migration.version)
                conn.execute("COMMIT")
                return done
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        return await self._write(run)

    # --- writes -----------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> list[Event]:
        return self._told(await self._write(lambda conn: self._commit(conn, ops)))

    def _commit(self, conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Event]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            events = self._apply_all(conn, ops)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return events

    def _apply_all(self, conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Event]:
        events: list[Event] = []
        counts: dict[str, int] = defaultdict(int)
        loads: dict[str, int] = defaultdict(int)
        for op in ops:
            try:
                self._apply(conn, op, events, counts, loads)
            except sqlite3.IntegrityError as exc:
                raise DuplicateKey(f"duplicate key: {exc}", constraint=str(exc)) from exc
        for status, delta in counts.items():
            if delta:
                conn.execute(BUMP_COUNT, {"status": status, "delta": delta})
        for agent_id in sorted(loads):
            if loads[agent_id]:
                conn.execute(ADD_LOAD, {"id": agent_id, "delta": loads[agent_id]})
        return events

    def _apply(
        self,
        conn: sqlite3.Connection,
        op: Op,
        events: list[Event],
        counts: dict[str, int],
        loads: dict[str, int],
    ) -> None:
        match op:
            case InsertTask(task):
                try:
                    conn.execute(INSERT_TASK, task_params(task, SQLITE))
                except sqlite3.IntegrityError as exc:
                    field = "idempotency_key" if "idempotency_key" in str(exc) else "id"
                    raise DuplicateKey(
                        f"task {field} already exists", field=field, task_id=task.id
                    ) from exc
                counts[task.status.value] += 1
                conn.executemany(INSERT_DEP, [(parent, task.id) for parent in task.depends_on])
                for agent_id, delta in load_deltas(None, None, task):
                    loads[agent_id] += delta
            case UpdateTask(task, previous, previous_assignee):
                if conn.execute(UPDATE_TASK, task_params(task, SQLITE)).rowcount != 1:
                    raise ConcurrentUpdate(f"task {task.id} changed meanwhile", task_id=task.id)
                for status, delta in counter_deltas(previous.value, task.status.value):
                    counts[status] += delta
                for agent_id, delta in load_deltas(previous, previous_assignee, task):
                    loads[agent_id] += delta
            case TouchTask(task_id, version):
                if conn.execute(TOUCH_TASK, {"id": task_id, "version": version}).rowcount != 1:
                    raise ConcurrentUpdate(f"task {task_id} changed meanwhile", task_id=task_id)
            case TakeSlot(agent_id, limit, at, check_status, count):
                params = {
                    "id": agent_id,
                    "limit": limit,
                    "at": SQLITE.dump_time(at),
                    "planned": loads[agent_id],
                    "check": int(check_status),
                    "count": count,
                }
                if conn.execute(TAKE_SLOT, params).rowcount != 1:
                    raise AgentUnavailable(
                        f"agent {agent_id} cannot take a task now", agent_id=agent_id
                    )
            case AppendEvent(event):
                (event_id,) = conn.execute(INSERT_EVENT, event_params(event, SQLITE)).fetchone()
                events.append(_with_id(event, event_id))
            case SaveAttempt(attempt):
                conn.execute(INSERT_ATTEMPT, attempt_params(attempt, SQLITE))
            case PatchAttempt():
                conn.execute(PATCH_ATTEMPT, patch_attempt_params(op, SQLITE))
            case AppendProgress(entry):
                conn.execute(INSERT_PROGRESS, progress_params(entry, SQLITE))
            case AppendComment(comment):
                conn.execute(INSERT_COMMENT, comment_params(comment, SQLITE))
            case InsertAgent(agent):
                try:
                    conn.execute(INSERT_AGENT, agent_params(agent, SQLITE))
                except sqlite3.IntegrityError as exc:
                    raise DuplicateKey(
                        f"agent {agent.id} already exists", field="id", agent_id=agent.id
                    ) from exc
            case UpdateAgent(agent):
                if conn.execute(UPDATE_AGENT, agent_params(agent, SQLITE)).rowcount != 1:
                    raise ConcurrentUpdate(f"agent {agent.id} changed meanwhile", agent_id=agent.id)
            case DeleteAgent(agent_id, version):
                cur = conn.execute(DELETE_AGENT, {"id": agent_id, "version": version})
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"agent {agent_id} changed meanwhile", agent_id=agent_id)
            case RenewLeases(agent_id, until):
                conn.execute(RENEW_LEASES, {"agent_id": agent_id, "until": SQLITE.dump_time(until)})
            case SaveCursor(name, last_event_id, at):
                params = {"name": name, "last": last_event_id, "at": SQLITE.dump_time(at)}
                conn.execute(SAVE_CURSOR, params)
            case AdvanceCursor() | InsertNotification() | SaveDigest():
                self._apply_notification(conn, op)
            case _:
                assert_never(op)

    # --- reads --------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task | None:
        def run(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return task_from_row(row, SQLITE) if row else None

        return await self._read(run)

    async def get_tasks(self, task_ids: Sequence[str]) -> list[Task]:
        ids = list(task_ids)

        def run(conn: sqlite3.Connection) -> list[Task]:
            marks = ", ".join("?" for _ in ids)
            rows = conn.execute(f"SELECT * FROM tasks WHERE id IN ({marks})", ids).fetchall()
            return [task_from_row(r, SQLITE) for r in rows]

        return await self._read(run) if ids else []

    async def find_by_idempotency_key(self, requester: str, key: str) -> Task | None:
        def run(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(
                "SELECT * FROM tasks WHERE requester = ? AND idempotency_key = ?", (requester, key)
            ).fetchone()
            return task_from_row(row, SQLITE) if row else None

        return await self._read(run)

    async def list_tasks(
        self, flt: TaskFilter, *, limit: int, cursor: str | None, descending: bool = True
    ) -> Page[Task]:
        where, params = task_where(flt, cursor, descending, _ph, _capability_clause)
        order = "DESC" if descending else "ASC"
        sql = f"SELECT * FROM tasks {where} ORDER BY id {order} LIMIT {int(limit) + 1}"

        def run(conn: sqlite3.Connection) -> Page[Task]:
            rows = conn.execute(sql, params).fetchall()
            tasks = [task_from_row(r, SQLITE) for r in rows[:limit]]
            more = len(rows) > limit
            return Page(tasks, encode_cursor(tasks[-1].id) if more and tasks else None)

        return await self._read(run)

    async def task_detail(self, task_id: str) -> TaskDetail | None:
        def run(conn: sqlite3.Connection) -> TaskDetail | None:
            row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            attempts = conn.execute(
                "SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,)
            ).fetchall()
            progress = conn.execute(
                "SELECT * FROM progress WHERE task_id = ? ORDER BY id", (task_id,)
            ).fetchall()
            comments = conn.execute(
                "SELECT * FROM comments WHERE task_id = ? ORDER BY id", (task_id,)
            ).fetchall()
            return TaskDetail(
                task=task_from_row(row, SQLITE),
                attempts=tuple(attempt_from_row(r, SQLITE) for r in attempts),
                progress=tuple(progress_from_row(r, SQLITE) for r in progress),
                comments=tuple(comment_from_row(r, SQLITE) for r in comments),
            )

        return await self._read(run)

    async def attempts(self, task_id: str) -> list[Attempt]:
        def run(conn: sqlite3.Connection) -> list[Attempt]:
            rows = conn.execute(
                "SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,)
            ).fetchall()
            return [attempt_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def active_tasks_of(self, agent_id: str) -> list[Task]:
        def run(conn: sqlite3.Connection) -> list[Task]:
            rows = conn.execute(
                f"SELECT * FROM tasks WHERE assignee = ? AND status IN {ACTIVE} ORDER BY id",
                (agent_id,),
            ).fetchall()
            return [task_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def get_agent(self, agent_id: str) -> Agent | None:
        def run(conn: sqlite3.Connection) -> Agent | None:
            row = conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
            return agent_from_row(row, SQLITE) if row else None

        return await self._read(run)

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None:
        def run(conn: sqlite3.Connection) -> Agent | None:
            row = conn.execute(
                "SELECT * FROM agents WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            return agent_from_row(row, SQLITE) if row else None

        return await self._read(run)

    async def list_agents(
        self, flt: AgentFilter, *, limit: int, cursor: str | None
    ) -> Page[AgentLoad]:
        where, params = agent_where(flt, cursor, _ph, _agent_capability_clause, SQLITE.dump_time)
        sql = f"{SELECT_AGENT_LOAD} {where} ORDER BY a.id LIMIT {int(limit) + 1}"

        def run(conn: sqlite3.Connection) -> Page[AgentLoad]:
            rows = conn.execute(sql, params).fetchall()
            items = [AgentLoad(agent_from_row(r, SQLITE), r["active"]) for r in rows[:limit]]
            more = len(rows) > limit
            return Page(items, encode_cursor(items[-1].agent.id) if more and items else None)

        return await self._read(run)

    async def counts(self) -> Counts:
        def run(conn: sqlite3.Connection) -> Counts:
            tasks = dict(conn.execute("SELECT status, n FROM task_counts").fetchall())
            agents = dict(
                conn.execute("SELECT status, count(*) FROM agents GROUP BY status").fetchall()
            )
            drained = conn.execute("SELECT count(*) FROM agents WHERE drained = 1").fetchone()[0]
            if drained:
                agents["draining"] = drained
            return Counts(tasks_by_status=tasks, agents_by_status=agents)

        return await self._read(run)

    async def queue_stats(self, since: datetime, limit: int) -> QueueStats:
        def run(conn: sqlite3.Connection) -> QueueStats:
            open_tasks = {(r[0], r[1]): int(r[2]) for r in conn.execute(STATS_OPEN).fetchall()}
            oldest = conn.execute(STATS_OLDEST).fetchone()[0]
            params = {"since": SQLITE.dump_time(since), "limit": limit}
            finished = [
                (
                    SQLITE.load_time(r[0]),
                    SQLITE.load_time(r[1]) if r[1] else None,
                    SQLITE.load_time(r[2]),
                    r[3],
                )
                for r in conn.execute(STATS_FINISHED, params).fetchall()
            ]
            return QueueStats(open_tasks, SQLITE.load_time(oldest) if oldest else None, finished)

        return await self._read(run)

    async def events_for_task(self, task_id: str) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT * FROM events WHERE task_id = ? ORDER BY id", (task_id,)
            ).fetchall()
            return [event_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def read_events(self, *, after: int, limit: int) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
            return [event_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def last_event_id(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT max(id) FROM events").fetchone()
            return int(row[0] or 0)

        return await self._read(run)

    async def get_cursor(self, name: str) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT last_event_id FROM cursors WHERE name = ?", (name,))
            found = row.fetchone()
            return int(found[0]) if found else None

        return await self._read(run)

    async def prune(
        self, *, events_before: datetime | None, tasks_before: datetime | None, limit: int
    ) -> Pruned:
        def run(conn: sqlite3.Connection) -> Pruned:
            conn.execute("BEGIN IMMEDIATE")
            try:
                pruned = self._prune(conn, events_before, tasks_before, limit)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return pruned

        return await self._write(run)

    def _prune(
        self,
        conn: sqlite3.Connection,
        events_before: datetime | None,
        tasks_before: datetime | None,
        limit: int,
    ) -> Pruned:
        events = tasks = notifications = 0
        if events_before is not None:
            params = {"before": SQLITE.dump_time(events_before), "limit": limit}
            notifications = conn.execute(PRUNE_NOTIFICATIONS, params).rowcount
            rows = conn.execute(PRUNE_EVENTS, {"limit": limit}).fetchall()
            through = log_prefix([(r[0], SQLITE.load_time(r[1])) for r in rows], events_before)
            if through is not None:
                events = conn.execute("DELETE FROM events WHERE id <= ?", (through,)).rowcount
                at = SQLITE.dump_time(utcnow())
                conn.execute(SAVE_CURSOR, {"name": RETENTION_CURSOR, "last": through, "at": at})
        if tasks_before is not None:
            params = {"before": SQLITE.dump_time(tasks_before), "limit": limit}
            found = conn.execute(PRUNE_TASKS, params).fetchall()
            ids = SQLITE.dump_json([r[0] for r in found])
            for table, column in TASK_ROWS if found else ():
                conn.execute(
                    f"DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))",
                    (ids,),
                )
            by_status: dict[str, int] = defaultdict(int)
            for row in found:
                by_status[row[1]] -= 1
            for status, delta in by_status.items():
                conn.execute(BUMP_COUNT, {"status": status, "delta": delta})
            tasks = len(found)
        return Pruned(events=events, tasks=tasks, notifications=notifications)

    # --- assignment -------------------------------------------------------------------

    async def get_agents(self, agent_ids: Sequence[str]) -> list[Agent]:
        ids = list(agent_ids)

        def run(conn: sqlite3.Connection) -> list[Agent]:
            marks = ", ".join("?" for _ in ids)
            rows = conn.execute(f"SELECT * FROM agents WHERE id IN ({marks})", ids).fetchall()
            return [agent_from_row(r, SQLITE) for r in rows]

        return await self._read(run) if ids else []

    async def all_agents(self) -> list[Agent]:
        def run(conn: sqlite3.Connection) -> list[Agent]:
            rows = conn.execute("SELECT * FROM agents ORDER BY id").fetchall()
            return [agent_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def claimable(self, query: ClaimQuery) -> list[Task]:
        sql, params = _claimable_sql(query)

        def run(conn: sqlite3.Connection) -> list[Task]:
            return [task_from_row(r, SQLITE) for r in conn.execute(sql, params).fetchall()]

        return await self._read(run)

    async def claim(self, query: ClaimQuery, plan: ClaimPlan) -> list[Event]:
        sql, params = _claimable_sql(query)

        def run(conn: sqlite3.Connection) -> list[Event]:
            # The writer thread is the only writer: what it reads here cannot change
            # before the commit, which is what makes the claim atomic.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT * FROM agents WHERE id = ?", (query.agent_id,)
                ).fetchone()
                agent = agent_from_row(row, SQLITE) if row else None
                assigned: list[Task] = []
                candidates: list[Task] = []
                if agent is not None:
                    rows = conn.execute(
                        SELECT_ASSIGNED, {"agent_id": query.agent_id, "limit": query.limit}
                    ).fetchall()
                    assigned = [task_from_row(r, SQLITE) for r in rows]
                    rows = conn.execute(sql, params).fetchall()
                    candidates = [task_from_row(r, SQLITE) for r in rows]
                ops = plan(ClaimView(agent, assigned, candidates))
                events = self._apply_all(conn, ops) if ops else []
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return events

        return self._told(await self._write(run))

    async def children(self, parent_id: str) -> list[Task]:
        def run(conn: sqlite3.Connection) -> list[Task]:
            rows = conn.execute(SELECT_CHILDREN, (parent_id,)).fetchall()
            return [task_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def due(self, now: datetime, since: datetime, limit: int) -> Due:
        params = {
            "now": SQLITE.dump_time(now),
            "since": SQLITE.dump_time(since),
            "limit": limit,
        }

        def run(conn: sqlite3.Connection) -> Due:
            def fetch(sql: str) -> list[Task]:
                return [task_from_row(r, SQLITE) for r in conn.execute(sql, params).fetchall()]

            return Due(
                timed_out=fetch(DUE_TIMED_OUT),
                lease_lost=fetch(DUE_LEASE),
                not_started=fetch(DUE_NOT_STARTED),
                ready=fetch(DUE_READY),
                run_at=fetch(DUE_RUN_AT),
            )

        return await self._read(run)

    async def next_deadline(self, since: datetime) -> datetime | None:
        def run(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute(NEXT_DEADLINE, {"since": SQLITE.dump_time(since)}).fetchone()
            return SQLITE.load_time(row[0]) if row and row[0] else None

        return await self._read(run)


def _claimable_sql(query: ClaimQuery) -> tuple[str, dict[str, object]]:
    where, params = claimable_where(query, _ph, CAPABLE)
    params["caps"] = SQLITE.dump_json(list(query.capabilities))
    params["now"] = SQLITE.dump_time(query.now)
    params["limit"] = query.limit
    # Without statistics SQLite prefers the equality on `status` and sorts every pending
    # task; the queue index already holds them in claim order, so the first rows that fit
    # end the scan (a claim stays ~0.1 ms at a million pending tasks).
    sql = f"SELECT * FROM tasks INDEXED BY tasks_queue {where} ORDER BY {QUEUE_ORDER} LIMIT :limit"
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


def _split(sql: str) -> list[str]:
    """Split a migration into statements (ours never put `;` inside literals)."""
    code = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [part.strip() for part in code.split(";") if part.strip()]
