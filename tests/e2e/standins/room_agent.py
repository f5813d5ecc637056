"""A stand-in for an agent living in a room, run by `dispatchd worker` with the task's
prompt as its last argument. It talks to the worker's local agent API only.

- A prompt about an nginx restart asks "Should I proceed with the nginx restart?" and
  waits for the answer; it restarts (prints what it was told) on a yes, fails otherwise.
- A task with inputs (a follow-up of other tasks) summarizes them.
- A prompt about watching keeps working until it is stopped.
- A prompt about papers reports "3/7 papers processed" and keeps working until the file
  `<STANDIN_DIR>/<task id>.release` appears; then it gives its findings.
- Anything else finishes at once.

Each run writes its process id to `<STANDIN_DIR>/<task id>.pid`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

URL = os.environ["DISPATCH_URL"]
TASK = os.environ["DISPATCH_TASK_ID"]
DIR = Path(os.environ["STANDIN_DIR"])


def local(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{URL}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read() or b"null")


def work_until_released() -> None:
    release = DIR / f"{TASK}.release"
    while not release.exists():
        time.sleep(0.05)


def main() -> int:
    (DIR / f"{TASK}.pid").write_text(str(os.getpid()))
    prompt = sys.argv[-1]
    task = local("GET", "/task")
    inputs = (task.get("context") or {}).get("inputs")
    if "nginx restart" in prompt:
        asked = local(
            "POST",
            f"/tasks/{TASK}/question",
            {"question": "Should I proceed with the nginx restart?", "wait_s": 300},
        )
        answer = asked["answer"]
        if not answer or not answer.lower().startswith("yes"):
            print(f"not restarting nginx (answer: {answer!r})", file=sys.stderr)
            return 1
        print(f"nginx restarted on web-1 (told: {answer})")
        return 0
    if inputs:
        findings = list(inputs.values())
        Path(os.environ["DISPATCH_RESULT_FILE"]).write_text(json.dumps({"summary_of": findings}))
        return 0
    if "watch" in prompt.lower():
        local("POST", f"/tasks/{TASK}/progress", {"message": "watching"})
        work_until_released()
        return 0
    if "papers" in prompt:
        local("POST", f"/tasks/{TASK}/progress", {"message": "3/7 papers processed", "percent": 43})
        work_until_released()
        result = {"papers": 7, "findings": ["reranking helps", "chunk size matters"]}
        Path(os.environ["DISPATCH_RESULT_FILE"]).write_text(json.dumps(result))
        return 0
    print(f"done: {prompt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
