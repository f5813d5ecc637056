"""What the MCP tools answer: a structured result (these models, published as each tool's
output schema) and one short line a person or an LLM reads at a glance.

The views are built from the SDK's answers read as plain JSON (`model_dump`), so that they
name only the fields they show and keep working when the API adds fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

# A result or a long text is cut to this many characters in a summary line (never in the
# structured result).
LINE_TEXT = 120


class TaskView(BaseModel):
    """A task as the control plane sees it."""

    id: str
    title: str
    status: str
    room: str | None = Field(None, description="the room (scope) the task belongs to")
    priority: str
    assignee: str | None = None
    requester: str | None = None
    progress: dict[str, Any] | None = Field(
        None, description="the last progress the agent reported: message and percent"
    )
    question: str | None = Field(None, description="what the agent asks, while waiting_input")
    result: Any = None
    summary: str | None = None
    error: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    attempt: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None


class CurrentTask(BaseModel):
    id: str
    title: str
    status: str
    progress: dict[str, Any] | None = None
    question: str | None = None


class RoomView(BaseModel):
    """A room: its workspace and what its agents are doing."""

    id: str
    name: str | None = None
    workspace: str | None = None
    agent_status: str = Field(description="idle, working, waiting_input or error")
    status_reason: str | None = Field(None, description="why the status is error")
    agents: list[str] = Field(default_factory=list)
    current_task: CurrentTask | None = None
    last_activity_at: str | None = None
    pending: int = Field(0, description="tasks queued for the room")
    line: str = Field(description="the room in one line")


class RoomList(BaseModel):
    rooms: list[RoomView]
    summary: str


class RoomStatus(BaseModel):
    room: RoomView
    summary: str


class HistoryEntry(BaseModel):
    """One line of a room's history: a task with its outcome, or an event of the room."""

    kind: Literal["task", "event"]
    at: str | None = None
    data: dict[str, Any]
    line: str


class RoomHistory(BaseModel):
    room: str
    entries: list[HistoryEntry] = Field(description="tasks and events together, newest first")
    summary: str


class TaskAnswer(BaseModel):
    task: TaskView
    summary: str


class TaskCheck(BaseModel):
    task: TaskView
    changed: bool = Field(description="whether the task's status changed during the wait")
    previous_status: str
    waited_s: float
    summary: str


class TaskListView(BaseModel):
    tasks: list[TaskView]
    next_cursor: str | None = None
    summary: str


class Interrupted(BaseModel):
    room: str
    cancelled: list[str]
    summary: str


class NotificationView(BaseModel):
    id: str
    kind: str = Field(description="failed, timed_out, escalated, question or digest")
    task_id: str | None = None
    message: str
    data: dict[str, Any]
    created_at: str


class Notifications(BaseModel):
    notifications: list[NotificationView]
    open_digest: dict[str, Any] | None = Field(
        None, description="completions and progress still being gathered into the next digest"
    )
    next_cursor: str = Field(description="pass as `after` to read on from here")
    summary: str


def cut(text: Any, limit: int = LINE_TEXT) -> str:
    """`text` on one line, at most `limit` characters; a result that is not a string as
    JSON."""
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False, default=str)
    value = " ".join(text.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def task_view(data: Mapping[str, Any]) -> TaskView:
    return TaskView(
        id=str(data["id"]),
        title=str(data.get("title") or ""),
        status=str(data.get("status")),
        room=data.get("scope"),
        priority=str(data.get("priority") or "medium"),
        assignee=data.get("assignee"),
        requester=data.get("requester"),
        progress=data.get("progress"),
        question=data.get("question"),
        result=data.get("result"),
        summary=data.get("summary"),
        error=data.get("error"),
        depends_on=list(data.get("depends_on") or []),
        attempt=int(data.get("attempt") or 0),
        created_at=data.get("created_at"),
        updated_at=data.get("updated_at"),
        finished_at=data.get("finished_at"),
    )


def progress_text(progress: Mapping[str, Any] | None) -> str | None:
    """`3/7 papers processed`, `40%`, or both, from a task's last progress."""
    if not progress:
        return None
    message, percent = progress.get("message"), progress.get("percent")
    parts = []
    if message:
        parts.append(cut(message, 80))
    if percent is not None:
        parts.append(f"{float(percent):g}%")
    return ", ".join(parts) or None


def task_line(task: TaskView, *, room: bool = True) -> str:
    """`'Check disk usage' (t_1): running in infra (3/7)`; `room=False` leaves the room
    out (a line that names it already)."""
    line = f"'{cut(task.title, 60)}' ({task.id}): {task.status.replace('_', ' ')}"
    if task.room and room:
        line += f" in {task.room}"
    if task.status == "waiting_input" and task.question:
        return f"{line}, asking: {cut(task.question)}"
    progress = progress_text(task.progress)
    if progress and task.status in ("running", "assigned"):
        line += f" ({progress})"
    if task.status == "completed" and (task.summary or task.result is not None):
        line += f": {cut(task.summary or task.result)}"
    if task.status in ("failed", "timed_out", "cancelled") and task.error:
        line += f": {cut(task.error)}"
    if task.status == "blocked" and task.depends_on:
        line += f" until {', '.join(task.depends_on)} complete"
    return line


def room_view(data: Mapping[str, Any], now: datetime | None = None) -> RoomView:
    current = data.get("current_task")
    pending = data.get("pending")
    if isinstance(pending, list):
        pending = len(pending)
    view = RoomView(
        id=str(data["id"]),
        name=data.get("name"),
        workspace=data.get("workspace"),
        agent_status=str(data.get("agent_status") or "idle"),
        status_reason=data.get("status_reason"),
        agents=[str(a) for a in data.get("agents") or []],
        current_task=CurrentTask.model_validate(current) if current else None,
        last_activity_at=data.get("last_activity_at"),
        pending=int(pending or 0),
        line="",
    )
    view.line = room_line(view, now)
    return view


def room_line(room: RoomView, now: datetime | None = None) -> str:
    """`infra: working on 'Check disk usage' (3/7)`, `gorp-rs: idle, last activity 2h ago`."""
    task = room.current_task
    if room.agent_status == "waiting_input" and task is not None:
        text = f"waiting for an answer on '{cut(task.title, 60)}'"
        if task.question:
            text += f": {cut(task.question)}"
    elif room.agent_status == "working" and task is not None:
        text = f"working on '{cut(task.title, 60)}'"
        progress = progress_text(task.progress)
        if progress:
            text += f" ({progress})"
    elif room.agent_status == "error":
        text = f"error: {cut(room.status_reason or 'no live agent, or its last task failed')}"
    else:
        text = room.agent_status.replace("_", " ")
    if room.last_activity_at and room.agent_status in ("idle", "error"):
        text += f", last activity {ago(room.last_activity_at, now)}"
    if room.pending:
        text += f", {room.pending} queued"
    return f"{room.id}: {text}"


def ago(when: str, now: datetime | None = None) -> str:
    """`2h ago` for an RFC 3339 time; the text as is when it is not one."""
    try:
        then = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def rooms_summary(rooms: Iterable[RoomView]) -> str:
    lines = [r.line for r in rooms]
    return "\n".join(lines) if lines else "no rooms"


def history(room: str, data: Mapping[str, Any], limit: int) -> RoomHistory:
    """The room's tasks (with outcomes) and events, merged newest first."""
    entries = [_task_entry(t) for t in data.get("tasks") or []]
    entries += [_event_entry(e) for e in data.get("events") or []]
    entries.sort(key=lambda e: e.at or "", reverse=True)
    entries = entries[:limit]
    summary = "\n".join(f"{e.at}: {e.line}" for e in entries) or f"{room}: no history yet"
    return RoomHistory(room=room, entries=entries, summary=summary)


def _task_entry(data: Mapping[str, Any]) -> HistoryEntry:
    task = task_view(data)
    at = task.finished_at or task.updated_at or task.created_at
    return HistoryEntry(kind="task", at=at, data=dict(data), line=task_line(task))


def _event_entry(data: Mapping[str, Any]) -> HistoryEntry:
    text = str(data.get("type"))
    if data.get("task_id"):
        text += f" {data['task_id']}"
    details = data.get("data")
    if isinstance(details, Mapping):
        for key in ("reason", "question", "answer", "error", "message"):
            if details.get(key):
                text += f": {cut(details[key])}"
                break
    return HistoryEntry(kind="event", at=data.get("created_at"), data=dict(data), line=text)


def notification_view(data: Mapping[str, Any]) -> NotificationView:
    body = data.get("data") or {}
    return NotificationView(
        id=str(data["id"]),
        kind=str(data["kind"]),
        task_id=data.get("task_id"),
        message=str(body.get("message") or data["kind"]),
        data=dict(body),
        created_at=str(data.get("created_at")),
    )


def notifications_summary(
    items: list[NotificationView], open_digest: Mapping[str, Any] | None
) -> str:
    lines = []
    for n in items:
        if n.kind == "digest":
            done = [
                f"'{cut(c.get('title') or c.get('task_id'), 60)}'"
                for c in n.data.get("completed") or []
            ]
            text = f"digest: {n.message}"
            if done:
                text += f" ({', '.join(done)})"
            lines.append(text)
        else:
            lines.append(f"{n.kind}: {cut(n.message, 200)}")
    if open_digest:
        digest = open_digest.get("data") or {}
        lines.append(
            f"gathering until {open_digest.get('closes_at')}: {digest.get('message', 'nothing')}"
        )
    return "\n".join(lines) if lines else "no news"
