-- Webhooks: event subscriptions and their deliveries (docs/webhooks.md).
--
-- `last_event_id` is how far the dispatcher has read the event log for this webhook: it
-- moves in the same transaction that writes the deliveries for the events it passed, so
-- that a restart resumes there. `consecutive_failures` and `open_until` are the circuit
-- breaker. A delivery keeps the exact body it sends (text, not jsonb, so the bytes stay
-- the same), so retries send the same bytes and retention of the event log never takes a
-- body still owed to a receiver.

CREATE TABLE webhooks (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    url                  TEXT NOT NULL,
    secret               TEXT NOT NULL,
    types                JSONB NOT NULL,
    description          TEXT NOT NULL,
    active               BOOLEAN NOT NULL,
    last_event_id        BIGINT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    open_until           TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    version              INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              TEXT COLLATE "C" PRIMARY KEY,
    webhook_id      TEXT COLLATE "C" NOT NULL,
    event_id        BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    response_status INTEGER,
    error           TEXT,
    history         JSONB NOT NULL,
    next_attempt_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ
);

-- One delivery per webhook and event (two replicas reading the same events write it once);
-- also a webhook's deliveries newest first.
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (webhook_id, event_id);
-- The head of each webhook's queue: its oldest pending delivery.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, event_id)
    WHERE status = 'pending';
-- Finished deliveries by age, for their retention.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at)
    WHERE status <> 'pending';
