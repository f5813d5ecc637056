"""An agent using every action of the local API: read, comment, progress, ask and wait
for the answer, create a follow-up, try another task, complete with a result.

Usage: worker_agent.py OTHER_TASK_ID FOLLOWUP_CAPABILITY
"""

from __future__ import annotations

import sys

from local_http import TASK_ID, call, ok, report

other, followup_capability = sys.argv[1], sys.argv[2]
task = f"/tasks/{TASK_ID}"

own = ok("GET", "/task")
detail = ok("GET", task)
comment = ok("POST", f"{task}/comments", {"body": "starting on it"})
progress = ok("POST", f"{task}/progress", {"message": "half way", "percent": 50})
asked = ok("POST", f"{task}/question", {"question": "Which colour?", "wait_s": 20}, timeout=40)
followup = ok(
    "POST",
    "/tasks",
    {
        "title": "paint the shed",
        "prompt": "use the colour from the parent",
        "capabilities": [followup_capability],
        "priority": "high",
    },
)
followup_read_status, followup_read = call("GET", f"/tasks/{followup['id']}")
other_read_status, other_read = call("GET", f"/tasks/{other}")
other_comment_status, other_comment = call("POST", f"/tasks/{other}/comments", {"body": "hi"})
followup_comment_status, _ = call("POST", f"/tasks/{followup['id']}/comments", {"body": "hi"})
result = {"colour": asked["answer"], "followup": followup["id"]}
done = ok("POST", f"{task}/complete", {"result": result, "summary": "picked a colour"})
report(
    own=own,
    detail=detail,
    comment=comment,
    progress=progress,
    asked=asked,
    followup=followup,
    followup_read=[followup_read_status, followup_read],
    followup_comment=followup_comment_status,
    other_read=[other_read_status, other_read],
    other_comment=[other_comment_status, other_comment],
    done=done,
)
