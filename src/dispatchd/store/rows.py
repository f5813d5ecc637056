"""Turning domain records into rows and back, for either dialect.

A `Codec` says how a dialect stores times, JSON and booleans; everything else is shared.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dispatchd.domain.ids import isoformat, parse_iso
from dispatchd.domain.models import (
    Agent,
    AgentStatus,
    Attempt,
    AttemptOutcome,
    Comment,
    Event,
    Priority,
    ProgressEntry,
    Task,
    TaskStatus,
)
from dispatchd.errors import ValidationFailed

Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Codec:
    dump_time: Callable[[datetime], Any]
    load_time: Callable[[Any], datetime]
    dump_json: Callable[[Any], Any]
    load_json: Callable[[Any], Any]
    dump_bool: Callable[[bool], Any]


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _load_json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


SQLITE = Codec(
    dump_time=isoformat,
    load_time=parse_iso,
    dump_json=_json_text,
    load_json=_load_json_text,
    dump_bool=int,
)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _jsonb(value: Any) -> Any:
    # Imported here so that the embedded (SQLite) setup never loads psycopg.
    from psycopg.types.json import Jsonb

    return Jsonb(value)


def _decoded(value: Any) -> Any:
    return value


# psycopg hands back timestamptz as aware datetimes in the session's time zone and jsonb
# already decoded (a JSON string comes back as a `str`, so it must not be decoded again).
POSTGRES = Codec(
    dump_time=_utc,
    load_time=_utc,
    dump_json=_jsonb,
    load_json=_decoded,
    dump_bool=bool,
)


TASK_TIMES = (
    "run_at",
    "due_at",
    "not_before",
    "lease_expires_at",
    "deadline_at",
    "started_at",
    "finished_at",
    "created_at",
    "updated_at",
)
TASK_JSON = ("capabilities", "context", "result", "depends_on", "labels")
TASK_BOOLS = ("review", "escalated", "model_routed")
TASK_COLUMNS = (
    "id",
    "title",
    "prompt",
    "status",
    "priority",
    "priority_rank",
    "capabilities",
    "requester",
    "assignee",
    "assigned_to",
    "owner",
    "scope",
    "attempt",
    "max_attempts",
    "context",
    "result",
    "summary",
    "error",
    "depends_on",
    "run_at",
    "due_at",
    "timeout_s",
    "review",
    "reviewer",
    "escalate_to",
    "escalated",
    "model",
    "model_routed",
    "labels",
    "idempotency_key",
    "question",
    "progress_message",
    "progress_percent",
    "requeues",
    "review_cycles",
    "dependents",
    "not_before",
    "lease_expires_at",
    "deadline_at",
    "started_at",
    "finished_at",
    "created_at",
    "updated_at",
    "version",
)


def dump_opt_time(codec: Codec, value: datetime | None) -> Any:
    return None if value is None else codec.dump_time(value)


def load_opt_time(codec: Codec, value: Any) -> datetime | None:
    return None if value is None else codec.load_time(value)


def task_params(task: Task, codec: Codec) -> dict[str, Any]:
    params: dict[str, Any] = {
        name: getattr(task, name) for name in TASK_COLUMNS if name != "priority_rank"
    }
    params["status"] = task.status.value
    params["priority"] = task.priority.value
    params["priority_rank"] = task.priority.rank
    params["capabilities"] = list(task.capabilities)
    params["depends_on"] = list(task.depends_on)
    params["labels"] = list(task.labels)
    params["context"] = dict(task.context)
    for name in TASK_JSON:
        value = params[name]
        params[name] = None if name == "result" and value is None else codec.dump_json(value)
    for name in TASK_TIMES:
        params[name] = dump_opt_time(codec, params[name])
    for name in TASK_BOOLS:
        params[name] = codec.dump_bool(params[name])
    return params


def task_from_row(row: Row, codec: Codec) -> Task:
    values = {name: row[name] for name in TASK_COLUMNS if name != "priority_rank"}
    values["status"] = TaskStatus(values["status"])
    values["priority"] = Priority(values["priority"])
    for name in TASK_JSON:
        raw = values[name]
        values[name] = None if raw is None else codec.load_json(raw)
    values["capabilities"] = tuple(values["capabilities"])
    values["depends_on"] = tuple(values["depends_on"])
    values["labels"] = tuple(values["labels"])
    for name in TASK_TIMES:
        values[name] = load_opt_time(codec, values[name])
    for name in TASK_BOOLS:
        values[name] = bool(values[name])
    return Task(**values)


# The columns an agent's own writes set; `active` and `last_assigned_at` are kept by the
# store as tasks are assigned and released.
AGENT_COLUMNS = (
    "id",
    "capabilities",
    "status",
    "owner",
    "max_concurrent",
    "room",
    "wake_url",
    "dispatch_model",
    "description",
    "drained",
    "token_hash",
    "last_heartbeat_at",
    "created_at",
    "updated_at",
    "version",
)


def agent_params(agent: Agent, codec: Codec) -> dict[str, Any]:
    params: dict[str, Any] = {name: getattr(agent, name) for name in AGENT_COLUMNS}
    params["capabilities"] = codec.dump_json(dict(agent.capabilities))
    params["status"] = agent.status.value
    params["drained"] = codec.dump_bool(agent.drained)
    for name in ("last_heartbeat_at", "created_at", "updated_at"):
        params[name] = dump_opt_time(codec, params[name])
    return params


def agent_from_row(row: Row, codec: Codec) -> Agent:
    values = {name: row[name] for name in AGENT_COLUMNS}
    values["capabilities"] = codec.load_json(values["capabilities"])
    values["status"] = AgentStatus(values["status"])
    values["drained"] = bool(values["drained"])
    for name in ("last_heartbeat_at", "created_at", "updated_at"):
        values[name] = load_opt_time(codec, values[name])
    values["active"] = int(row["active"])
    values["last_assigned_at"] = load_opt_time(codec, row["last_assigned_at"])
    return Agent(**values)


def attempt_params(attempt: Attempt, codec: Codec) -> dict[str, Any]:
    return {
        "task_id": attempt.task_id,
        "number": attempt.number,
        "agent_id": attempt.agent_id,
        "assigned_at": codec.dump_time(attempt.assigned_at),
        "started_at": dump_opt_time(codec, attempt.started_at),
        "ended_at": dump_opt_time(codec, attempt.ended_at),
        "outcome": attempt.outcome.value if attempt.outcome else None,
        "error": attempt.error,
    }


def patch_attempt_params(patch: Any, codec: Codec) -> dict[str, Any]:
    """Parameters of a `PatchAttempt` (typed loosely to keep rows.py free of store ops)."""
    return {
        "task_id": patch.task_id,
        "number": patch.number,
        "started_at": dump_opt_time(codec, patch.started_at),
        "ended_at": dump_opt_time(codec, patch.ended_at),
        "outcome": patch.outcome.value if patch.outcome else None,
        "error": patch.error,
    }


def attempt_from_row(row: Row, codec: Codec) -> Attempt:
    return Attempt(
        task_id=row["task_id"],
        number=row["number"],
        agent_id=row["agent_id"],
        assigned_at=codec.load_time(row["assigned_at"]),
        started_at=load_opt_time(codec, row["started_at"]),
        ended_at=load_opt_time(codec, row["ended_at"]),
        outcome=AttemptOutcome(row["outcome"]) if row["outcome"] else None,
        error=row["error"],
    )


def progress_params(entry: ProgressEntry, codec: Codec) -> dict[str, Any]:
    return {
        "task_id": entry.task_id,
        "attempt": entry.attempt,
        "agent_id": entry.agent_id,
        "message": entry.message,
        "percent": entry.percent,
        "created_at": codec.dump_time(entry.created_at),
    }


def progress_from_row(row: Row, codec: Codec) -> ProgressEntry:
    return ProgressEntry(
        task_id=row["task_id"],
        attempt=row["attempt"],
        agent_id=row["agent_id"],
        message=row["message"],
        percent=row["percent"],
        created_at=codec.load_time(row["created_at"]),
    )


def comment_params(comment: Comment, codec: Codec) -> dict[str, Any]:
    return {
        "task_id": comment.task_id,
        "author": comment.author,
        "body": comment.body,
        "created_at": codec.dump_time(comment.created_at),
    }


def comment_from_row(row: Row, codec: Codec) -> Comment:
    return Comment(
        task_id=row["task_id"],
        author=row["author"],
        body=row["body"],
        created_at=codec.load_time(row["created_at"]),
    )


def event_params(event: Event, codec: Codec) -> dict[str, Any]:
    return {
        "type": event.type,
        "task_id": event.task_id,
        "agent_id": event.agent_id,
        "data": codec.dump_json(dict(event.data)),
        "created_at": codec.dump_time(event.created_at),
    }


def event_from_row(row: Row, codec: Codec) -> Event:
    return Event(
        id=int(row["id"]),
        type=row["type"],
        task_id=row["task_id"],
        agent_id=row["agent_id"],
        data=codec.load_json(row["data"]),
        created_at=codec.load_time(row["created_at"]),
    )


# --- cursors ----------------------------------------------------------------------------


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        key = ""
    if not key or "\x00" in key:
        raise ValidationFailed(
            "cursor is not one this server handed out", code="invalid_cursor", cursor=cursor
        )
    return key


def counter_deltas(old: str | None, new: str | None) -> Sequence[tuple[str, int]]:
    if old == new:
        return ()
    deltas: list[tuple[str, int]] = []
    if old is not None:
        deltas.append((old, -1))
    if new is not None:
        deltas.append((new, 1))
    return deltas
