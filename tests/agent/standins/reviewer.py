"""A stand-in reviewer in the Aegis convention (docs/review.md), for
`dispatchd worker --review -- python reviewer.py`.

It reads the review prompt (its last argument) and answers on standard output:
`VERDICT: APPROVED` when the work under review says `empty lists handled`, otherwise
`VERDICT: REJECTED` with `NOTES: handle empty lists`; so it rejects a first naive result
once and approves the revised one.

Environment:
- STANDIN_REVIEWER_RECORD: a file to append one JSON line per call (the prompt and the
  task id it reviewed for).
- STANDIN_REVIEWER_MODE: `aegis` (default); `silent` (an answer with no verdict line).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    prompt = sys.argv[-1] if len(sys.argv) > 1 else ""
    record = os.environ.get("STANDIN_REVIEWER_RECORD")
    if record:
        with open(record, "a", encoding="utf-8") as f:
            entry = {"prompt": prompt, "task_id": os.environ.get("DISPATCH_TASK_ID")}
            f.write(json.dumps(entry) + "\n")
    if os.environ.get("STANDIN_REVIEWER_MODE") == "silent":
        print("Looks fine to me, I suppose.")
        return 0
    print("Reviewing the result against the task.")
    if "empty lists handled" in prompt:
        print("VERDICT: APPROVED")
        print("NOTES: empty lists are handled now")
    else:
        print("**VERDICT: REJECTED**")
        print("NOTES: handle empty lists")
        print("and keep the order stable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
