"""Agent presence: an idle agent not heard from for `assignment.offline_after_ms` is
marked offline, so that assignment stops choosing it and the dashboard and the API show it
as it is.

An agent is heard from by its heartbeats and its claims (a claim refreshes the time when
it is older than a third of the threshold). Sleeping agents are left as they are: they
are woken through their `wake_url` or the availability service, not by heartbeats. An
offline agent comes back by its next heartbeat or claim. An agent holding tasks is the
sweeper's business: its leases (renewed by progress too) say whether it is alive, and a
lost lease marks a silent agent offline with the task's requeue.

An agent that cannot be marked offline for an error of dispatchd's own (not the database's)
is passed over, so the others are; after POISON_AFTER failures in a row it is set aside
(logged, counted) until the runtime restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import timedelta

from dispatchd.domain.access import Caller
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Agent, AgentStatus
from dispatchd.engine.agents import status_event
from dispatchd.errors import ConcurrentUpdate, DispatchError
from dispatchd.jobs import JobStatus, Strikes, stop_if_cancelled
from dispatchd.store.base import AgentFilter, AppendEvent, Store, UpdateAgent

log = logging.getLogger(__name__)

# Statuses that say "here": a silent agent in one of them is not.
PRESENT = (AgentStatus.READY, AgentStatus.BUSY, AgentStatus.DEGRADED)
PAGE = 500


class Presence:
    def __init__(self, store: Store, offline_after: timedelta) -> None:
        self.store = store
        self.offline_after = offline_after
        self.job = JobStatus("presence")
        self.strikes = Strikes(lambda: self.job, "agent", "presence", log)

    @property
    def set_aside(self) -> dict[str, str]:
        """The agents set aside (until this process restarts), with their error."""
        return self.strikes.set_aside

    @property
    def interval_s(self) -> float:
        """How often to look: a quarter of the threshold, so an agent is marked offline
        at most a quarter late."""
        return max(self.offline_after.total_seconds() / 4, 0.25)

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                await self.sweep()
                self.job.ok()
            except Exception as exc:
                self.job.failed(exc, "marking silent agents offline")
                if isinstance(exc, DispatchError):
                    log.warning("presence sweep failed: %s", exc, extra={"action": "presence"})
                else:
                    log.error("presence sweep failed", exc_info=exc, extra={"action": "presence"})
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> list[str]:
        """Mark offline every idle present agent silent for the threshold; their ids."""
        before = utcnow() - self.offline_after
        flt = AgentFilter(status=PRESENT, heard_before=before, idle=True)
        gone: list[str] = []
        cursor: str | None = None
        while True:
            page = await self.store.list_agents(flt, limit=PAGE, cursor=cursor)
            for load in page.items:
                agent = load.agent
                if agent.id in self.set_aside:
                    continue
                try:
                    marked = await self._mark_offline(agent)
                except DispatchError:
                    raise  # the database: the whole sweep is tried again
                except Exception as exc:
                    self.strikes.failed(agent.id, exc, "marking offline")
                    continue
                self.strikes.ok(agent.id)
                if marked:
                    gone.append(agent.id)
            if page.next_cursor is None:
                return gone
            cursor = page.next_cursor

    async def _mark_offline(self, seen: Agent) -> bool:
        now = utcnow()
        off = seen.evolve(status=AgentStatus.OFFLINE, updated_at=now, version=seen.version + 1)
        event = status_event(seen, off, Caller("dispatchd"))
        reason = f"not heard from for {self.offline_after.total_seconds():g}s"
        event = dataclasses.replace(event, data={**event.data, "reason": reason})
        try:
            # Written at the version read: a heartbeat that lands first wins.
            await self.store.commit([UpdateAgent(off), AppendEvent(event)])
        except ConcurrentUpdate:
            return False
        return True
