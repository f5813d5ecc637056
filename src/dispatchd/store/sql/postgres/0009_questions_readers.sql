-- Questions wait for people: a task waiting for input keeps the run time it had left
-- (`run_left_ms`) instead of a running deadline and lease, and may carry its own limit on
-- how long a question waits for its answer (`input_timeout_s`).

ALTER TABLE tasks ADD COLUMN input_timeout_s INTEGER;
ALTER TABLE tasks ADD COLUMN run_left_ms BIGINT;

-- Tasks already waiting when this runs held their run deadline and lease: both are set
-- aside (with no run time kept, the answer gives them their whole timeout again).
UPDATE tasks SET deadline_at = NULL, lease_expires_at = NULL
WHERE status = 'waiting_input';

-- Readers for everyone: a notification names the requester of its task, who may read it
-- without the admin token (docs/events.md#notifications). Digests name none (each of
-- their items names its own), and are found by their kind.

ALTER TABLE notifications ADD COLUMN requester TEXT;
CREATE INDEX notifications_requester ON notifications (requester, id)
    WHERE requester IS NOT NULL;
CREATE INDEX notifications_digests ON notifications (id) WHERE kind = 'digest';
