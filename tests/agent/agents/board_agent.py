"""An agent written for a board of queues (seed 004's HTTP API), unchanged: it knows
`/tasks/{id}`, comments as `{"comment"}`, `PATCH` of board fields, a new task in a
queue, and moving its card between queues until it is done.

Usage: board_agent.py QUEUE_FOR_NEW_CARD
"""

from __future__ import annotations

import os
import sys

from local_http import call, report

base = os.environ["DISPATCH_URL"]
task_id = os.environ["DISPATCH_TASK_ID"]
card = f"/tasks/{task_id}"
queue = sys.argv[1]


def step(method: str, path: str, body: object = None) -> object:
    status, answer = call(method, path, body)
    if status >= 300:
        raise SystemExit(f"{method} {base}{path} answered {status}: {answer}")
    return answer


read = step("GET", card)
moved_in_progress = step("POST", f"{card}/move", {"target_queue": "In Progress"})
patched = step("PATCH", card, {"labels": ["triaged"], "assignees": ["bot"]})
commented = step("POST", f"{card}/comments", {"comment": "Looked into it, writing a fix."})
moved_aside = step("POST", f"{card}/move", {"target_queue": "Project.Board.Needs Review"})
created = step(
    "POST", "/tasks", {"queue_name": queue, "name": "Write tests", "description": "for the fix"}
)
reread = step("GET", card)
moved_done = step("POST", f"{card}/move", {"target_queue": "Done"})
report(
    read=read,
    moved_in_progress=moved_in_progress,
    patched=patched,
    commented=commented,
    moved_aside=moved_aside,
    created=created,
    reread=reread,
    moved_done=moved_done,
)
