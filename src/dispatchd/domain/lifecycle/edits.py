"""Edits that keep a task's state: its context (a JSON merge patch) and its priority."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dispatchd.domain.lifecycle.change import Change, new_event
from dispatchd.domain.lifecycle.table import Action, check
from dispatchd.domain.models import Priority, Task
from dispatchd.errors import InvalidTransition


def update(
    task: Task,
    now: datetime,
    *,
    by: str,
    context_patch: Mapping[str, Any] | None = None,
    priority: Priority | None = None,
) -> Change:
    changes: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if context_patch is not None:
        changes["context"] = merge_patch(task.context, context_patch)
        data["context"] = sorted(context_patch)
    if priority is not None:
        if task.status.terminal:
            raise InvalidTransition(task.id, task.status, "change priority")
        changes["priority"] = priority
        data["priority"] = priority.value
    check(task, Action.UPDATE)
    new = task.evolve(updated_at=now, version=task.version + 1, **changes)
    return Change(new, new_event("task.updated", new, now, by, **data))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null removes a key."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
