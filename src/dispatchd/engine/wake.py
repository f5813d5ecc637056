"""Waking a sleeping agent that was just given a task (SPEC §3.5).

The availability service's wake when one is configured, else a POST to the agent's own
`wake_url`. Best effort and off the assignment path: a wake that fails is logged, and a
task its agent does not start within `assignment.wake_timeout_ms` goes elsewhere anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import Agent, Task
from dispatchd.outbound import Outbound

log = logging.getLogger(__name__)

WakeCall = Callable[[Agent, Task], Awaitable[None]]
WAKE_TIMEOUT_S = 5.0


class Waker:
    def __init__(
        self, service_wake: WakeCall | None = None, outbound: Outbound | None = None
    ) -> None:
        self.service_wake = service_wake
        # Where wake URLs may point, checked on the address each request is sent to.
        self.outbound = outbound
        self._client: httpx.AsyncClient | None = None
        self._running: set[asyncio.Task[None]] = set()

    def wake(self, agent: Agent, task: Task) -> None:
        """Start waking `agent` for `task` in the background."""
        job = asyncio.create_task(self._wake(agent, task), name=f"wake {agent.id}")
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def _wake(self, agent: Agent, task: Task) -> None:
        try:
            if self.service_wake is not None:
                await self.service_wake(agent, task)
            elif agent.wake_url:
                await self._post(agent, task)
            else:
                return
            log.info("woke agent %s for task %s", agent.id, task.id, extra={"action": "wake"})
        except Exception as exc:  # a failed wake must never stop assignment
            log.warning(
                "could not wake agent %s for task %s: %s",
                agent.id,
                task.id,
                exc,
                extra={"action": "wake", "agent_id": agent.id, "task_id": task.id},
            )

    async def _post(self, agent: Agent, task: Task) -> None:
        assert agent.wake_url is not None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=WAKE_TIMEOUT_S, follow_redirects=False)
        body = {
            "agent_id": agent.id,
            "task_id": task.id,
            "title": task.title,
            "priority": task.priority.value,
            "start_by": isoformat(task.lease_expires_at) if task.lease_expires_at else None,
        }
        url, headers, extensions = agent.wake_url, dict[str, str](), dict[str, Any]()
        if self.outbound is not None:
            url, headers, extensions = await self.outbound.pin(agent.wake_url)
        response = await self._client.post(url, json=body, headers=headers, extensions=extensions)
        response.raise_for_status()  # a redirect too: it is not followed

    async def close(self) -> None:
        for job in list(self._running):
            job.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
