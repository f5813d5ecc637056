-- How far each reader of the event log that lives in the server (the NATS publisher, the
-- webhook dispatcher, the notifier) has got, so that a restart resumes there; and, under
-- the name `retention`, the last event id deleted by retention, below which a reader's
-- cursor can no longer be served.

CREATE TABLE cursors (
    name          TEXT PRIMARY KEY,
    last_event_id BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- Finished tasks by when they finished, for retention.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- Dependency edges by child, for deleting a pruned task's edges.
CREATE INDEX task_deps_child ON task_deps (child_id);
