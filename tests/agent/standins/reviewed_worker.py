"""A stand-in worker whose work is reviewed, for `dispatchd worker -- python
reviewed_worker.py --feedback {feedback}`: the runner fills `{feedback}` with the last
rejection's feedback ("" the first time).

The first time it answers a naive result; given feedback, it answers a revised result that
says it addressed it (`sorted, and empty lists handled (feedback: …)`).

Environment:
- STANDIN_WORKER_RECORD: a file to append one JSON line per call (the feedback received
  and the task id).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    args = sys.argv[1:]
    feedback = args[args.index("--feedback") + 1] if "--feedback" in args else ""
    record = os.environ.get("STANDIN_WORKER_RECORD")
    if record:
        with open(record, "a", encoding="utf-8") as f:
            entry = {"feedback": feedback, "task_id": os.environ.get("DISPATCH_TASK_ID")}
            f.write(json.dumps(entry) + "\n")
    if feedback:
        print(f"sorted, and empty lists handled (feedback: {feedback})")
    else:
        print("sorted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
