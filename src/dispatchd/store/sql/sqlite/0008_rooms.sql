-- Rooms: the workspaces agents live in (docs/rooms.md). Only what a room is gets stored;
-- its status is derived from its agents (`agents.room`) and tasks (`tasks.scope`).

CREATE TABLE rooms (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    workspace  TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version    INTEGER NOT NULL
) WITHOUT ROWID;

-- A room's agents.
CREATE INDEX agents_room ON agents (room) WHERE room IS NOT NULL;
-- A room's work in hands and its queue, without reading its history.
CREATE INDEX tasks_scope_status ON tasks (scope, status) WHERE scope IS NOT NULL;
