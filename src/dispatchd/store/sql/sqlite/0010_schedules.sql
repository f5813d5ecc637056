-- Schedules (docs/schedules.md): a cron expression in a time zone and the task template
-- it fires.
--
-- `next_fire_at` is the schedule's deadline, behind an index like every other deadline:
-- the sweeper sleeps until the nearest one. It is NULL while the schedule is paused.
-- `schedule_fires` holds one row per schedule and fire time, inserted in the transaction
-- that creates the fired task: its primary key is what makes a fire time fire once, on
-- any number of replicas.

CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    schedule      TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    task_template TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    misfire       TEXT NOT NULL,
    overlap       TEXT NOT NULL,
    catch_up_s    INTEGER NOT NULL,
    paused        INTEGER NOT NULL,
    next_fire_at  TEXT,
    last_fire_at  TEXT,
    last_task_id  TEXT,
    version       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX schedules_next_fire ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;

CREATE TABLE schedule_fires (
    schedule_id TEXT NOT NULL,
    fire_time   TEXT NOT NULL,
    task_id     TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (schedule_id, fire_time)
) WITHOUT ROWID;

-- The schedule a task was fired by, if any.
ALTER TABLE tasks ADD COLUMN schedule_id TEXT;
