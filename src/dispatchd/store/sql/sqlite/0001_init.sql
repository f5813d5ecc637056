-- dispatchd schema, SQLite dialect. Times are RFC 3339 text in UTC with fixed width,
-- so that text order is time order; JSON is text.

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    title            TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    priority_rank    INTEGER NOT NULL,
    capabilities     TEXT NOT NULL,
    requester        TEXT NOT NULL,
    assignee         TEXT,
    assigned_to      TEXT,
    owner            TEXT,
    scope            TEXT,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    context          TEXT NOT NULL,
    result           TEXT,
    summary          TEXT,
    error            TEXT,
    depends_on       TEXT NOT NULL,
    run_at           TEXT,
    due_at           TEXT,
    timeout_s        INTEGER,
    review           INTEGER NOT NULL,
    reviewer         TEXT,
    escalate_to      TEXT,
    escalated        INTEGER NOT NULL,
    model            TEXT,
    labels           TEXT NOT NULL,
    idempotency_key  TEXT,
    question         TEXT,
    progress_message TEXT,
    progress_percent REAL,
    requeues         INTEGER NOT NULL,
    review_cycles    INTEGER NOT NULL,
    not_before       TEXT,
    lease_expires_at TEXT,
    deadline_at      TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL
) WITHOUT ROWID;

CREATE UNIQUE INDEX tasks_idempotency ON tasks (requester, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The queue: open work in serving order. Partial, so finished tasks cost nothing.
CREATE INDEX tasks_queue ON tasks (priority_rank DESC, due_at, created_at)
    WHERE status = 'pending';
CREATE INDEX tasks_status ON tasks (status, id);
CREATE INDEX tasks_assignee ON tasks (assignee, status) WHERE assignee IS NOT NULL;
CREATE INDEX tasks_requester ON tasks (requester, id);
CREATE INDEX tasks_scope ON tasks (scope, id) WHERE scope IS NOT NULL;
CREATE INDEX tasks_owner ON tasks (owner, id) WHERE owner IS NOT NULL;
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX tasks_not_before ON tasks (not_before) WHERE not_before IS NOT NULL;

CREATE TABLE attempts (
    task_id     TEXT NOT NULL,
    number      INTEGER NOT NULL,
    agent_id    TEXT NOT NULL,
    assigned_at TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    outcome     TEXT,
    error       TEXT,
    PRIMARY KEY (task_id, number)
) WITHOUT ROWID;

CREATE TABLE progress (
    id         INTEGER PRIMARY KEY,
    task_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    agent_id   TEXT NOT NULL,
    message    TEXT,
    percent    REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX progress_task ON progress (task_id, id);

CREATE TABLE comments (
    id         INTEGER PRIMARY KEY,
    task_id    TEXT NOT NULL,
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX comments_task ON comments (task_id, id);

CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    capabilities      TEXT NOT NULL,
    status            TEXT NOT NULL,
    owner             TEXT,
    max_concurrent    INTEGER,
    room              TEXT,
    wake_url          TEXT,
    dispatch_model    TEXT,
    description       TEXT,
    drained           INTEGER NOT NULL,
    token_hash        TEXT UNIQUE,
    last_heartbeat_at TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    version           INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    task_id    TEXT,
    agent_id   TEXT,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX events_task ON events (task_id, id) WHERE task_id IS NOT NULL;

-- Tasks by state, kept in step by every commit: reading it costs nothing however many
-- tasks have finished.
CREATE TABLE task_counts (
    status TEXT PRIMARY KEY,
    n      BIGINT NOT NULL
);
