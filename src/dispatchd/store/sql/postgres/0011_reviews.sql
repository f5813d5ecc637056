-- The review gate (docs/review.md). A review is a task of its own: `kind` 'review' and
-- `review_of` the task whose work it reviews. `reviewer_kind` says whether `reviewer`
-- names an agent or a capability. `excluded_agent` is never given the task (the agent
-- that did the work under review; a task's named reviewer); `preferred_agent` is offered
-- it first (the agent whose work was rejected).

ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'task';
ALTER TABLE tasks ADD COLUMN review_of TEXT COLLATE "C";
ALTER TABLE tasks ADD COLUMN reviewer_kind TEXT;
ALTER TABLE tasks ADD COLUMN excluded_agent TEXT;
ALTER TABLE tasks ADD COLUMN preferred_agent TEXT;

-- A task's open review tasks are found by it (few rows: its reviews).
CREATE INDEX tasks_review_of ON tasks (review_of) WHERE review_of IS NOT NULL;

-- Every verdict on a task's work, in order: the cycle (the nth review), who gave it, the
-- verdict and feedback, and the review task that carried it (NULL: posted on the task).
CREATE TABLE task_reviews (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id        TEXT NOT NULL,
    cycle          INTEGER NOT NULL,
    reviewer       TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    feedback       TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    review_task_id TEXT
);
CREATE INDEX task_reviews_task ON task_reviews (task_id, id);
