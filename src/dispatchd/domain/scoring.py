"""Choosing an agent for a task (SPEC §3): who may take it, how each candidate scores, and
why the others were left out. Pure: the caller supplies the agents with their loads.

score = capability_match * availability_multiplier * priority_weight

* capability_match is the mean of the agent's weights for the task's required tags
  (1.0 when the task requires none);
* availability is ready *1.0, sleeping *0.8, busy (under its limit) *0.5, degraded *0;
* priority_weight is the task's own, the same for every candidate: it makes scores of
  different tasks comparable, not the choice among agents.

Ties go to the agent with the lower load, then to the one idle longest (never assigned
counts as idle since forever), then to the smaller id, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from dispatchd.domain.models import Agent, AgentStatus, Priority, Task

AVAILABILITY: Mapping[AgentStatus, float] = {
    AgentStatus.READY: 1.0,
    AgentStatus.SLEEPING: 0.8,
    AgentStatus.BUSY: 0.5,
    AgentStatus.DEGRADED: 0.0,
    AgentStatus.OFFLINE: 0.0,
}

PRIORITY_WEIGHT: Mapping[Priority, float] = {
    Priority.LOW: 1.0,
    Priority.MEDIUM: 2.0,
    Priority.HIGH: 3.0,
    Priority.CRITICAL: 4.0,
}


class Exclusion(StrEnum):
    """Why an agent is not a candidate for a task, in the order the checks run."""

    NOT_IN_ROOM = "not_in_room"  # the task belongs to a room the agent is not in
    EXCLUDED = "excluded"  # the task is kept from this agent (it did the work under review)
    NOT_NAMED = "not_named"  # the task was assigned to another agent by name
    MISSING_CAPABILITY = "missing_capability"
    OWNER_MISMATCH = "owner_mismatch"
    DRAINING = "draining"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    AT_CAPACITY = "at_capacity"


@dataclass(frozen=True, slots=True)
class Candidate:
    agent_id: str
    score: float
    capability_match: float
    availability: float
    load: int
    limit: int
    last_assigned_at: datetime | None


@dataclass(frozen=True, slots=True)
class Excluded:
    agent_id: str
    reason: Exclusion
    detail: str


@dataclass(frozen=True, slots=True)
class Ranking:
    """Every agent considered for a task: candidates best first, then the excluded."""

    candidates: list[Candidate]
    excluded: list[Excluded]

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def capability_match(agent: Agent, required: Iterable[str]) -> float:
    tags = list(required)
    if not tags:
        return 1.0
    return sum(_weight(agent.capabilities.get(tag)) for tag in tags) / len(tags)


def _weight(value: float | None) -> float:
    # A tag given without a weight (or with a non-positive one) counts as a full match.
    return value if value is not None and value > 0 else 1.0


def limit_of(agent: Agent, default_limit: int) -> int:
    return agent.max_concurrent if agent.max_concurrent is not None else default_limit


def exclusion(
    task: Task, agent: Agent, *, default_limit: int, owner_filter: bool
) -> Excluded | None:
    """Why `agent` may not take `task` now, or None when it may.

    A task of a room (`scope`) goes only to the agents in that room, even one naming its
    agent. A task is never given to its `excluded_agent`. A task named for an agent
    (`assigned_to`) skips the matching (capabilities, owner) but not drain, availability
    or capacity, wherever it is assigned from."""
    if task.scope is not None and agent.room != task.scope:
        where = f"in room {agent.room}" if agent.room else "in no room"
        return Excluded(
            agent.id, Exclusion.NOT_IN_ROOM, f"{where}, the task's room is {task.scope}"
        )
    if task.excluded_agent == agent.id:
        return Excluded(agent.id, Exclusion.EXCLUDED, "kept from this agent: " + _why_kept(task))
    if task.assigned_to is not None:
        if task.assigned_to != agent.id:
            return Excluded(agent.id, Exclusion.NOT_NAMED, f"the task names {task.assigned_to}")
        return unavailable(agent, default_limit)
    missing = [tag for tag in task.capabilities if tag not in agent.capabilities]
    if missing:
        return Excluded(agent.id, Exclusion.MISSING_CAPABILITY, f"lacks {', '.join(missing)}")
    if owner_filter and task.owner is not None and agent.owner != task.owner:
        return Excluded(
            agent.id,
            Exclusion.OWNER_MISMATCH,
            f"owner {agent.owner or 'none'}, the task's is {task.owner}",
        )
    return unavailable(agent, default_limit)


def _why_kept(task: Task) -> str:
    if task.review_of is not None:
        return f"it did the work of {task.review_of} under review"
    return "it is the task's reviewer"


def unavailable(agent: Agent, default_limit: int) -> Excluded | None:
    """Why `agent` may take no task at all now (drained, offline, degraded, full), or None."""
    if agent.drained:
        return Excluded(agent.id, Exclusion.DRAINING, "drained")
    if agent.status is AgentStatus.OFFLINE:
        return Excluded(agent.id, Exclusion.OFFLINE, "offline")
    if agent.status is AgentStatus.DEGRADED:
        return Excluded(agent.id, Exclusion.DEGRADED, "degraded (availability 0)")
    limit = limit_of(agent, default_limit)
    if agent.active >= limit:
        return Excluded(agent.id, Exclusion.AT_CAPACITY, f"holds {agent.active} of {limit}")
    return None


def candidate(task: Task, agent: Agent, *, default_limit: int) -> Candidate:
    """The score of an agent that passed `exclusion`."""
    match = capability_match(agent, task.capabilities)
    availability = AVAILABILITY[agent.status]
    return Candidate(
        agent_id=agent.id,
        score=match * availability * PRIORITY_WEIGHT[task.priority],
        capability_match=match,
        availability=availability,
        load=agent.active,
        limit=limit_of(agent, default_limit),
        last_assigned_at=agent.last_assigned_at,
    )


def rank(task: Task, agents: Iterable[Agent], *, default_limit: int, owner_filter: bool) -> Ranking:
    candidates: list[Candidate] = []
    excluded: list[Excluded] = []
    for agent in agents:
        why = exclusion(task, agent, default_limit=default_limit, owner_filter=owner_filter)
        if why is None:
            candidates.append(candidate(task, agent, default_limit=default_limit))
        else:
            excluded.append(why)
    candidates.sort(key=lambda c: (c.agent_id != task.preferred_agent, _sort_key(c)))
    excluded.sort(key=lambda e: (list(Exclusion).index(e.reason), e.agent_id))
    return Ranking(candidates, excluded)


def best(
    task: Task, agents: Iterable[Agent], *, default_limit: int, owner_filter: bool
) -> Candidate | None:
    """The winner of `rank`, without building the full ranking. The task's
    `preferred_agent`, when it is a candidate, wins whatever its score."""
    top: Candidate | None = None
    top_key: tuple[bool, float, int, float, str] | None = None
    for agent in agents:
        if exclusion(task, agent, default_limit=default_limit, owner_filter=owner_filter):
            continue
        cand = candidate(task, agent, default_limit=default_limit)
        key = (agent.id != task.preferred_agent, *_sort_key(cand))
        if top_key is None or key < top_key:
            top, top_key = cand, key
    return top


def _sort_key(c: Candidate) -> tuple[float, int, float, str]:
    # Never assigned sorts before any time: idle since forever.
    idle = c.last_assigned_at.timestamp() if c.last_assigned_at else float("-inf")
    return (-c.score, c.load, idle, c.agent_id)
