-- Notifications for humans (docs/events.md#notifications), written by the notifier as it
-- reads the event log under the cursor `notifications`.
--
-- `notifications` holds the finished entries: failures, timeouts, escalations and questions
-- (one per event) and closed digests of completions and progress. Entries are only ever
-- added, in the order they become visible, so a reader paging by id misses none; only the
-- acknowledgement columns change later. `event_id` is the last event an entry covers.

CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    task_id         TEXT,
    data            TEXT NOT NULL,
    event_id        INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT
);

-- The entries nobody has acknowledged yet, in order.
CREATE INDEX notifications_unacknowledged ON notifications (id) WHERE acknowledged_at IS NULL;

-- The digest still collecting completions and progress (at most one row, named `open`).
-- It is written in the same transaction as the notifier's cursor, so a restart resumes it
-- with exactly the items it had; when its window ends it moves to `notifications`.

CREATE TABLE notification_digest (
    name       TEXT PRIMARY KEY,
    opened_at  TEXT NOT NULL,
    closes_at  TEXT NOT NULL,
    event_id   INTEGER NOT NULL,
    data       TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
