"""Every statement of the store, written once with `:name` placeholders.

`{slot}`s are the dialect's (`Dialect.fragments`): `for_update` and `skip_locked` (row locks
on PostgreSQL, nothing on SQLite, whose single writer already excludes other writers),
`queue_index` (SQLite's index pin), `queue_order` and `capable` (the claim's order and tag
test). The few statements only one database has (the event-order lock, NOTIFY) are None
elsewhere. `Queries(dialect)` builds them all for one dialect, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dispatchd.domain.models import ACTIVE_STATES, TERMINAL_STATES
from dispatchd.domain.webhooks import DeliveryStatus
from dispatchd.store.base import AgentFilter, ClaimQuery, TaskFilter
from dispatchd.store.connector import Dialect
from dispatchd.store.rows import (
    AGENT_COLUMNS,
    DELIVERY_COLUMNS,
    TASK_COLUMNS,
    WEBHOOK_COLUMNS,
    decode_cursor,
    delivery_cursor,
)

# The states in which a task is held by an agent, and those it ends in, as SQL lists.
ACTIVE = "(" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)) + ")"
TERMINAL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES)) + ")"

# Where a pruned task's rows live: (table, column holding the task id).
TASK_ROWS = (
    ("attempts", "task_id"),
    ("progress", "task_id"),
    ("comments", "task_id"),
    ("task_deps", "parent_id"),
    ("task_deps", "child_id"),
    ("tasks", "id"),
)

# A blocked task whose parents are all completed; one still waiting on a parent is left to
# the parent's completion.
PARENTS_DONE = (
    "NOT EXISTS (SELECT 1 FROM task_deps d JOIN tasks p ON p.id = d.parent_id "
    "WHERE d.child_id = tasks.id AND p.status <> 'completed')"
)


def insert_sql(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + c for c in columns)})"


def update_versioned_sql(table: str, columns: Sequence[str]) -> str:
    """Write every column if the row is still at the version before the new one."""
    sets = ", ".join(f"{c} = :{c}" for c in columns if c != "id")
    return f"UPDATE {table} SET {sets} WHERE id = :id AND version = :version - 1"


class Queries:
    def __init__(self, d: Dialect) -> None:
        q = d.sql
        self.dialect = d
        # --- the writes of `commit` ---
        self.insert_task = q(insert_sql("tasks", TASK_COLUMNS))
        self.update_task = q(update_versioned_sql("tasks", TASK_COLUMNS))
        self.insert_agent = q(insert_sql("agents", AGENT_COLUMNS))
        self.update_agent = q(update_versioned_sql("agents", AGENT_COLUMNS))
        self.insert_attempt = q(
            "INSERT INTO attempts (task_id, number, agent_id, assigned_at, started_at, "
            "ended_at, outcome, error) VALUES (:task_id, :number, :agent_id, :assigned_at, "
            ":started_at, :ended_at, :outcome, :error)"
        )
        self.patch_attempt = q(
            "UPDATE attempts SET started_at = COALESCE(:started_at, started_at), "
            "ended_at = COALESCE(:ended_at, ended_at), outcome = COALESCE(:outcome, outcome), "
            "error = COALESCE(:error, error) WHERE task_id = :task_id AND number = :number"
        )
        self.insert_progress = q(
            "INSERT INTO progress (task_id, attempt, agent_id, message, percent, created_at) "
            "VALUES (:task_id, :attempt, :agent_id, :message, :percent, :created_at)"
        )
        self.insert_comment = q(
            "INSERT INTO comments (task_id, author, body, created_at) "
            "VALUES (:task_id, :author, :body, :created_at)"
        )
        self.insert_event = q(
            "INSERT INTO events (type, task_id, agent_id, data, created_at) "
            "VALUES (:type, :task_id, :agent_id, :data, :created_at) RETURNING id"
        )
        self.renew_leases = q(
            "UPDATE tasks SET lease_expires_at = :until, version = version + 1 "
            "WHERE assignee = :agent_id AND status IN ('running', 'waiting_input')"
        )
        self.insert_dep = q(
            "INSERT INTO task_deps (parent_id, child_id) VALUES (:parent, :child) "
            "ON CONFLICT DO NOTHING"
        )
        self.touch_task = q(
            "UPDATE tasks SET version = version + 1, dependents = dependents + 1 "
            "WHERE id = :id AND version = :version"
        )
        self.take_slot = q(
            "UPDATE agents SET last_assigned_at = :at WHERE id = :id AND NOT drained "
            "AND (NOT :check OR status NOT IN ('offline', 'degraded')) "
            "AND active + :planned + :count <= :limit"
        )
        self.add_load = q(
            "UPDATE agents SET active = CASE WHEN active + :delta < 0 THEN 0 "
            "ELSE active + :delta END WHERE id = :id"
        )
        # On PostgreSQL the row lock first: an assignment to the agent committing meanwhile
        # (it holds the lock through TakeSlot) is then visible to the next statement.
        self.lock_agent = q("SELECT * FROM agents WHERE id = :id{for_update}")
        self.delete_agent = q(
            "DELETE FROM agents WHERE id = :id AND version = :version AND NOT EXISTS "
            f"(SELECT 1 FROM tasks WHERE assignee = :id AND status IN {ACTIVE})"
        )
        self.bump_count = q(
            "INSERT INTO task_counts (status, n) VALUES (:status, :delta) "
            "ON CONFLICT (status) DO UPDATE SET n = task_counts.n + excluded.n"
        )
        self.save_cursor = q(
            "INSERT INTO cursors (name, last_event_id, updated_at) VALUES (:name, :last, :at) "
            "ON CONFLICT (name) DO UPDATE SET last_event_id = excluded.last_event_id, "
            "updated_at = excluded.updated_at"
        )
        # The cursor moves only from where the writer read it: a second writer working from
        # the same position fails instead of writing the same entries again.
        self.cursor_insert = q(
            "INSERT INTO cursors (name, last_event_id, updated_at) VALUES (:name, :last, :at) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self.cursor_update = q(
            "UPDATE cursors SET last_event_id = :last, updated_at = :at "
            "WHERE name = :name AND last_event_id = :expected"
        )
        self.insert_notification = q(
            "INSERT INTO notifications (kind, task_id, data, event_id, created_at) "
            "VALUES (:kind, :task_id, :data, :event_id, :created_at)"
        )
        self.save_digest = q(
            "INSERT INTO notification_digest (name, opened_at, closes_at, event_id, data, "
            "updated_at) VALUES (:name, :opened_at, :closes_at, :event_id, :data, :updated_at) "
            "ON CONFLICT (name) DO UPDATE SET opened_at = excluded.opened_at, "
            "closes_at = excluded.closes_at, event_id = excluded.event_id, "
            "data = excluded.data, updated_at = excluded.updated_at"
        )
        self.drop_digest = q("DELETE FROM notification_digest WHERE name = :name")
        self.lock_event_order = q(d.fragments["lock_event_order"]) or None
        self.notify = q(d.fragments["notify"]) or None
        # --- reads ---
        self.task = q("SELECT * FROM tasks WHERE id = :id")
        self.tasks = q(f"SELECT * FROM tasks WHERE {d.in_list('id', ':ids')} ORDER BY id")
        self.task_by_key = q(
            "SELECT * FROM tasks WHERE requester = :requester AND idempotency_key = :key"
        )
        self.attempts = q("SELECT * FROM attempts WHERE task_id = :task_id ORDER BY number")
        self.progress = q("SELECT * FROM progress WHERE task_id = :task_id ORDER BY id")
        self.comments = q("SELECT * FROM comments WHERE task_id = :task_id ORDER BY id")
        self.active_tasks = q(
            f"SELECT * FROM tasks WHERE assignee = :agent_id AND status IN {ACTIVE} ORDER BY id"
        )
        self.agent = q("SELECT * FROM agents WHERE id = :id")
        self.agent_by_hash = q("SELECT * FROM agents WHERE token_hash = :token_hash")
        self.agents = q(f"SELECT * FROM agents WHERE {d.in_list('id', ':ids')} ORDER BY id")
        self.all_agents = q("SELECT * FROM agents ORDER BY id")
        self.task_counts = q("SELECT status, n FROM task_counts")
        self.agent_counts = q("SELECT status, count(*) AS n FROM agents GROUP BY status")
        self.drained_count = q("SELECT count(*) AS n FROM agents WHERE drained")
        self.task_events = q("SELECT * FROM events WHERE task_id = :task_id ORDER BY id")
        self.events_after = q("SELECT * FROM events WHERE id > :after ORDER BY id LIMIT :limit")
        self.last_event = q("SELECT coalesce(max(id), 0) AS n FROM events")
        self.cursor = q("SELECT last_event_id FROM cursors WHERE name = :name")
        self.stats_open = q(
            "SELECT status, priority, count(*) AS n FROM tasks "
            f"WHERE status NOT IN {TERMINAL} GROUP BY status, priority"
        )
        self.stats_oldest = q("SELECT min(created_at) AS at FROM tasks WHERE status = 'pending'")
        self.stats_finished = q(
            "SELECT created_at, started_at, finished_at, status FROM tasks "
            f"WHERE finished_at >= :since AND status IN {TERMINAL} "
            "ORDER BY finished_at DESC LIMIT :limit"
        )
        # --- assignment and deadlines ---
        self.assigned = q(
            "SELECT * FROM tasks WHERE assignee = :agent_id AND status = 'assigned' "
            "ORDER BY priority_rank DESC, created_at LIMIT :limit{skip_locked}"
        )
        self.children = q(
            "SELECT t.* FROM task_deps d JOIN tasks t ON t.id = d.child_id "
            "WHERE d.parent_id = :id AND t.status = 'blocked' ORDER BY t.id"
        )
        self.due = tuple(
            q(f"SELECT * FROM tasks WHERE {where} LIMIT :limit")
            for where in (
                "deadline_at <= :now AND status IN ('running', 'waiting_input')",
                "lease_expires_at <= :now AND status IN ('running', 'waiting_input')",
                "lease_expires_at <= :now AND status = 'assigned'",
                "not_before > :since AND not_before <= :now AND status = 'pending' "
                "ORDER BY not_before",
                f"status = 'blocked' AND run_at IS NOT NULL AND run_at <= :now AND {PARENTS_DONE}",
            )
        )
        self.next_deadline = q(
            "SELECT min(x) AS x FROM ("
            "SELECT min(deadline_at) AS x FROM tasks WHERE deadline_at IS NOT NULL "
            "UNION ALL SELECT min(lease_expires_at) FROM tasks WHERE lease_expires_at IS NOT NULL "
            "UNION ALL SELECT min(not_before) FROM tasks WHERE not_before > :since "
            "AND status = 'pending' UNION ALL SELECT min(run_at) FROM tasks "
            f"WHERE status = 'blocked' AND run_at IS NOT NULL AND {PARENTS_DONE}) AS deadlines"
        )
        # --- retention ---
        self.prune_notifications = q(
            "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
            "WHERE created_at < :before ORDER BY id LIMIT :limit)"
        )
        self.oldest_events = q("SELECT id, created_at FROM events ORDER BY id LIMIT :limit")
        self.drop_events = q("DELETE FROM events WHERE id <= :through")
        self.finished_tasks = q(
            f"SELECT id, status FROM tasks WHERE finished_at < :before AND status IN {TERMINAL} "
            "ORDER BY finished_at LIMIT :limit"
        )
        self.drop_task_rows = tuple(
            q(f"DELETE FROM {table} WHERE {d.in_list(column, ':ids')}")
            for table, column in TASK_ROWS
        )
        # --- migrations ---
        self.lock_migrations = q(d.fragments["lock_migrations"]) or None
        self.create_migrations = q(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at {migration_time})"
        )
        self.migrations = q("SELECT version FROM schema_migrations")
        self.record_migration = q(
            "INSERT INTO schema_migrations (version, name) VALUES (:version, :name)"
        )
        # --- notifications ---
        self.digest = q("SELECT * FROM notification_digest WHERE name = :name")
        notifications = "SELECT * FROM notifications WHERE id > :after"
        self.notifications = q(f"{notifications} ORDER BY id LIMIT :limit")
        self.unacknowledged = q(
            f"{notifications} AND acknowledged_at IS NULL ORDER BY id LIMIT :limit"
        )
        ack = (
            "UPDATE notifications SET acknowledged_at = :at, acknowledged_by = :by "
            "WHERE acknowledged_at IS NULL AND "
        )
        self.ack_up_to = q(ack + "id <= :up_to")
        self.ack_ids = q(ack + d.in_list("id", ":ids"))
        # --- webhooks ---
        self.insert_webhook = q(insert_sql("webhooks", WEBHOOK_COLUMNS))
        self.insert_delivery = q(
            insert_sql("webhook_deliveries", DELIVERY_COLUMNS)
            + " ON CONFLICT (webhook_id, event_id) DO NOTHING"
        )
        self.webhook = q("SELECT * FROM webhooks WHERE id = :id")
        # Every transaction writing a webhook and its deliveries locks the webhook first, so
        # replicas queue on that row instead of deadlocking on each other's deliveries.
        self.lock_webhook = q("SELECT * FROM webhooks WHERE id = :id{for_update}")
        self.active_webhooks = q("SELECT * FROM webhooks WHERE active ORDER BY id")
        # Config columns only: the dispatcher's (cursor, breaker) move under it, and are
        # written here only when asked to (`reset`, `last_event_id`).
        self.update_webhook = q(
            "UPDATE webhooks SET url = :url, secret = :secret, types = :types, "
            "description = :description, active = :active, updated_at = :updated_at, "
            "version = :version, "
            "consecutive_failures = CASE WHEN :reset THEN 0 ELSE consecutive_failures END, "
            "open_until = CASE WHEN :reset THEN NULL ELSE open_until END, "
            "last_event_id = COALESCE(:last_event_id, last_event_id) "
            "WHERE id = :id AND version = :version - 1"
        )
        self.abandon_pending = q(
            "UPDATE webhook_deliveries SET status = 'abandoned', next_attempt_at = NULL, "
            "updated_at = :now WHERE webhook_id = :id AND status = 'pending'"
        )
        self.delete_webhook = q("DELETE FROM webhooks WHERE id = :id")
        self.delete_deliveries = q("DELETE FROM webhook_deliveries WHERE webhook_id = :id")
        self.advance = q(
            "UPDATE webhooks SET last_event_id = :last WHERE id = :id AND last_event_id < :last"
        )
        self.heads = q(
            "SELECT d.* FROM webhooks w JOIN webhook_deliveries d ON d.id = ("
            "SELECT p.id FROM webhook_deliveries p WHERE p.webhook_id = w.id "
            "AND p.status = 'pending' ORDER BY p.event_id LIMIT 1) WHERE w.active"
        )
        self.claim_delivery = q(
            "UPDATE webhook_deliveries SET attempt = attempt + 1, next_attempt_at = :until, "
            "updated_at = :now WHERE id = :id AND status = 'pending' AND attempt = :attempt "
            "RETURNING *"
        )
        self.record_delivery = q(
            "UPDATE webhook_deliveries SET status = :status, attempt = :attempt, "
            "next_attempt_at = :next_attempt_at, response_status = :response_status, "
            "error = :error, delivered_at = :delivered_at, history = :history, "
            "updated_at = :at WHERE id = :delivery_id AND status = 'pending' "
            "AND attempt = :claimed_attempt"
        )
        self.breaker_success = q(
            "UPDATE webhooks SET consecutive_failures = 0, open_until = NULL WHERE id = :webhook_id"
        )
        self.breaker_failure = q(
            "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1, "
            "open_until = CASE WHEN consecutive_failures + 1 >= :threshold "
            "THEN :reopen_at ELSE open_until END WHERE id = :webhook_id"
        )
        self.finished_deliveries = q(
            "SELECT id FROM webhook_deliveries WHERE status <> 'pending' "
            "AND updated_at < :before ORDER BY updated_at LIMIT :limit"
        )
        self.drop_deliveries = q(f"DELETE FROM webhook_deliveries WHERE {d.in_list('id', ':ids')}")

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
        for column in ("requester", "assignee", "scope", "owner"):
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
        sql = (
            "SELECT * FROM tasks{queue_index} WHERE status = 'pending' "
            "AND (not_before IS NULL OR not_before <= :now) "
            f"AND (assigned_to = :agent_id OR ({' AND '.join(matching)})) "
            "ORDER BY {queue_order} LIMIT :limit" + ("{skip_locked}" if lock else "")
        )
        return d.sql(sql), params

    def list_webhooks(self, cursor: str | None) -> tuple[str, dict[str, Any]]:
        if cursor is None:
            return self.dialect.sql("SELECT * FROM webhooks ORDER BY id LIMIT :limit"), {}
        sql = "SELECT * FROM webhooks WHERE id > :cursor ORDER BY id LIMIT :limit"
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
