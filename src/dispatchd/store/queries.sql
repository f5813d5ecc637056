-- Every statement of the store with a fixed text, written once: `:name` placeholders, and
-- `{slot}`s that the dialect fills in (store/sqlite.py, store/postgres.py: row locks, the
-- SQLite index pin, the queue order, the tag test, lists bound as one value) or that
-- queries.py does (the task states). A statement that is empty for a dialect is not run.

-- --- the writes of a commit --------------------------------------------------------------

-- name: insert_attempt
INSERT INTO attempts (task_id, number, agent_id, assigned_at, started_at, ended_at, outcome,
    error, cost)
VALUES (:task_id, :number, :agent_id, :assigned_at, :started_at, :ended_at, :outcome, :error,
    :cost);

-- name: patch_attempt
UPDATE attempts
SET started_at = COALESCE(:started_at, started_at), ended_at = COALESCE(:ended_at, ended_at),
    outcome = COALESCE(:outcome, outcome), error = COALESCE(:error, error), cost = COALESCE(:cost,
    cost)
WHERE task_id = :task_id AND number = :number;

-- name: add_cost
-- What a cost report added, on the ledger line of its requester, UTC day and agent.
INSERT INTO cost_totals (requester, day, agent, usd, input_tokens, output_tokens)
VALUES (:requester, :day, :agent, :usd, :input_tokens, :output_tokens)
ON CONFLICT (requester, day, agent) DO UPDATE
SET usd = cost_totals.usd + excluded.usd, input_tokens = cost_totals.input_tokens +
    excluded.input_tokens, output_tokens = cost_totals.output_tokens + excluded.output_tokens;

-- name: insert_progress
INSERT INTO progress (task_id, attempt, agent_id, message, percent, created_at)
VALUES (:task_id, :attempt, :agent_id, :message, :percent, :created_at);

-- name: insert_review
INSERT INTO task_reviews (task_id, cycle, reviewer, verdict, feedback, created_at,
    review_task_id)
VALUES (:task_id, :cycle, :reviewer, :verdict, :feedback, :created_at, :review_task_id);

-- name: insert_comment
INSERT INTO comments (task_id, author, body, created_at)
VALUES (:task_id, :author, :body, :created_at);

-- name: insert_event
-- The room the event belongs to is kept with it (what `room_events` reads by): its task's
-- (a task's scope never changes; the task row is written before its events), or for the
-- room's own `room.*` events the one named in `data.room`.
INSERT INTO events (type, task_id, agent_id, data, created_at, room)
VALUES (:type, :task_id, :agent_id, :data, :created_at, coalesce((SELECT scope FROM tasks
    WHERE id = :task_id), CASE WHEN :type LIKE 'room.%' THEN {new_event_room} END))
RETURNING id;

-- name: renew_leases
-- A task waiting for input has no lease (it stops counting until the answer arrives).
UPDATE tasks
SET lease_expires_at = :until, version = version + 1
WHERE assignee = :agent_id AND status = 'running';

-- name: insert_dep
INSERT INTO task_deps (parent_id, child_id)
VALUES (:parent, :child)
ON CONFLICT DO NOTHING;

-- name: touch_task
UPDATE tasks
SET version = version + 1, dependents = dependents + 1
WHERE id = :id AND version = :version;

-- name: take_slot
UPDATE agents
SET last_assigned_at = :at
WHERE id = :id AND NOT drained AND (NOT :check OR status NOT IN ('offline', 'degraded')) AND
    active + :planned + :count <= :limit;

-- name: add_load
UPDATE agents
SET active = CASE WHEN active + :delta < 0 THEN 0 ELSE active + :delta END
WHERE id = :id;

-- name: take_slot_and_load
-- A slot reserved before anything in the commit moved the agent's load (a claim, a
-- hand-over): the check of `take_slot` on the row as it was, and the load moved, at once.
UPDATE agents
SET last_assigned_at = :at, active = CASE WHEN active + :delta < 0 THEN 0 ELSE active + :delta END
WHERE id = :id AND NOT drained AND (NOT :check OR status NOT IN ('offline', 'degraded')) AND
    active + :count <= :limit;

-- name: lock_agent
-- On PostgreSQL the row lock first: an assignment to the agent committing meanwhile
-- (it holds the lock through take_slot) is then visible to the next statement.
SELECT * FROM agents
WHERE id = :id{for_update};

-- name: delete_agent
DELETE FROM agents
WHERE id = :id AND version = :version
    AND NOT EXISTS (SELECT 1 FROM tasks WHERE assignee = :id AND status IN {active});

-- name: save_cursor
INSERT INTO cursors (name, last_event_id, updated_at)
VALUES (:name, :last, :at)
ON CONFLICT (name) DO UPDATE
SET last_event_id = excluded.last_event_id, updated_at = excluded.updated_at;

-- name: cursor_insert
-- The cursor moves only from where the writer read it: a second writer working from
-- the same position fails instead of writing the same entries again.
INSERT INTO cursors (name, last_event_id, updated_at)
VALUES (:name, :last, :at)
ON CONFLICT (name) DO NOTHING;

-- name: cursor_update
UPDATE cursors
SET last_event_id = :last, updated_at = :at
WHERE name = :name AND last_event_id = :expected;

-- name: insert_notification
INSERT INTO notifications (kind, task_id, data, event_id, created_at, requester)
VALUES (:kind, :task_id, :data, :event_id, :created_at, :requester);

-- name: save_digest
INSERT INTO notification_digest (name, opened_at, closes_at, event_id, data, updated_at)
VALUES (:name, :opened_at, :closes_at, :event_id, :data, :updated_at)
ON CONFLICT (name) DO UPDATE
SET opened_at = excluded.opened_at, closes_at = excluded.closes_at, event_id =
    excluded.event_id, data = excluded.data, updated_at = excluded.updated_at;

-- name: drop_digest
DELETE FROM notification_digest
WHERE name = :name;

-- name: lock_event_order
-- PostgreSQL: event ids follow commit order (see writes.commit).
{lock_event_order};

-- name: append_events
-- PostgreSQL: a commit's events in one statement, bound as one array per column. It takes
-- the event-order lock before the first id is drawn (held until the transaction ends, so
-- that the next writer's ids come after these and only once these are visible), inserts
-- them in the order given, and notifies every replica's `watch` at commit. One row: the
-- ids, in order. (SQLite, whose one writer gives that order by itself, runs
-- `insert_event`s.)
{append_events};

-- --- reads -------------------------------------------------------------------------------

-- name: task
SELECT * FROM tasks
WHERE id = :id;

-- name: tasks
SELECT * FROM tasks
WHERE id{in_ids}
ORDER BY id;

-- name: task_by_key
SELECT * FROM tasks
WHERE requester = :requester AND idempotency_key = :key;

-- name: attempts
SELECT * FROM attempts
WHERE task_id = :task_id
ORDER BY number;

-- name: progress
SELECT * FROM progress
WHERE task_id = :task_id
ORDER BY id;

-- name: comments
SELECT * FROM comments
WHERE task_id = :task_id
ORDER BY id;

-- name: reviews
SELECT * FROM task_reviews
WHERE task_id = :task_id
ORDER BY id;

-- name: open_reviews
SELECT * FROM tasks
WHERE review_of = :task_id AND status NOT IN {terminal}
ORDER BY id;

-- name: active_tasks
SELECT * FROM tasks
WHERE assignee = :agent_id AND status IN {active}
ORDER BY id;

-- name: agent
SELECT * FROM agents
WHERE id = :id;

-- name: agent_by_hash
SELECT * FROM agents
WHERE token_hash = :token_hash;

-- name: agents
SELECT * FROM agents
WHERE id{in_ids}
ORDER BY id;

-- name: all_agents
SELECT * FROM agents
ORDER BY id;

-- name: task_counts
SELECT status, n FROM task_counts;

-- name: agent_counts
SELECT status, count(*) AS n FROM agents GROUP BY status;

-- name: drained_count
SELECT count(*) AS n FROM agents
WHERE drained;

-- name: task_events
SELECT * FROM events
WHERE task_id = :task_id
ORDER BY id;

-- name: events_after
SELECT * FROM events
WHERE id > :after
ORDER BY id LIMIT :limit;

-- name: last_event
SELECT coalesce(max(id), 0) AS n FROM events;

-- name: cursor
SELECT last_event_id FROM cursors
WHERE name = :name;

-- name: stats_open
SELECT status, priority, count(*) AS n FROM tasks
WHERE status IN {unfinished} GROUP BY status, priority;

-- name: stats_oldest
SELECT min(created_at) AS at FROM tasks
WHERE status = 'pending';

-- name: stats_finished
SELECT created_at, started_at, finished_at, status
FROM tasks{by_finished}
WHERE finished_at >= :since AND status IN {terminal}
ORDER BY finished_at DESC LIMIT :limit;

-- name: stats_finished_counts
SELECT status, count(*) AS n
FROM tasks{by_finished}
WHERE finished_at >= :since AND status IN {terminal}
GROUP BY status;

-- name: cost_totals
SELECT day, requester, agent, usd, input_tokens, output_tokens FROM cost_totals
WHERE day >= :since
ORDER BY day, requester, agent LIMIT :limit;

-- name: spent_usd
SELECT sum(usd) AS usd FROM cost_totals
WHERE requester = :requester AND day = :day;

-- --- assignment and deadlines ------------------------------------------------------------

-- name: plan_queue
-- PostgreSQL: the queue is read in its index's order, never gathered whole and sorted. The
-- planner's estimate of the pending tasks comes from statistics that lag a burst of work (a
-- new table has none), and one that guesses a handful sorts every pending task per claim.
{plan_queue};

-- name: assigned
SELECT * FROM tasks
WHERE assignee = :agent_id AND status = 'assigned'
ORDER BY priority_rank DESC, created_at LIMIT :limit{skip_locked};

-- name: children
SELECT t.*
FROM task_deps d JOIN tasks t ON t.id = d.child_id
WHERE d.parent_id = :id AND t.status = 'blocked'
ORDER BY t.id;

-- name: due_timed_out
SELECT * FROM tasks{by_deadline}
WHERE deadline_at <= :now AND status IN ('running', 'waiting_input') LIMIT :limit;

-- name: due_lease_lost
SELECT * FROM tasks{by_lease}
WHERE lease_expires_at <= :now AND status = 'running' LIMIT :limit;

-- name: due_not_started
SELECT * FROM tasks{by_lease}
WHERE lease_expires_at <= :now AND status = 'assigned' LIMIT :limit;

-- name: due_ready
SELECT * FROM tasks{by_not_before}
WHERE not_before > :since AND not_before <= :now AND status = 'pending'
ORDER BY not_before LIMIT :limit;

-- name: due_run_at
-- Blocked tasks whose run_at came and whose parents are all completed; one still
-- waiting on a parent is left to the parent's completion.
SELECT * FROM tasks{by_run_at}
WHERE status = 'blocked' AND run_at IS NOT NULL AND run_at <= :now AND {parents_done} LIMIT
    :limit;

-- name: next_deadline
SELECT min(x) AS x FROM (
    SELECT min(deadline_at) AS x FROM tasks WHERE deadline_at IS NOT NULL
    UNION ALL SELECT min(lease_expires_at) FROM tasks WHERE lease_expires_at IS NOT NULL
    UNION ALL SELECT min(not_before) FROM tasks{by_not_before}
        WHERE not_before > :since AND status = 'pending'
    UNION ALL SELECT min(run_at) FROM tasks{by_run_at}
        WHERE status = 'blocked' AND run_at IS NOT NULL AND {parents_done}
    UNION ALL SELECT min(next_fire_at) FROM schedules WHERE next_fire_at IS NOT NULL
) AS deadlines;

-- --- retention ---------------------------------------------------------------------------

-- name: prune_notifications
DELETE FROM notifications WHERE id IN (
    SELECT id FROM notifications WHERE created_at < :before ORDER BY id LIMIT :limit
);

-- name: oldest_events
SELECT id, created_at FROM events
ORDER BY id LIMIT :limit;

-- name: drop_events
DELETE FROM events
WHERE id <= :through;

-- name: finished_tasks
SELECT id, status FROM tasks{by_finished}
WHERE finished_at < :before AND status IN {terminal}
ORDER BY finished_at LIMIT :limit;

-- --- migrations --------------------------------------------------------------------------

-- name: lock_migrations
{lock_migrations};

-- name: create_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {migration_time}
);

-- name: migrations
SELECT version FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name)
VALUES (:version, :name);

-- --- notifications -----------------------------------------------------------------------

-- name: digest
SELECT * FROM notification_digest
WHERE name = :name;

-- name: notifications
SELECT * FROM notifications
WHERE id > :after
ORDER BY id LIMIT :limit;

-- name: unacknowledged
SELECT * FROM notifications
WHERE id > :after AND acknowledged_at IS NULL
ORDER BY id LIMIT :limit;

-- name: requester_notifications
-- A requester's entries, and the digests (cut to its items by the reader).
SELECT * FROM notifications
WHERE id > :after AND (requester = :requester OR kind = 'digest')
ORDER BY id LIMIT :limit;

-- name: requester_unacknowledged
SELECT * FROM notifications
WHERE id > :after AND (requester = :requester OR kind = 'digest') AND acknowledged_at IS NULL
ORDER BY id LIMIT :limit;

-- name: ack_up_to
UPDATE notifications
SET acknowledged_at = :at, acknowledged_by = :by
WHERE acknowledged_at IS NULL AND id <= :up_to;

-- name: ack_ids
UPDATE notifications
SET acknowledged_at = :at, acknowledged_by = :by
WHERE acknowledged_at IS NULL AND id{in_ids};

-- --- webhooks ----------------------------------------------------------------------------

-- name: webhook
SELECT * FROM webhooks
WHERE id = :id;

-- name: lock_webhook
-- Every transaction writing a webhook and its deliveries locks the webhook first, so
-- replicas queue on that row instead of deadlocking on each other's deliveries.
SELECT * FROM webhooks
WHERE id = :id{for_update};

-- name: active_webhooks
SELECT * FROM webhooks
WHERE active
ORDER BY id;

-- name: update_webhook
-- Config columns only: the dispatcher's (cursor, breaker) move under it, and are
-- written here only when asked to (`reset`, `last_event_id`).
UPDATE webhooks
SET url = :url, secret = :secret, types = :types, description = :description, active = :active,
    updated_at = :updated_at, version = :version, consecutive_failures = CASE WHEN :reset THEN 0
    ELSE consecutive_failures END, open_until = CASE WHEN :reset THEN NULL ELSE open_until END,
    last_event_id = COALESCE(:last_event_id, last_event_id)
WHERE id = :id AND version = :version - 1;

-- name: abandon_pending
UPDATE webhook_deliveries
SET status = 'abandoned', next_attempt_at = NULL, updated_at = :now
WHERE webhook_id = :id AND status = 'pending';

-- name: delete_webhook
DELETE FROM webhooks
WHERE id = :id;

-- name: delete_deliveries
DELETE FROM webhook_deliveries
WHERE webhook_id = :id;

-- name: advance
UPDATE webhooks
SET last_event_id = :last
WHERE id = :id AND last_event_id < :last;

-- name: heads
SELECT d.* FROM webhooks w
JOIN webhook_deliveries d ON d.id = (
    SELECT p.id FROM webhook_deliveries p
    WHERE p.webhook_id = w.id AND p.status = 'pending'
    ORDER BY p.event_id LIMIT 1
)
WHERE w.active;

-- name: claim_delivery
UPDATE webhook_deliveries
SET attempt = attempt + 1, next_attempt_at = :until, updated_at = :now
WHERE id = :id AND status = 'pending' AND attempt = :attempt
RETURNING *;

-- name: record_delivery
UPDATE webhook_deliveries
SET status = :status, attempt = :attempt, next_attempt_at = :next_attempt_at, response_status =
    :response_status, error = :error, delivered_at = :delivered_at, history = :history,
    updated_at = :at
WHERE id = :delivery_id AND status = 'pending' AND attempt = :claimed_attempt;

-- name: breaker_success
UPDATE webhooks
SET consecutive_failures = 0, open_until = NULL
WHERE id = :webhook_id;

-- name: breaker_failure
UPDATE webhooks
SET consecutive_failures = consecutive_failures + 1, open_until = CASE WHEN consecutive_failures
    + 1 >= :threshold THEN :reopen_at ELSE open_until END
WHERE id = :webhook_id;

-- name: finished_deliveries
SELECT id FROM webhook_deliveries
WHERE status <> 'pending' AND updated_at < :before
ORDER BY updated_at LIMIT :limit;

-- name: drop_deliveries
DELETE FROM webhook_deliveries
WHERE id{in_ids};

-- --- rooms (docs/rooms.md) -------------------------------------------------------------

-- name: room
SELECT * FROM rooms
WHERE id = :id;

-- name: lock_room
SELECT * FROM rooms
WHERE id = :id{for_update};

-- name: require_room
-- Shared: dispatches into one room do not wait on each other, a removal waits on them.
SELECT id FROM rooms
WHERE id = :id{for_share};

-- name: delete_room
DELETE FROM rooms
WHERE id = :id AND version = :version;

-- name: room_unfinished
SELECT count(*) AS n FROM tasks
WHERE scope = :id AND status NOT IN {terminal};

-- name: room_agents
SELECT * FROM agents
WHERE room{in_ids}
ORDER BY id;

-- name: room_active
SELECT * FROM tasks
WHERE scope{in_ids} AND status IN {active};

-- name: room_counts
-- Per room asked for: its last task change, one step down `tasks_room_updated`, and its
-- waiting tasks counted in `tasks_scope_status`; never the room's finished tasks, which
-- grow with its age.
SELECT r.value AS scope,
    (SELECT max(t.updated_at) FROM tasks AS t WHERE t.scope = r.value) AS last_at,
    (SELECT count(*) FROM tasks AS t
     WHERE t.scope = r.value AND t.status IN ('pending', 'blocked')) AS pending
FROM {id_rows};

-- name: room_last_finished
-- The last task an agent of the room worked on (attempt > 0) that finished: one that never
-- ran (failed with a parent, cancelled while queued) says nothing of the room's agents.
-- One step down `tasks_room_finished` per room asked for, however many tasks it finished;
-- a room none of whose tasks has finished so answers a NULL status.
SELECT r.value AS scope, (
    SELECT t.status FROM tasks AS t
    WHERE t.scope = r.value AND t.finished_at IS NOT NULL AND t.attempt > 0
        AND t.status IN {terminal}
    ORDER BY t.finished_at DESC, t.id DESC LIMIT 1) AS status
FROM {id_rows};

-- name: room_events
-- The events of the room's tasks, and the room's own (`room.*`, naming it in `data.room`):
-- those whose `room` is set to it when appended, newest first down `events_room`.
SELECT * FROM events
WHERE room = :room
ORDER BY id DESC LIMIT :limit;

-- --- schedules (docs/schedules.md) -------------------------------------------------------

-- name: schedule
SELECT * FROM schedules
WHERE id = :id;

-- name: due_schedules
SELECT * FROM schedules
WHERE next_fire_at IS NOT NULL AND next_fire_at <= :now
ORDER BY next_fire_at LIMIT :limit;

-- name: delete_schedule
DELETE FROM schedules
WHERE id = :id;

-- name: delete_fires
DELETE FROM schedule_fires
WHERE schedule_id = :id;

-- name: schedule_fires
SELECT * FROM schedule_fires
WHERE schedule_id = :id
ORDER BY fire_time DESC LIMIT :limit;
