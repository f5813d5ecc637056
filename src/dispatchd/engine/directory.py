"""The agents as the assigner sees them: in memory, indexed by capability tag.

Rows come from the store (their load is kept on the agent row by every commit); when an
external capability or availability service is configured, `overlay` replaces the
capabilities or status with what that service says. The copy here is a hint for choosing:
the store re-checks every choice (`TakeSlot`), so a stale entry costs a retry, never a
wrong assignment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime

from dispatchd.domain.models import Agent, Task
from dispatchd.domain.scoring import Candidate, best
from dispatchd.store.base import Store

Overlay = Callable[[list[Agent]], Awaitable[list[Agent]]]


async def _as_is(agents: list[Agent]) -> list[Agent]:
    return agents


class Directory:
    def __init__(self, store: Store, overlay: Overlay | None = None) -> None:
        self.store = store
        self.overlay = overlay or _as_is
        self.agents: dict[str, Agent] = {}
        self._by_tag: dict[str, set[str]] = {}

    async def load(self) -> None:
        agents = await self.overlay(await self.store.all_agents())
        self.agents.clear()
        self._by_tag.clear()
        for agent in agents:
            self.put(agent)

    async def refresh(self, agent_ids: Iterable[str]) -> list[Agent]:
        ids = sorted(set(agent_ids))
        if not ids:
            return []
        fresh = await self.overlay(await self.store.get_agents(ids))
        for agent_id in set(ids) - {a.id for a in fresh}:
            self.drop(agent_id)
        for agent in fresh:
            self.put(agent)
        return fresh

    def put(self, agent: Agent) -> None:
        old = self.agents.get(agent.id)
        if old is not None:
            for tag in old.capabilities:
                if tag not in agent.capabilities:
                    self._by_tag.get(tag, set()).discard(agent.id)
        self.agents[agent.id] = agent
        for tag in agent.capabilities:
            self._by_tag.setdefault(tag, set()).add(agent.id)

    def drop(self, agent_id: str) -> None:
        old = self.agents.pop(agent_id, None)
        if old is not None:
            for tag in old.capabilities:
                self._by_tag.get(tag, set()).discard(agent_id)

    def note_assigned(self, agent_id: str, now: datetime) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None:
            self.agents[agent_id] = agent.evolve(active=agent.active + 1, last_assigned_at=now)

    def capable(self, tags: Sequence[str]) -> list[Agent]:
        """Agents holding every tag in `tags` (all agents when there are none)."""
        if not tags:
            return list(self.agents.values())
        sets = [self._by_tag.get(tag, set()) for tag in tags]
        smallest = min(sets, key=len)
        return [
            self.agents[agent_id]
            for agent_id in smallest
            if all(tag in self.agents[agent_id].capabilities for tag in tags)
        ]

    def best(
        self, task: Task, *, default_limit: int, owner_filter: bool, skip: set[str]
    ) -> Candidate | None:
        if task.assigned_to is not None:
            named = self.agents.get(task.assigned_to)
            pool = [named] if named is not None else []
        else:
            pool = self.capable(task.capabilities)
        return best(
            task,
            (a for a in pool if a.id not in skip),
            default_limit=default_limit,
            owner_filter=owner_filter,
        )
