-- A room's history and its last finished task, read without walking the event log or the
-- room's finished tasks (SPEC §8): each event keeps the room it belongs to (its task's
-- scope, or `data.room` for the room's own `room.*` events), written when it is appended;
-- and a room's tasks that ran are indexed by when they finished.

ALTER TABLE events ADD COLUMN room TEXT;

-- The events already kept: a task's scope never changes, so its events' room is its scope.
UPDATE events SET room = (SELECT scope FROM tasks WHERE tasks.id = events.task_id)
WHERE task_id IS NOT NULL;
UPDATE events SET room = json_extract(data, '$.room')
WHERE room IS NULL AND type LIKE 'room.%';

CREATE INDEX events_room ON events (room, id) WHERE room IS NOT NULL;
CREATE INDEX tasks_room_finished ON tasks (scope, finished_at, id)
    WHERE scope IS NOT NULL AND finished_at IS NOT NULL AND attempt > 0;
