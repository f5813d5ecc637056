-- How many tasks were created depending on this one while it was unfinished: a task with
-- none has no children to unblock or fail when it ends, so its finish skips the lookup.

ALTER TABLE tasks ADD COLUMN dependents INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET dependents = (SELECT count(*) FROM task_deps d WHERE d.parent_id = tasks.id);
