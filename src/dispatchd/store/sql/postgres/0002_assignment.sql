-- Assignment: agent load kept on the agent row, dependency edges, and the queue index in
-- serving order (priority, then due_at with nulls last, then age).

ALTER TABLE agents ADD COLUMN active INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN last_assigned_at TIMESTAMPTZ;
UPDATE agents SET active = (
    SELECT count(*) FROM tasks t
    WHERE t.assignee = agents.id AND t.status IN ('assigned', 'running', 'waiting_input')
);

CREATE TABLE task_deps (
    parent_id TEXT COLLATE "C" NOT NULL,
    child_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
INSERT INTO task_deps (parent_id, child_id)
    SELECT d.value, t.id FROM tasks t, jsonb_array_elements_text(t.depends_on) d
    ON CONFLICT DO NOTHING;

DROP INDEX tasks_queue;
CREATE INDEX tasks_queue ON tasks (priority_rank DESC, due_at NULLS LAST, created_at, id)
    WHERE status = 'pending';
CREATE INDEX tasks_run_at ON tasks (run_at) WHERE status = 'blocked' AND run_at IS NOT NULL;
CREATE INDEX tasks_assigned ON tasks (assignee, priority_rank DESC, created_at)
    WHERE status = 'assigned';
