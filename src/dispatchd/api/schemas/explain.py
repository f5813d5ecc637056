"""Why a task went where it went, or why it waits (`GET /tasks/{id}/explain`)."""

from __future__ import annotations

from pydantic import BaseModel

from dispatchd.domain.models import Priority, TaskStatus


class CandidateOut(BaseModel):
    agent_id: str
    score: float
    capability_match: float
    availability: float
    load: int
    limit: int
    last_assigned_at: str | None


class ExcludedOut(BaseModel):
    agent_id: str
    reason: str
    detail: str


class RouteOut(BaseModel):
    model: str | None
    tier: str | None
    reason: str


class ExplainOut(BaseModel):
    """Every agent considered for the task now: candidates best first, then the excluded."""

    task_id: str
    status: TaskStatus
    assignee: str | None
    capabilities: list[str]
    priority: Priority
    owner: str | None
    owner_filter: bool
    waiting: str | None
    best: str | None
    candidates: list[CandidateOut]
    excluded: list[ExcludedOut]
    model: RouteOut
    at: str
