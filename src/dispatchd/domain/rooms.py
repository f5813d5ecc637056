"""Rooms (SPEC §1, §4 Rooms): a workspace agents live in, and what it is doing now.

A room is stored as its id, channel name and workspace path only; everything else is
derived from the agents whose `room` field names it and the tasks whose `scope` does.
Pure: the store supplies the rows, `status_of` says what they mean.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from dispatchd.domain.models import Agent, AgentStatus, Event, Task, TaskStatus

# A room id is a slug: lower-case letters, digits, '-', '_' and '.', starting with a
# letter or digit (it appears in paths and as the `scope` of tasks).
SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_SLUG = re.compile(SLUG_PATTERN)
# The longest title a task may have (the API's limit on `title`).
TITLE_MAX = 500
# Work that keeps a room from being removed: everything not finished.
UNFINISHED = frozenset(
    {
        TaskStatus.PENDING,
        TaskStatus.BLOCKED,
        TaskStatus.ASSIGNED,
        TaskStatus.RUNNING,
        TaskStatus.WAITING_INPUT,
        TaskStatus.REVIEW,
    }
)
# What an interrupt cancels: the work in an agent's hands.
INTERRUPTIBLE = frozenset({TaskStatus.ASSIGNED, TaskStatus.RUNNING, TaskStatus.WAITING_INPUT})
# Tasks that count as queued for the room (`pending`).
QUEUED = frozenset({TaskStatus.PENDING, TaskStatus.BLOCKED})
# An agent that can be said to be there.
_LIVE = frozenset({AgentStatus.READY, AgentStatus.SLEEPING, AgentStatus.BUSY})
_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT})


def is_slug(value: str) -> bool:
    return bool(_SLUG.match(value))


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    workspace: str | None = None
    version: int = 1

    def evolve(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


class RoomAgentStatus(StrEnum):
    IDLE = "idle"
    WORKING = "working"
    WAITING_INPUT = "waiting_input"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class RoomActivity:
    """The rows a room's status is derived from, as the store reads them for many rooms
    at once: its agents, the tasks in its agents' hands, how many wait, when it last moved,
    and the status of the last task its agents worked on that finished."""

    agents: Sequence[Agent] = ()
    active: Sequence[Task] = ()
    pending: int = 0
    last_task_at: datetime | None = None
    last_finished: TaskStatus | None = None


@dataclass(frozen=True, slots=True)
class RoomStatus:
    room: Room
    agent_status: RoomAgentStatus
    agents: tuple[str, ...]
    current_task: Task | None
    last_activity_at: datetime
    pending: int
    # Why the status is `error`, for people (None otherwise).
    reason: str | None = None


_CURRENT_ORDER = {
    TaskStatus.WAITING_INPUT: 0,
    TaskStatus.RUNNING: 1,
    TaskStatus.ASSIGNED: 2,
}


def status_of(room: Room, activity: RoomActivity) -> RoomStatus:
    """What the room is doing: waiting for an answer beats working, which beats error
    (no live agent, or the last finished task failed or timed out), which beats idle."""
    active = sorted(
        (t for t in activity.active if t.status in _CURRENT_ORDER),
        key=lambda t: (_CURRENT_ORDER[t.status], -t.updated_at.timestamp(), t.id),
    )
    current = active[0] if active else None
    live = [a for a in activity.agents if a.status in _LIVE]
    reason = None
    if current is not None and current.status is TaskStatus.WAITING_INPUT:
        state = RoomAgentStatus.WAITING_INPUT
    elif current is not None:
        state = RoomAgentStatus.WORKING
    elif not live:
        state = RoomAgentStatus.ERROR
        reason = "no live agent in the room" if activity.agents else "no agent in the room"
    elif activity.last_finished in _FAILED:
        state = RoomAgentStatus.ERROR
        reason = f"its last task {activity.last_finished}"
    else:
        state = RoomAgentStatus.IDLE
    times = [room.updated_at, *(t for t in (activity.last_task_at,) if t is not None)]
    return RoomStatus(
        room=room,
        agent_status=state,
        agents=tuple(sorted(a.id for a in activity.agents)),
        current_task=current,
        last_activity_at=max(times),
        pending=activity.pending,
        reason=reason,
    )


def default_title(prompt: str) -> str:
    """A dispatched task's title when none is given: the prompt's first non-empty line,
    trimmed, cut to the title's limit."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    return first[:TITLE_MAX]


@dataclass(frozen=True, slots=True)
class History:
    """A room's recent tasks and events, newest first."""

    tasks: list[Task] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
