"""Why a task went where it went, or why it waits: every agent, scored or excluded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dispatchd.domain import routing, scoring
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Task, TaskStatus
from dispatchd.domain.routing import Route
from dispatchd.domain.scoring import Ranking
from dispatchd.engine.directory import Directory
from dispatchd.engine.rules import Rules
from dispatchd.errors import NotFound
from dispatchd.store.base import Store


@dataclass(frozen=True, slots=True)
class Explanation:
    task: Task
    ranking: Ranking
    route: Route
    owner_filter: bool
    waiting: str | None  # why a pending or blocked task is not assigned yet
    at: datetime


async def explain(store: Store, directory: Directory, rules: Rules, task_id: str) -> Explanation:
    task = await store.get_task(task_id)
    if task is None:
        raise NotFound(f"no task {task_id}", task_id=task_id)
    agents = await directory.overlay(await store.all_agents())
    ranking = scoring.rank(
        task, agents, default_limit=rules.default_limit, owner_filter=rules.owner_filter
    )
    best = ranking.best
    agent = next((a for a in agents if best and a.id == best.agent_id), None)
    if task.assignee is not None:
        agent = next((a for a in agents if a.id == task.assignee), agent)
    chosen = routing.route(task, agent, rules.tiers, rules.default_model)
    now = utcnow()
    return Explanation(
        task=task,
        ranking=ranking,
        route=chosen,
        owner_filter=rules.owner_filter,
        waiting=await _waiting(store, task, ranking, now),
        at=now,
    )


async def _waiting(store: Store, task: Task, ranking: Ranking, now: datetime) -> str | None:
    if task.status is TaskStatus.BLOCKED:
        parents = await store.get_tasks(list(task.depends_on))
        open_ = sorted(p.id for p in parents if p.status is not TaskStatus.COMPLETED)
        if open_:
            return f"blocked on {', '.join(open_)}"
        if task.run_at is not None and task.run_at > now:
            return f"deferred until run_at {task.run_at.isoformat()}"
        return "blocked"
    if task.status is not TaskStatus.PENDING:
        return None
    if task.not_before is not None and task.not_before > now:
        return f"backing off until {task.not_before.isoformat()}"
    if task.scope is not None and not ranking.candidates:
        inside = [e for e in ranking.excluded if e.reason is not scoring.Exclusion.NOT_IN_ROOM]
        if not inside:
            return f"no agent in room {task.scope}"
        return f"no agent in room {task.scope} can take it now: see excluded"
    if task.assigned_to is not None and not ranking.candidates:
        return f"waiting for {task.assigned_to}, named by the requester, to have room"
    if not ranking.candidates:
        return "no agent can take it now: see excluded"
    return "being assigned"
