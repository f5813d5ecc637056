"""The store's statements: those with a fixed text come from queries.sql, written once with
`:name` placeholders and `{slot}`s, and are built for a dialect when a store is made; the
others (filters of lists, the claim's match) are built per call here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from dispatchd.domain.models import ACTIVE_STATES, TERMINAL_STATES, TaskStatus
from dispatchd.domain.webhooks import DeliveryStatus
from dispatchd.store.base import AgentFilter, ClaimQuery, TaskFilter
from dispatchd.store.connector import Dialect
from dispatchd.store.readers import EventScope
from dispatchd.store.rows import (
    AGENT_COLUMNS,
    DELIVERY_COLUMNS,
    FIRE_COLUMNS,
    ROOM_COLUMNS,
    SCHEDULE_COLUMNS,
    TASK_COLUMNS,
    WEBHOOK_COLUMNS,
    decode_cursor,
    delivery_cursor,
)

# The slots every dialect fills alike: the states in which a task is held by an agent, those
# it ends in and those it has not ended in, as SQL lists (a list of the unfinished states, not
# `NOT IN {terminal}`, so that the status index is searched, not walked whole); and a blocked
# task's parents all being completed.
COMMON = {
    "active": "(" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)) + ")",
    "terminal": "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES)) + ")",
    "unfinished": "("
    + ", ".join(f"'{s.value}'" for s in sorted(set(TaskStatus) - TERMINAL_STATES))
    + ")",
    "parents_done": "NOT EXISTS (SELECT 1 FROM task_deps d JOIN tasks p ON p.id = d.parent_id "
    "WHERE d.child_id = tasks.id AND p.status <> 'completed')",
}

# Where a pruned task's rows live: (table, column holding the task id).
TASK_ROWS = (
    ("attempts", "task_id"),
    ("progress", "task_id"),
    ("comments", "task_id"),
    ("task_reviews", "task_id"),
    ("task_deps", "parent_id"),
    ("task_deps", "child_id"),
    ("tasks", "id"),
)
DUE = ("due_timed_out", "due_lease_lost", "due_not_started", "due_ready", "due_run_at")


def load() -> dict[str, str]:
    """queries.sql as {name: statement}, comments and the final `;` dropped."""
    text = (resources.files("dispatchd.store") / "queries.sql").read_text("utf-8")
    found = {}
    for block in text.split("-- name: ")[1:]:
        name, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if not line.startswith("--")]
        found[name.strip()] = "\n".join(lines).strip().removesuffix(";")
    return found


def insert_sql(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + c for c in columns)})"


def update_versioned_sql(table: str, columns: Sequence[str]) -> str:
    """Write every column if the row is still at the version before the new one."""
    sets = ", ".join(f"{c} = :{c}" for c in columns if c != "id")
    return f"UPDATE {table} SET {sets} WHERE id = :id AND version = :version - 1"


class Queries:
    """The statements for one dialect, by name (`q.insert_event`); an empty one (a lock
    only PostgreSQL takes) is not to be run."""

    def __init__(self, d: Dialect) -> None:
        self.dialect = d
        slots = {**COMMON, **d.fragments}
        self._sql = {name: d.sql(text.format_map(slots)) for name, text in load().items()}
        self._sql.update(
            update_task=d.sql(update_versioned_sql("tasks", TASK_COLUMNS)),
            insert_agent=d.sql(insert_sql("agents", AGENT_COLUMNS)),
            update_agent=d.sql(update_versioned_sql("agents", AGENT_COLUMNS)),
            insert_webhook=d.sql(insert_sql("webhooks", WEBHOOK_COLUMNS)),
            insert_room=d.sql(insert_sql("rooms", ROOM_COLUMNS)),
            update_room=d.sql(update_versioned_sql("rooms", ROOM_COLUMNS)),
            insert_schedule=d.sql(insert_sql("schedules", SCHEDULE_COLUMNS)),
            update_schedule=d.sql(update_versioned_sql("schedules", SCHEDULE_COLUMNS)),
            insert_fire=d.sql(insert_sql("schedule_fires", FIRE_COLUMNS)),
            insert_delivery=d.sql(
                insert_sql("webhook_deliveries", DELIVERY_COLUMNS)
                + " ON CONFLICT (webhook_id, event_id) DO NOTHING"
            ),
        )
        # A commit's events on SQLite go in one executemany (`insert_ids`, which returns
        # their ids): the one insert of an event, without its RETURNING.
        one_event = self._sql["insert_event"]
        assert one_event.endswith("RETURNING id"), "insert_event returns the id it gave"
        self._sql["insert_events"] = one_event.removesuffix("RETURNING id").rstrip()
        self._by_columns: dict[tuple[str, ...], str] = {}
        self.due = tuple(self._sql[name] for name in DUE)
        self.drop_task_rows = tuple(
            d.sql(f"DELETE FROM {table} WHERE {column}{{in_ids}}") for table, column in TASK_ROWS
        )

    def update_task_columns(self, columns: Sequence[str]) -> str:
        """An update of the task's `columns` (`id` and `version` among them) fenced by the
        same version check as `update_task`; one statement per set of columns, kept."""
        return self._shaped("update", tuple(columns), update_versioned_sql)

    def insert_task_columns(self, columns: Sequence[str]) -> str:
        """An insert of a task's `columns`, the others left to their default (NULL): a
        new task leaves most of its columns empty, and each one bound costs."""
        return self._shaped("insert", tuple(columns), insert_sql)

    def _shaped(
        self, kind: str, columns: tuple[str, ...], build: Callable[[str, Sequence[str]], str]
    ) -> str:
        key = (kind, *columns)
        sql = self._by_columns.get(key)
        if sql is None:
            if len(self._by_columns) >= 1024:  # the transitions make far fewer sets than this
                self._by_columns.clear()
            sql = self._by_columns[key] = self.dialect.sql(build("tasks", columns))
        return sql

    def bump_counts(self, n: int) -> str:
        """An upsert adding `:delta_i` to the count of `:status_i` for i < n, in one statement
        (its rows in the caller's order: sorted, so that two commits never wait on each
        other's counter rows)."""
        key = ("task_counts", str(n))
        sql = self._by_columns.get(key)
        if sql is None:
            rows = ", ".join(f"(:status_{i}, :delta_{i})" for i in range(n))
            sql = self._by_columns[key] = self.dialect.sql(
                f"INSERT INTO task_counts (status, n) VALUES {rows} "
                "ON CONFLICT (status) DO UPDATE SET n = task_counts.n + excluded.n"
            )
        return sql

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(f"no statement named {name!r} in queries.sql") from None

    # --- statements built per call ------------------------------------------------------

    def list_tasks(
        self, flt: TaskFilter, cursor: str | None, descending: bool
    ) -> tuple[str, dict[str, Any]]:
        d = self.dialect
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for column, values in (
            ("status", [s.value for s in flt.status]),
            ("priority", [p.value for p in flt.priority]),
        ):
            if values:
                names = [f"{column}_{i}" for i in range(len(values))]
                params.update(zip(names, values, strict=True))
                clauses.append(f"{column} IN ({', '.join(':' + n for n in names)})")
        for column in ("requester", "assignee", "scope", "owner", "review_of"):
            if (value := getattr(flt, column)) is not None:
                params[column] = value
                clauses.append(f"{column} = :{column}")
        if flt.capability is not None:
            params["capability"] = flt.capability
            clauses.append(d.json_has("capabilities", ":capability"))
        if flt.label is not None:
            params["label"] = flt.label
            clauses.append(d.json_has("labels", ":label"))
        if cursor is not None:
            params["cursor"] = decode_cursor(cursor)
            clauses.append(f"id {'<' if descending else '>'} :cursor")
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        order = "DESC" if descending else "ASC"
        return d.sql(f"SELECT * FROM tasks {where}ORDER BY id {order} LIMIT :limit"), params

    def events_where(self, scope: EventScope) -> tuple[str, dict[str, Any]]:
        """The events in `(after, until]` that `scope` selects. A task's events come from
        the `events_task` index; the requester's and the room's by the task each event
        names (its primary key), over the id range only."""
        clauses = ["e.id > :after", "e.id <= :until"]
        params: dict[str, Any] = {}
        join = ""
        if scope.task_id is not None:
            params["task_id"] = scope.task_id
            clauses.append("e.task_id = :task_id")
        if scope.requester is not None or scope.room is not None:
            join = " LEFT JOIN tasks t ON t.id = e.task_id"
        if scope.requester is not None:
            params["requester"] = scope.requester
            clauses.append("t.requester = :requester")
        if scope.room is not None:
            params["room"] = scope.room
            # `{event_room}` reads `data` unqualified: only events have that column here.
            clauses.append("(t.scope = :room OR {event_room} = :room)")
        sql = (
            f"SELECT e.* FROM events e{join} WHERE {' AND '.join(clauses)} "
            "ORDER BY e.id LIMIT :limit"
        )
        return self.dialect.sql(sql), params

    def list_agents(self, flt: AgentFilter, cursor: str | None) -> tuple[str, dict[str, Any]]:
        d = self.dialect
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if flt.heard_before is not None:
            params["heard_before"] = d.codec.dump_time(flt.heard_before)
            clauses.append("a.last_heartbeat_at < :heard_before")
        if flt.idle:
            clauses.append("a.active = 0")
        if flt.status:
            names = [f"status_{i}" for i in range(len(flt.status))]
            params.update(zip(names, [s.value for s in flt.status], strict=True))
            clauses.append(f"a.status IN ({', '.join(':' + n for n in names)})")
        for column in ("owner", "room"):
            if (value := getattr(flt, column)) is not None:
                params[column] = value
                clauses.append(f"a.{column} = :{column}")
        if flt.capability is not None:
            params["capability"] = flt.capability
            clauses.append(d.json_has_key("a.capabilities", ":capability"))
        if cursor is not None:
            params["cursor"] = decode_cursor(cursor)
            clauses.append("a.id > :cursor")
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        return d.sql(f"SELECT a.* FROM agents a {where}ORDER BY a.id LIMIT :limit"), params

    def claimable(self, query: ClaimQuery, *, lock: bool) -> tuple[str, dict[str, Any]]:
        """The pending tasks `query` may take, in queue order (`lock`: for a claim, passing
        over rows another claim holds). A task named for the agent skips the capability and
        owner match (SPEC §3: manual assignment skips scoring)."""
        d = self.dialect
        params: dict[str, Any] = {
            "agent_id": query.agent_id,
            "now": d.codec.dump_time(query.now),
            "caps": d.codec.dump_json(list(query.capabilities)),
            "limit": query.limit,
        }
        matching = ["assigned_to IS NULL", "{capable}"]
        if query.owner_filter:
            if query.owner is None:
                matching.append("owner IS NULL")
            else:
                params["owner"] = query.owner
                matching.append("(owner IS NULL OR owner = :owner)")
        # A task of a room goes only to that room's agents, even one naming its agent.
        if query.room is None:
            room = "scope IS NULL"
        else:
            params["room"] = query.room
            room = "(scope IS NULL OR scope = :room)"
        sql = (
            "SELECT * FROM tasks{queue_index} WHERE status = 'pending' "
            f"AND {room} "
            "AND (not_before IS NULL OR not_before <= :now) "
            # Never the agent the task is kept from (a review: the one that did the work).
            "AND (excluded_agent IS NULL OR excluded_agent <> :agent_id) "
            f"AND (assigned_to = :agent_id OR ({' AND '.join(matching)})) "
            "ORDER BY {queue_order} LIMIT :limit" + ("{skip_locked}" if lock else "")
        )
        return d.sql(sql), params

    def list_webhooks(self, cursor: str | None) -> tuple[str, dict[str, Any]]:
        if cursor is None:
            return self.dialect.sql("SELECT * FROM webhooks ORDER BY id LIMIT :limit"), {}
        sql = "SELECT * FROM webhooks WHERE id > :cursor ORDER BY id LIMIT :limit"
        return self.dialect.sql(sql), {"cursor": decode_cursor(cursor)}

    def list_schedules(self, cursor: str | None) -> tuple[str, dict[str, Any]]:
        if cursor is None:
            return self.dialect.sql("SELECT * FROM schedules ORDER BY id LIMIT :limit"), {}
        sql = "SELECT * FROM schedules WHERE id > :cursor ORDER BY id LIMIT :limit"
        return self.dialect.sql(sql), {"cursor": decode_cursor(cursor)}

    def list_deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, cursor: str | None
    ) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"webhook_id": webhook_id}
        clauses = ["webhook_id = :webhook_id"]
        if status is not None:
            params["status"] = status.value
            clauses.append("status = :status")
        if cursor is not None:
            params["cursor"] = delivery_cursor(cursor)
            clauses.append("event_id < :cursor")
        sql = (
            f"SELECT * FROM webhook_deliveries WHERE {' AND '.join(clauses)} "
            "ORDER BY event_id DESC LIMIT :limit"
        )
        return self.dialect.sql(sql), params

    def list_rooms(self, cursor: str | None) -> tuple[str, dict[str, Any]]:
        if cursor is None:
            return self.dialect.sql("SELECT * FROM rooms ORDER BY id LIMIT :limit"), {}
        sql = "SELECT * FROM rooms WHERE id > :cursor ORDER BY id LIMIT :limit"
        return self.dialect.sql(sql), {"cursor": decode_cursor(cursor)}

    def room_tasks(self, room_id: str, statuses: Sequence[str]) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"room": room_id}
        clauses = ["scope = :room"]
        if statuses:
            names = [f"status_{i}" for i in range(len(statuses))]
            params.update(zip(names, statuses, strict=True))
            clauses.append(f"status IN ({', '.join(':' + n for n in names)})")
        sql = (
            f"SELECT * FROM tasks WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        return self.dialect.sql(sql), params
