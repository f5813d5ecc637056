"""SQL fragments shared by both dialects: filters and pagination of lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from dispatchd.domain.models import ACTIVE_STATES, TERMINAL_STATES, Task, TaskStatus
from dispatchd.store.base import AgentFilter, ClaimQuery, TaskFilter
from dispatchd.store.rows import decode_cursor

Placeholder = Callable[[str], str]

# The states in which a task is held by an agent, as an SQL list.
ACTIVE = "(" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)) + ")"
# The states a task ends in, as an SQL list.
TERMINAL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES)) + ")"


def retention_sql(ph: Placeholder) -> tuple[str, str]:
    """The reads of `Store.prune`: the log's oldest events, and finished tasks that ended
    before a time, oldest first."""
    events = f"SELECT id, created_at FROM events ORDER BY id LIMIT {ph('limit')}"
    tasks = (
        f"SELECT id, status FROM tasks WHERE finished_at < {ph('before')} "
        f"AND status IN {TERMINAL} ORDER BY finished_at LIMIT {ph('limit')}"
    )
    return events, tasks


def prune_notifications_sql(ph: Placeholder) -> str:
    return (
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
        f"WHERE created_at < {ph('before')} ORDER BY id LIMIT {ph('limit')})"
    )


# Where a pruned task's rows live: (table, column holding the task id).
TASK_ROWS = (
    ("attempts", "task_id"),
    ("progress", "task_id"),
    ("comments", "task_id"),
    ("task_deps", "parent_id"),
    ("task_deps", "child_id"),
    ("tasks", "id"),
)


def log_prefix(rows: Sequence[tuple[int, datetime]], before: datetime) -> int | None:
    """The last id of the leading run of events created before `before`: retention
    deletes a prefix of the log, so that every cursor past it stays whole."""
    through = None
    for event_id, created_at in rows:
        if created_at >= before:
            break
        through = event_id
    return through


def stats_sql(ph: Placeholder) -> tuple[str, str, str]:
    """The reads of `Store.queue_stats`."""
    open_tasks = (
        f"SELECT status, priority, count(*) AS n FROM tasks WHERE status NOT IN {TERMINAL} "
        "GROUP BY status, priority"
    )
    oldest = "SELECT min(created_at) AS at FROM tasks WHERE status = 'pending'"
    finished = (
        "SELECT created_at, started_at, finished_at, status FROM tasks "
        f"WHERE finished_at >= {ph('since')} AND status IN {TERMINAL} "
        f"ORDER BY finished_at DESC LIMIT {ph('limit')}"
    )
    return open_tasks, oldest, finished


def save_cursor_sql(ph: Placeholder) -> str:
    return (
        f"INSERT INTO cursors (name, last_event_id, updated_at) "
        f"VALUES ({ph('name')}, {ph('last')}, {ph('at')}) "
        f"ON CONFLICT (name) DO UPDATE SET last_event_id = excluded.last_event_id, "
        f"updated_at = excluded.updated_at"
    )


def insert_sql(table: str, columns: Sequence[str], ph: Placeholder) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(map(ph, columns))})"


def update_versioned_sql(table: str, columns: Sequence[str], ph: Placeholder) -> str:
    """Write every column if the row is still at the version before the new one."""
    sets = ", ".join(f"{c} = {ph(c)}" for c in columns if c != "id")
    return f"UPDATE {table} SET {sets} WHERE id = {ph('id')} AND version = {ph('version')} - 1"


def task_where(
    flt: TaskFilter,
    cursor: str | None,
    descending: bool,
    ph: Placeholder,
    capability_clause: Callable[[str], str],
) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}

    def add_in(column: str, values: list[str]) -> None:
        names = []
        for i, value in enumerate(values):
            key = f"{column}_{i}"
            params[key] = value
            names.append(ph(key))
        clauses.append(f"{column} IN ({', '.join(names)})")

    if flt.status:
        add_in("status", [s.value for s in flt.status])
    if flt.priority:
        add_in("priority", [p.value for p in flt.priority])
    for column in ("requester", "assignee", "scope", "owner"):
        value = getattr(flt, column)
        if value is not None:
            params[column] = value
            clauses.append(f"{column} = {ph(column)}")
    if flt.capability is not None:
        params["capability"] = flt.capability
        clauses.append(capability_clause(ph("capability")))
    if flt.label is not None:
        params["label"] = flt.label
        clauses.append(capability_clause(ph("label")).replace("capabilities", "labels"))
    if cursor is not None:
        params["cursor"] = decode_cursor(cursor)
        clauses.append(f"id {'<' if descending else '>'} {ph('cursor')}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return where, params


def agent_where(
    flt: AgentFilter,
    cursor: str | None,
    ph: Placeholder,
    capability_clause: Callable[[str], str],
    dump_time: Callable[[datetime], Any],
) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if flt.heard_before is not None:
        params["heard_before"] = dump_time(flt.heard_before)
        clauses.append(f"a.last_heartbeat_at < {ph('heard_before')}")
    if flt.idle:
        clauses.append("a.active = 0")
    if flt.status:
        names = []
        for i, status in enumerate(flt.status):
            params[f"status_{i}"] = status.value
            names.append(ph(f"status_{i}"))
        clauses.append(f"a.status IN ({', '.join(names)})")
    for column in ("owner", "room"):
        value = getattr(flt, column)
        if value is not None:
            params[column] = value
            clauses.append(f"a.{column} = {ph(column)}")
    if flt.capability is not None:
        params["capability"] = flt.capability
        clauses.append(capability_clause(ph("capability")))
    if cursor is not None:
        params["cursor"] = decode_cursor(cursor)
        clauses.append(f"a.id > {ph('cursor')}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return where, params


def load_deltas(
    previous: TaskStatus | None, previous_assignee: str | None, task: Task
) -> list[tuple[str, int]]:
    """How a task's write changes agents' loads: -1 for the agent it leaves, +1 for the one
    it goes to; nothing while it stays held by the same agent."""
    was = previous_assignee if previous is not None and previous.active else None
    now = task.assignee if task.status.active else None
    if was == now:
        return []
    deltas = []
    if was is not None:
        deltas.append((was, -1))
    if now is not None:
        deltas.append((now, 1))
    return deltas


def claimable_where(
    query: ClaimQuery, ph: Placeholder, subset_clause: str
) -> tuple[str, dict[str, Any]]:
    """The WHERE of `Store.claimable`; `subset_clause` tests the task's required tags
    against the agent's, which the caller binds as `caps`. A task named for the agent
    skips the capability and owner match (SPEC §3: manual assignment skips scoring)."""
    params: dict[str, Any] = {"agent_id": query.agent_id, "now": query.now}
    matching = ["assigned_to IS NULL", subset_clause]
    if query.owner_filter:
        if query.owner is None:
            matching.append("owner IS NULL")
        else:
            params["owner"] = query.owner
            matching.append(f"(owner IS NULL OR owner = {ph('owner')})")
    clauses = [
        "status = 'pending'",
        f"(not_before IS NULL OR not_before <= {ph('now')})",
        f"(assigned_to = {ph('agent_id')} OR ({' AND '.join(matching)}))",
    ]
    return "WHERE " + " AND ".join(clauses), params
