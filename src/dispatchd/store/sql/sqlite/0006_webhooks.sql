-- Webhooks: event subscriptions and their deliveries (docs/webhooks.md).
--
-- `last_event_id` is how far the dispatcher has read the event log for this webhook: it
-- moves in the same transaction that writes the deliveries for the events it passed, so
-- that a restart resumes there. `consecutive_failures` and `open_until` are the circuit
-- breaker. A delivery keeps the exact body it sends, so retries send the same bytes and
-- retention of the event log never takes a body still owed to a receiver.

CREATE TABLE webhooks (
    id                   TEXT PRIMARY KEY,
    url                  TEXT NOT NULL,
    secret               TEXT NOT NULL,
    types                TEXT NOT NULL,
    description          TEXT NOT NULL,
    active               INTEGER NOT NULL,
    last_event_id        INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    open_until           TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    version              INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL,
    event_id        INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    response_status INTEGER,
    error           TEXT,
    history         TEXT NOT NULL,
    next_attempt_at TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    delivered_at    TEXT
) WITHOUT ROWID;

-- One delivery per webhook and event (two replicas reading the same events write it once);
-- also a webhook's deliveries newest first.
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (webhook_id, event_id);
-- The head of each webhook's queue: its oldest pending delivery.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, event_id)
    WHERE status = 'pending';
-- Finished deliveries by age, for their retention.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at)
    WHERE status <> 'pending';
