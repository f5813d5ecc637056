"""Notifications for humans (SPEC §4): what needs a person now, and a digest of the rest.

A final failure, a final timeout, an escalation and a question (a task waiting for input)
each become an entry of their own at once (the escalation notice of a task with nowhere to
escalate to gives none: it always comes with that task's final failure, which has one).
Completions and progress are gathered into a digest that stays open for a window
(`notifications.batch_window_s`, counted from its first item's event) and then becomes one
entry naming every task in it.

Windows follow the events' own times, not the time they are read, so replaying the log
after a restart or an outage gives the same digests. A digest that reaches `MAX_ITEMS`
tasks closes early and the next item opens a new one, so that no digest grows without
bound and every task is still named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from dispatchd.domain.ids import isoformat, parse_iso
from dispatchd.domain.models import JSON, Event, Task

# Tasks named by one digest (completed and progressing, counted once per list).
MAX_ITEMS = 500
# Longer texts (summaries, progress messages) are cut in a digest; a question, an error
# or an escalation keeps its whole text in its own entry.
DIGEST_TEXT = 500


class Kind(StrEnum):
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ESCALATED = "escalated"
    QUESTION = "question"
    DIGEST = "digest"


# Event types batched into the digest.
DIGESTED = frozenset({"task.completed", "task.progress"})
# Event types that may give an entry of their own.
IMMEDIATE = frozenset(
    {"task.failed", "task.timed_out", "task.escalated", "task.waiting_input", "task.rejected"}
)


@dataclass(frozen=True, slots=True)
class Notification:
    """A finished entry. `id` is given by the store, in the order entries become visible."""

    kind: Kind
    task_id: str | None
    data: dict[str, JSON]
    event_id: int
    created_at: datetime
    id: int | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    # The requester of the task an entry is about, who may read it without the admin
    # token; None on digests, whose items each name their own (`for_requester`).
    requester: str | None = None


def immediate(event: Event, task: Task | None) -> Notification | None:
    """The entry `event` gives at once, if it gives one (None for everything else)."""
    assert event.id is not None
    data = dict(event.data)
    title = task.title if task is not None else None
    name = f"task {title!r}" if title else f"task {event.task_id}"
    error = data.get("error")
    kind: Kind
    if event.type == "task.failed" and data.get("final", True):
        kind, message = Kind.FAILED, f"{name} failed: {error}"
    elif event.type == "task.rejected" and data.get("final"):
        kind, message = Kind.FAILED, f"{name} failed in review: {data.get('feedback')}"
    elif event.type == "task.timed_out" and data.get("final", True):
        kind, message = Kind.TIMED_OUT, f"{name} timed out: {error}"
    elif event.type == "task.escalated" and data.get("to"):
        kind, message = Kind.ESCALATED, f"{name} escalated to {data['to']} after: {error}"
    elif event.type == "task.waiting_input":
        kind = Kind.QUESTION
        question = data.get("question")
        if question is None and task is not None:
            question = task.question
        data["question"] = question
        message = f"{name} asks: {question}"
    else:
        return None
    body: dict[str, JSON] = {
        "message": message,
        "title": title,
        "event_type": event.type,
        "agent_id": event.agent_id,
        "at": isoformat(event.created_at),
        "details": data,
    }
    if kind is Kind.QUESTION:
        body["question"] = data["question"]
    requester = task.requester if task is not None else None
    return Notification(kind, event.task_id, body, event.id, event.created_at, requester=requester)


@dataclass(slots=True)
class Digest:
    """The open digest: completions and progress since `opened_at`, until `closes_at`.

    `completed` and `progress` hold one item per task, in the order tasks first appeared;
    a task's later progress updates its item. `event_id` is the last event added.
    """

    opened_at: datetime
    closes_at: datetime
    event_id: int
    completed: list[dict[str, JSON]] = field(default_factory=list)
    progress: list[dict[str, JSON]] = field(default_factory=list)
    updates: int = 0

    @classmethod
    def open(cls, at: datetime, window: timedelta, event_id: int) -> Digest:
        return cls(opened_at=at, closes_at=at + window, event_id=event_id)

    def copy(self) -> Digest:
        """A copy that `add` can change without touching this one. Completed items are
        only ever appended, progress items are updated in place (their values are
        replaced, never changed inside), so copying the lists and the progress items is
        enough: a deep copy of the whole digest on every batch cost a quarter of the
        server's time on the latency benchmark."""
        return Digest(
            opened_at=self.opened_at,
            closes_at=self.closes_at,
            event_id=self.event_id,
            completed=list(self.completed),
            progress=[dict(item) for item in self.progress],
            updates=self.updates,
        )

    @property
    def size(self) -> int:
        return len(self.completed) + len(self.progress)

    def covers(self, event: Event) -> bool:
        """Whether `event` falls in this digest's window."""
        return event.created_at < self.closes_at

    def has_room_for(self, event: Event) -> bool:
        if self.size < MAX_ITEMS:
            return True
        # A progress update of a task already named adds no item.
        return event.type == "task.progress" and self._progress_of(event.task_id) is not None

    def add(self, event: Event, task: Task | None) -> None:
        assert event.id is not None and event.type in DIGESTED
        title = task.title if task is not None else None
        requester = task.requester if task is not None else None
        data = event.data
        if event.type == "task.completed":
            self.completed.append(
                {
                    "task_id": event.task_id,
                    "title": title,
                    "requester": requester,
                    "agent_id": event.agent_id,
                    "summary": _cut(data.get("summary")),
                    "at": isoformat(event.created_at),
                }
            )
        else:
            item = self._progress_of(event.task_id)
            if item is None:
                item = {
                    "task_id": event.task_id,
                    "title": title,
                    "requester": requester,
                    "updates": 0,
                }
                self.progress.append(item)
            item["agent_id"] = event.agent_id
            if data.get("message") is not None:
                item["message"] = _cut(data.get("message"))
            if data.get("percent") is not None:
                item["percent"] = data.get("percent")
            item.setdefault("message", None)
            item.setdefault("percent", None)
            item["updates"] = int(item.get("updates") or 0) + 1
            item["at"] = isoformat(event.created_at)
            self.updates += 1
        self.event_id = event.id

    def _progress_of(self, task_id: str | None) -> dict[str, JSON] | None:
        for item in self.progress:
            if item["task_id"] == task_id:
                return item
        return None

    def message(self) -> str:
        parts = []
        if self.completed:
            n = len(self.completed)
            parts.append(f"{n} task{'s' if n != 1 else ''} completed")
        if self.progress:
            n, u = len(self.progress), self.updates
            parts.append(
                f"{u} progress update{'s' if u != 1 else ''} on {n} task{'s' if n != 1 else ''}"
            )
        return "; ".join(parts) or "nothing"

    def data(self) -> dict[str, JSON]:
        return {
            "message": self.message(),
            "opened_at": isoformat(self.opened_at),
            "closes_at": isoformat(self.closes_at),
            "counts": {
                "completed": len(self.completed),
                "progress": len(self.progress),
                "progress_updates": self.updates,
            },
            "completed": list(self.completed),
            "progress": list(self.progress),
        }

    @classmethod
    def from_data(
        cls, opened_at: datetime, closes_at: datetime, event_id: int, data: dict[str, Any]
    ) -> Digest:
        counts = data.get("counts") or {}
        return cls(
            opened_at=opened_at,
            closes_at=closes_at,
            event_id=event_id,
            completed=list(data.get("completed") or []),
            progress=list(data.get("progress") or []),
            updates=int(counts.get("progress_updates", 0)),
        )

    def only(self, requester: str) -> Digest | None:
        """This digest as `requester` sees it: the items of its own tasks (None: none)."""
        completed = [i for i in self.completed if i.get("requester") == requester]
        progress = [i for i in self.progress if i.get("requester") == requester]
        if not completed and not progress:
            return None
        updates = sum(int(i.get("updates") or 0) for i in progress)
        return Digest(self.opened_at, self.closes_at, self.event_id, completed, progress, updates)

    def closed(self, at: datetime) -> Notification:
        """The finished entry this digest becomes when it closes at `at`."""
        data = self.data()
        data["closed_at"] = isoformat(at)
        return Notification(Kind.DIGEST, None, data, self.event_id, at)


def _cut(value: Any) -> JSON:
    if isinstance(value, str) and len(value) > DIGEST_TEXT:
        return value[: DIGEST_TEXT - 1] + "…"
    return value


def for_requester(entry: Notification, requester: str) -> Notification | None:
    """What a requester (not the admin) may read of `entry`: an entry about one of its
    tasks as it is, a digest cut to the items of its tasks, nothing else."""
    if entry.kind is not Kind.DIGEST:
        return entry if entry.requester == requester else None
    data = entry.data
    opened, closes = data.get("opened_at"), data.get("closes_at")
    if not isinstance(opened, str) or not isinstance(closes, str):
        return None
    whole = Digest.from_data(parse_iso(opened), parse_iso(closes), entry.event_id, dict(data))
    mine = whole.only(requester)
    if mine is None:
        return None
    cut = mine.data()
    if "closed_at" in data:
        cut["closed_at"] = data["closed_at"]
    return dataclasses.replace(entry, data=cut)
