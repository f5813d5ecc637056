"""Long-polling claims wait here, per agent, until work may be there for them.

A claimer arms its waiter *before* it looks for work, so a wake that lands between an
empty look and the wait is not lost.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class Waiters:
    def __init__(self) -> None:
        self._by_agent: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self.closed = False

    def close(self) -> None:
        """The server is stopping: every waiting claim answers now, and none waits again."""
        self.closed = True
        self.wake_all()

    def wake(self, agent_id: str) -> None:
        for waiter in self._by_agent.pop(agent_id, set()):
            if not waiter.done():
                waiter.set_result(None)

    def wake_all(self) -> None:
        for agent_id in list(self._by_agent):
            self.wake(agent_id)

    def waiting(self) -> set[str]:
        return {agent_id for agent_id, futures in self._by_agent.items() if futures}

    @contextmanager
    def armed(self, agent_id: str) -> Iterator[asyncio.Future[None]]:
        """A future that `wake(agent_id)` resolves, registered for the block's duration."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_agent[agent_id].add(waiter)
        try:
            yield waiter
        finally:
            futures = self._by_agent.get(agent_id)
            if futures is not None:
                futures.discard(waiter)
                if not futures:
                    del self._by_agent[agent_id]
            if not waiter.done():
                waiter.cancel()
