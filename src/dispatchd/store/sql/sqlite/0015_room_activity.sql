-- A room's last activity (the last time one of its tasks changed) read one step down an
-- index per room asked for, instead of from every task the room ever had: the rooms list
-- and the dashboard ask it of every room on a page.
CREATE INDEX tasks_room_updated ON tasks (scope, updated_at) WHERE scope IS NOT NULL;
