"""schemathesis hooks for tests/e2e/test_fuzz.py.

They change only what the OpenAPI document cannot say, each for a stated reason; every
other value goes to the server as schemathesis generated it. `before_call` runs before
every request of every phase (examples, coverage, fuzzing, stateful) and schemathesis
re-checks a changed case against the document, so a value changed here is judged as sent.

* Long polls wait a moment, not a minute: `wait_s` (claims, events, notifications) may hold
  a request for up to 60 s by design; the fuzzer would spend its whole budget waiting. The
  value is still sent, only shortened.
* Cursors are opaque by design: a page cursor is the `next_cursor` of an earlier page, an
  event cursor a position inside the log. The document gives their shape (pattern,
  length), but no pattern can tell a cursor the server handed out from a made-up one of
  the same shape, which the server refuses (422 `invalid_cursor`). So a well-shaped cursor
  the server never handed out is left out of the request; the cursors it did hand out
  (recorded from every answer, and passed along by the stateful phase's links) and the
  malformed ones (which the document refuses too) are sent as generated.
* So are the ids in `depends_on`: a task may only depend on tasks that exist (else 422
  `unknown_dependency`), which is the server's state, not something a document can say. A
  well-shaped id the server never handed out is left out of the list.
* Three rules are beyond what JSON Schema can check: a cron expression of the documented
  shape that never fires (`0 0 31 2 *`: a day that does not exist), an `Idempotency-Key`
  header that disagrees with the body's `idempotency_key` (a header against the body), and
  a task whose reviewer is the agent it is assigned to (one value against another). Such
  cases are not sent.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis

from dispatchd.api.schemas.common import ID_PATTERN
from dispatchd.domain.schedules import CRON_PATTERN, check_cron
from dispatchd.errors import ValidationFailed

QUICK_S = 0.2

# The query parameters that are cursors, by path (see the module's docstring).
PAGE_CURSOR = re.compile(r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$")
EVENT_CURSOR = re.compile(r"^[0-9]{1,19}$")
_CRON = re.compile(CRON_PATTERN)
_ID = re.compile(ID_PATTERN)

# What the server handed out so far: cursors (and event ids, which are event cursors), and
# task ids.
handed_out: set[str] = {"0"}
task_ids: set[str] = set()


def _shortened(part: Any) -> None:
    if isinstance(part, dict) and "wait_s" in part:
        try:
            if float(part["wait_s"]) > QUICK_S:
                part["wait_s"] = QUICK_S
        except (TypeError, ValueError):
            pass  # not a number: the server's 422 is what is being tested


def _made_up(path: str, name: str, value: Any) -> bool:
    """A well-shaped cursor the server did not hand out."""
    if not isinstance(value, str) or value in handed_out:
        return False
    if name == "cursor":
        return bool(value) and PAGE_CURSOR.match(value) is not None
    if name == "after" and path.startswith("/api/v1/events"):
        return EVENT_CURSOR.match(value) is not None
    return False


def _known_dependencies(task: Any) -> None:
    if isinstance(task, dict) and isinstance(task.get("depends_on"), list):
        task["depends_on"] = [
            d
            for d in task["depends_on"]
            if not isinstance(d, str) or d in task_ids or not _ID.match(d) or len(d) > 128
        ]


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    _shortened(case.query)
    _shortened(case.body)
    if isinstance(case.query, dict):
        for name in ("cursor", "after"):
            if _made_up(case.path, name, case.query.get(name)):
                del case.query[name]
    if isinstance(case.body, dict):
        for task in _tasks(case.body):
            _known_dependencies(task)


def _is_task(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("id"), str) and "title" in item


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    try:
        body = response.json()
    except Exception:
        return
    if not isinstance(body, dict):
        return
    for key in ("next_cursor", "cursor"):
        if isinstance(body.get(key), str):
            handed_out.add(body[key])
    for event in body.get("events") or ():
        if isinstance(event, dict) and isinstance(event.get("id"), str):
            handed_out.add(event["id"])
    listed = body.get("items") or body.get("tasks") or ()
    for task in [body, body.get("task"), *(listed if isinstance(listed, list) else ())]:
        if _is_task(task):
            task_ids.add(task["id"])


def _never_fires(value: Any) -> bool:
    if not isinstance(value, str) or not _CRON.match(value):
        return False
    try:
        check_cron(value)
    except ValidationFailed:
        return True
    return False


def _reviews_itself(task: Any) -> bool:
    if not isinstance(task, dict) or task.get("assigned_to") is None:
        return False
    reviewer = task.get("reviewer")
    agent = reviewer.get("agent") if isinstance(reviewer, dict) else reviewer
    return bool(agent == task["assigned_to"])


def _tasks(body: dict[str, Any]) -> list[Any]:
    """The task creation bodies inside a request body (a task, a batch, a template)."""
    tasks = body.get("tasks")
    return [body, body.get("task_template"), *(tasks if isinstance(tasks, list) else ())]


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    body = case.body
    if isinstance(body, dict) and _never_fires(body.get("schedule")):
        return False
    if isinstance(body, dict) and any(_reviews_itself(t) for t in _tasks(body)):
        return False
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(body, dict) and key is not None and body.get("idempotency_key") is not None:
        return bool(key == body["idempotency_key"])
    return True
