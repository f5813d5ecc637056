"""An agent that gives up: it reports a final failure through the local API."""

from __future__ import annotations

from local_http import TASK_ID, ok, report

failed = ok(
    "POST", f"/tasks/{TASK_ID}/fail", {"error": "the input file is corrupt", "retryable": False}
)
report(failed=failed)
