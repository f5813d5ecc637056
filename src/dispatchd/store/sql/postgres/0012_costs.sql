-- Costs (docs/costs.md): what a task cost over its attempts and in its current one, its
-- budget and the code of its error; each attempt's cost; and the ledger of what each
-- requester's tasks cost per UTC day and agent, which daily budgets and stats read.

ALTER TABLE tasks ADD COLUMN cost JSONB NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN attempt_cost JSONB NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN max_cost_usd DOUBLE PRECISION;
ALTER TABLE tasks ADD COLUMN error_code TEXT;
ALTER TABLE attempts ADD COLUMN cost JSONB NOT NULL DEFAULT '{}';

CREATE TABLE cost_totals (
    requester     TEXT NOT NULL,
    day           TEXT NOT NULL,
    agent         TEXT NOT NULL,
    usd           DOUBLE PRECISION NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    PRIMARY KEY (requester, day, agent)
);
CREATE INDEX cost_totals_day ON cost_totals (day);
