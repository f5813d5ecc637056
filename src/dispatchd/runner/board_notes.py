"""The comments the board sync writes on cards, and how it reads them back.

They are the sync's only state: `dispatchd: created task <id>` ties a card to its task
(so a restarted sync finds its tasks on the board), and the write-back comments
(`dispatchd: task <id> completed|failed|timed out|was cancelled`) tell a card that was
finished, and then put back in a ready queue by a person, from one still being imported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from dispatchd.client.models import Task, TaskStatus

PREFIX = "dispatchd: "
MAX_COMMENT = 4000
_STARTED = re.compile(r"^dispatchd: (?:created|retrying) task (\S+)")
_ENDED = re.compile(r"^dispatchd: task (\S+) (?:completed|failed|timed out|was cancelled)")


def created(task_id: str, capabilities: Sequence[str]) -> str:
    return f"{PREFIX}created task {task_id} (capabilities: {', '.join(capabilities) or 'none'})"


def already_completed(task_id: str) -> str:
    return f"{PREFIX}created task {task_id} (already completed)"


def retrying(task_id: str) -> str:
    return f"{PREFIX}retrying task {task_id}"


def refused(reason: str) -> str:
    return trim(f"{PREFIX}could not create a task from this card: {reason}", MAX_COMMENT)


def outcome(task: Task, cancel_reason: str | None = None) -> str:
    """The write-back comment of a task that is over: its result, error or reason."""
    head = f"{PREFIX}task {task.id}"
    if task.status is TaskStatus.COMPLETED:
        parts = [f"{head} completed"]
        summary = (task.summary or "").strip()
        if summary:
            parts.append(summary)
        result = result_text(task.result)
        if result and result != summary:
            parts.append(result)
        text = "\n\n".join(parts)
    elif task.status is TaskStatus.CANCELLED:
        text = f"{head} was cancelled" + (f": {cancel_reason}" if cancel_reason else "")
    else:
        verb = "timed out" if task.status is TaskStatus.TIMED_OUT else "failed"
        text = f"{head} {verb}: {task.error or 'no error given'}"
    return trim(text, MAX_COMMENT, f"; full text on task {task.id}")


def result_text(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, str):
        return result.strip()
    return json.dumps(result, indent=2, ensure_ascii=False, default=str)


def trim(text: str, limit: int, note: str = "") -> str:
    if len(text) <= limit:
        return text
    tail = f"… (trimmed{note})"
    return text[: limit - len(tail)] + tail


def last_note(comments: Sequence[str]) -> str | None:
    """The sync's latest comment."""
    return next((c for c in reversed(comments) if c.startswith(PREFIX)), None)


def started_task(comments: Sequence[str]) -> str | None:
    """The task the sync made for a card, from its latest `created task` comment."""
    for comment in reversed(comments):
        match = _STARTED.match(comment)
        if match:
            return match.group(1)
    return None


def ended_task(comments: Sequence[str]) -> str | None:
    """The task whose end the sync's latest comment reports, if that is what it says."""
    note = last_note(comments)
    match = _ENDED.match(note) if note else None
    return match.group(1) if match else None
