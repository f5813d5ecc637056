"""Pull mode (SPEC §3): an agent claims the best tasks it can take, atomically.

A claim first starts the agent's own assigned tasks (pushed to it earlier), then takes
pending tasks it is capable of, in queue order, up to its free slots; all in one
transaction that locks what it reads (SKIP LOCKED on PostgreSQL, the single writer on
SQLite), so no task goes to two claimers. With `wait_s` an empty claim waits, woken the
moment something is assigned to the agent, and tries again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from dispatchd.domain import lifecycle
from dispatchd.domain.access import Caller, require_self_or_admin
from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Policy
from dispatchd.domain.models import Agent, AgentStatus, Task
from dispatchd.domain.scoring import limit_of
from dispatchd.engine.agents import status_event
from dispatchd.engine.directory import Directory
from dispatchd.engine.rules import Rules, hand_over
from dispatchd.engine.transitions import MAX_TRIES, ops_for
from dispatchd.engine.waiters import Waiters
from dispatchd.errors import ConcurrentUpdate, NotFound
from dispatchd.store.base import (
    AppendEvent,
    ClaimQuery,
    ClaimView,
    Op,
    Store,
    TakeSlot,
    UpdateAgent,
)

MAX_TASKS = 100
# A retried claim waits up to this much more on each try, at random, so that colliding
# claimers do not collide again in step.
RETRY_PAUSE_S = 0.005


@dataclass(frozen=True, slots=True)
class _Ask:
    """What one claim asks for."""

    agent_id: str
    max_tasks: int
    max_capacity: int | None
    only: frozenset[str] | None


@dataclass(slots=True)
class Claimed:
    tasks: list[Task] = field(default_factory=list)
    reason: str | None = None


class ClaimService:
    def __init__(
        self,
        store: Store,
        rules: Rules,
        policy: Policy,
        *,
        waiters: Waiters,
        directory: Directory | None = None,
        offline_after: timedelta = timedelta(minutes=3),
    ) -> None:
        self.store = store
        self.rules = rules
        self.policy = policy
        self.waiters = waiters
        self.directory = directory
        # A claim is a sign of life: it refreshes the agent's last heard time when that is
        # older than this, so a pull-only agent is never taken for gone.
        self.refresh_after = offline_after / 3

    async def claim(
        self,
        agent_id: str,
        caller: Caller,
        *,
        max_tasks: int = 1,
        wait_s: float = 0.0,
        max_capacity: int | None = None,
        capabilities: Sequence[str] | None = None,
    ) -> Claimed:
        """`capabilities` narrows the pending tasks taken to those needing only these of the
        agent's tags (a worker whose handler for some tag is busy); the agent's tasks
        already assigned to it come regardless, since they are its to start."""
        require_self_or_admin(agent_id, caller)
        only = None if capabilities is None else frozenset(capabilities)
        ask = _Ask(agent_id, max_tasks, max_capacity, only)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait_s, 0.0)
        while True:
            with self.waiters.armed(
                agent_id, max_tasks=max_tasks, max_capacity=max_capacity, only=only
            ) as waiter:
                claimed = await self._once(ask)
                remaining = deadline - loop.time()
                if claimed.tasks or claimed.reason in _FINAL or remaining <= 0:
                    return claimed
                if self.waiters.closed:
                    return claimed
                if waiter.future.done():
                    given = waiter.future.result()  # woken while it looked: look again
                else:
                    waiter.waiting = True
                    try:
                        # Shielded: a claim taken by an assigner must not lose its answer
                        # to its own deadline (see EventFeed.wait for `asyncio.timeout`).
                        async with asyncio.timeout(remaining):
                            given = await asyncio.shield(waiter.future)
                    except TimeoutError:
                        waiter.waiting = False
                        if not waiter.taken:
                            return await self._once(ask)
                        given = await waiter.future  # the hand-over is committing
                    waiter.waiting = False
                if given:
                    return Claimed(list(given))
                if self.waiters.closed:
                    return await self._once(ask)

    async def _once(self, ask: _Ask) -> Claimed:
        """One claim transaction. A collision with another writer (on PostgreSQL, being
        chosen as a deadlock victim) rolled it back whole, so it is simply tried again."""
        for tries in range(1, MAX_TRIES):
            try:
                return await self._transaction(ask)
            except ConcurrentUpdate:
                await asyncio.sleep(random.uniform(0, RETRY_PAUSE_S * tries))
        return await self._transaction(ask)

    async def _transaction(self, ask: _Ask) -> Claimed:
        known = self._known(ask.agent_id)
        if known is not None:
            try:
                return await self._attempt(ask, known, trusted=False)
            except _Stale:
                pass  # the copy is behind the row: read the row and plan again
        return await self._attempt(ask, await self._agent(ask.agent_id), trusted=True)

    async def _attempt(self, ask: _Ask, agent: Agent, *, trusted: bool) -> Claimed:
        """`agent` decides which tasks are looked at; unless `trusted` (read just now), its
        capabilities, owner and room must be those of the row the transaction locks."""
        tags = set(agent.capabilities)
        if ask.only is not None:
            tags &= ask.only
        query = ClaimQuery(
            agent_id=ask.agent_id,
            capabilities=sorted(tags),
            owner=agent.owner,
            owner_filter=self.rules.owner_filter,
            now=utcnow(),
            limit=ask.max_tasks,
            room=agent.room,
        )
        claimed = Claimed()

        def plan(view: ClaimView) -> Sequence[Op]:
            if view.agent is None:
                raise _not_registered(ask.agent_id)
            seen = agent
            if not trusted:
                # The copy chose what was read; the locked row decides the rest.
                locked = (view.agent.capabilities, view.agent.owner, view.agent.room)
                if locked != (agent.capabilities, agent.owner, agent.room):
                    raise _Stale()
                seen = view.agent
            ops, claimed.tasks, claimed.reason = self._plan(
                view, seen, max_tasks=ask.max_tasks, max_capacity=ask.max_capacity
            )
            return ops

        await self.store.claim(query, plan)
        return claimed

    def _known(self, agent_id: str) -> Agent | None:
        """The directory's copy of the agent, when no external service reshapes the row
        (saves reading the row before the claim's transaction reads it again)."""
        if self.directory is None or not self.directory.local:
            return None
        return self.directory.agents.get(agent_id)

    async def _agent(self, agent_id: str) -> Agent:
        """The agent as assignment sees it: its row as stored now, with capabilities and
        status from the external services when they are configured."""
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise _not_registered(agent_id)
        if self.directory is not None:
            agent = (await self.directory.overlay([agent]))[0]
        return agent

    def _plan(
        self, view: ClaimView, seen: Agent, *, max_tasks: int, max_capacity: int | None
    ) -> tuple[list[Op], list[Task], str | None]:
        assert view.agent is not None
        row = view.agent
        now = utcnow()
        ops: list[Op] = []
        taken: list[Task] = []
        if row.status is AgentStatus.OFFLINE:
            # Claiming is a sign of life, like a heartbeat.
            back = row.evolve(
                status=AgentStatus.READY,
                last_heartbeat_at=now,
                updated_at=now,
                version=row.version + 1,
            )
            ops += [UpdateAgent(back), AppendEvent(status_event(row, back, Caller(row.id)))]
            row = back
        elif row.last_heartbeat_at is None or row.last_heartbeat_at < now - self.refresh_after:
            heard = row.evolve(last_heartbeat_at=now, version=row.version + 1)
            ops.append(UpdateAgent(heard))
            row = heard
        for task in view.assigned[:max_tasks]:
            started = lifecycle.start(task, now, self.policy)
            ops.extend(ops_for(started, task))
            taken.append(started.task)
        limit = limit_of(row, self.rules.default_limit)
        if max_capacity is not None:
            limit = min(limit, max_capacity)
        free = limit - row.active
        # Capabilities and status as assignment sees them, the rest from the locked row.
        agent = row.evolve(capabilities=seen.capabilities)
        if seen.status is AgentStatus.DEGRADED:
            agent = agent.evolve(status=AgentStatus.DEGRADED)
        if not agent.drained and agent.status is not AgentStatus.DEGRADED:
            slot: TakeSlot | None = None
            handed: list[Op] = []
            for task in view.candidates:
                if len(taken) >= max_tasks or free <= 0:
                    break
                handover = hand_over(
                    task, agent, now, self.rules, self.policy, start=True, limit=limit
                )
                # One slot check for all the tasks this claim takes, ahead of their writes.
                first, *writes = handover.ops
                assert isinstance(first, TakeSlot)
                slot = first if slot is None else replace(slot, count=slot.count + 1)
                handed.extend(writes)
                taken.append(handover.task)
                free -= 1
            if slot is not None:
                ops += [slot, *handed]
        reason = None
        if not taken:
            if agent.drained:
                reason = "draining"
            elif agent.status is AgentStatus.DEGRADED:
                reason = "degraded"
            elif free <= 0:
                reason = "at_capacity"
            else:
                reason = "no_tasks_available"
        return ops, taken, reason


class _Stale(Exception):
    """The directory's copy of the claiming agent is older than its row."""


# An empty claim for these reasons will not change by waiting for work.
_FINAL = frozenset({"draining", "degraded"})


def _not_registered(agent_id: str) -> NotFound:
    return NotFound(
        f"agent {agent_id} is not registered; register it with POST /api/v1/agents first",
        code="agent_not_registered",
        agent_id=agent_id,
    )
