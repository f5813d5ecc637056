-- Whether the task's model was chosen by routing at assignment rather than named by its
-- requester: a routed model is cleared when the task goes back to pending, so the next
-- assignment routes again for its own agent.

ALTER TABLE tasks ADD COLUMN model_routed BOOLEAN NOT NULL DEFAULT FALSE;
