-- dispatchd schema, PostgreSQL dialect. Ids are COLLATE "C": lists page by id, and byte
-- order keeps that order the same as SQLite's whatever the database's locale.

CREATE TABLE tasks (
    id               TEXT COLLATE "C" PRIMARY KEY,
    title            TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    priority_rank    SMALLINT NOT NULL,
    capabilities     JSONB NOT NULL,
    requester        TEXT NOT NULL,
    assignee         TEXT,
    assigned_to      TEXT,
    owner            TEXT,
    scope            TEXT,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    context          JSONB NOT NULL,
    result           JSONB,
    summary          TEXT,
    error            TEXT,
    depends_on       JSONB NOT NULL,
    run_at           TIMESTAMPTZ,
    due_at           TIMESTAMPTZ,
    timeout_s        INTEGER,
    review           BOOLEAN NOT NULL,
    reviewer         TEXT,
    escalate_to      TEXT,
    escalated        BOOLEAN NOT NULL,
    model            TEXT,
    labels           JSONB NOT NULL,
    idempotency_key  TEXT,
    question         TEXT,
    progress_message TEXT,
    progress_percent DOUBLE PRECISION,
    requeues         INTEGER NOT NULL,
    review_cycles    INTEGER NOT NULL,
    not_before       TIMESTAMPTZ,
    lease_expires_at TIMESTAMPTZ,
    deadline_at      TIMESTAMPTZ,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    version          INTEGER NOT NULL
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (requester, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_queue ON tasks (priority_rank DESC, due_at NULLS LAST, created_at)
    WHERE status = 'pending';
CREATE INDEX tasks_status ON tasks (status, id);
CREATE INDEX tasks_assignee ON tasks (assignee, status) WHERE assignee IS NOT NULL;
CREATE INDEX tasks_requester ON tasks (requester, id);
CREATE INDEX tasks_scope ON tasks (scope, id) WHERE scope IS NOT NULL;
CREATE INDEX tasks_owner ON tasks (owner, id) WHERE owner IS NOT NULL;
CREATE INDEX tasks_capabilities ON tasks USING GIN (capabilities jsonb_path_ops);
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX tasks_not_before ON tasks (not_before) WHERE not_before IS NOT NULL;

CREATE TABLE attempts (
    task_id     TEXT NOT NULL,
    number      INTEGER NOT NULL,
    agent_id    TEXT NOT NULL,
    assigned_at TIMESTAMPTZ NOT NULL,
    started_at  TIMESTAMPTZ,
    ended_at    TIMESTAMPTZ,
    outcome     TEXT,
    error       TEXT,
    PRIMARY KEY (task_id, number)
);

CREATE TABLE progress (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    agent_id   TEXT NOT NULL,
    message    TEXT,
    percent    DOUBLE PRECISION,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX progress_task ON progress (task_id, id);

CREATE TABLE comments (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id    TEXT NOT NULL,
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX comments_task ON comments (task_id, id);

CREATE TABLE agents (
    id                TEXT COLLATE "C" PRIMARY KEY,
    capabilities      JSONB NOT NULL,
    status            TEXT NOT NULL,
    owner             TEXT,
    max_concurrent    INTEGER,
    room              TEXT,
    wake_url          TEXT,
    dispatch_model    TEXT,
    description       TEXT,
    drained           BOOLEAN NOT NULL,
    token_hash        TEXT UNIQUE,
    last_heartbeat_at TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    version           INTEGER NOT NULL
);

-- Event ids are handed out in commit order (writers take an advisory lock before
-- appending), so a reader that has seen id N will never later find a smaller id.
CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type       TEXT NOT NULL,
    task_id    TEXT,
    agent_id   TEXT,
    data       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_task ON events (task_id, id) WHERE task_id IS NOT NULL;

-- Tasks by state, kept in step by every commit: reading it costs nothing however many
-- tasks have finished.
CREATE TABLE task_counts (
    status TEXT PRIMARY KEY,
    n      BIGINT NOT NULL
);
