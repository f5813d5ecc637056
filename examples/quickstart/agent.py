"""A small agent: what a CLI coding agent would be, in twenty lines of standard library.

The runner starts it once per task with DISPATCH_URL (its local agent API, scoped to the
task), DISPATCH_TASK_ID and DISPATCH_RESULT_FILE in the environment, and the prompt as its
last argument. It reads its task, says what it is doing, and writes its result.
"""

import json
import os
import sys
import urllib.request

api, task_id = os.environ["DISPATCH_URL"], os.environ["DISPATCH_TASK_ID"]
prompt = sys.argv[-1]


def call(method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{api}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as response:  # noqa: S310
        return json.load(response)


task = call("GET", f"/tasks/{task_id}")
print(f"working on {task['title']!r}", flush=True)  # standard output becomes progress
words = prompt.split()
call("POST", f"/tasks/{task_id}/comments", {"comment": f"counted {len(words)} words"})
result = {"words": len(words), "longest": max(words, key=len) if words else None}
with open(os.environ["DISPATCH_RESULT_FILE"], "w") as out:
    json.dump(result, out)  # exit 0 with a result file: the task completes with it
