"""Long-polling claims wait here, per agent, until work may be there for them.

A claimer arms its waiter *before* it looks for work, so a wake that lands between an
empty look and the wait is not lost.

Whoever assigns a task to an agent with a waiting claim may instead `take` that claim:
the task is then assigned and started in the assigning commit and handed straight to the
claim (`deliver`), which answers without a transaction of its own. A taken claim waits for
the outcome even past its own deadline; if the commit fails it is `release`d and looks
for work itself.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dispatchd.domain.models import Task


@dataclass(eq=False, slots=True)
class Waiter:
    """One waiting claim: what it may take, and the future its answer comes through
    (a list of started tasks, or None: look again)."""

    agent_id: str
    future: asyncio.Future[list[Task] | None]
    max_tasks: int = 1
    max_capacity: int | None = None
    # The claim's narrowing of the agent's tags (None: all of them).
    only: frozenset[str] | None = None
    # True only while the claim waits (not while it looks for work itself): only then
    # may it be taken, so that a delivery never lands on a claim that has already answered.
    waiting: bool = field(default=False)
    taken: bool = field(default=False)

    def accepts(self, task: Task) -> bool:
        return self.only is None or set(task.capabilities) <= self.only

    def deliver(self, tasks: list[Task]) -> None:
        if not self.future.done():
            self.future.set_result(tasks)

    def release(self) -> None:
        """The hand-over did not happen: the claim looks for work itself."""
        if not self.future.done():
            self.future.set_result(None)


class Waiters:
    def __init__(self) -> None:
        self._by_agent: defaultdict[str, list[Waiter]] = defaultdict(list)
        self.closed = False

    def close(self) -> None:
        """The server is stopping: every waiting claim answers now, and none waits again."""
        self.closed = True
        self.wake_all()

    def wake(self, agent_id: str) -> None:
        for waiter in self._by_agent.pop(agent_id, []):
            waiter.release()

    def wake_all(self) -> None:
        for agent_id in list(self._by_agent):
            self.wake(agent_id)

    def waiting(self) -> set[str]:
        return {agent_id for agent_id, waiters in self._by_agent.items() if waiters}

    def take(self, agent_id: str, tasks: Collection[Task] = ()) -> Waiter | None:
        """Reserve a claim of `agent_id` waiting now that accepts every one of `tasks`,
        for the caller to `deliver` to or `release`; None when there is none."""
        if self.closed:
            return None
        waiters = self._by_agent.get(agent_id)
        if not waiters:
            return None
        for waiter in waiters:
            if (
                waiter.waiting
                and not waiter.future.done()
                and len(tasks) <= waiter.max_tasks
                and all(waiter.accepts(t) for t in tasks)
            ):
                waiters.remove(waiter)
                if not waiters:
                    del self._by_agent[agent_id]
                waiter.taken = True
                waiter.waiting = False
                return waiter
        return None

    @contextmanager
    def armed(
        self,
        agent_id: str,
        *,
        max_tasks: int = 1,
        max_capacity: int | None = None,
        only: frozenset[str] | None = None,
    ) -> Iterator[Waiter]:
        """A waiter that `wake(agent_id)` releases, registered for the block's duration."""
        future: asyncio.Future[list[Task] | None] = asyncio.get_running_loop().create_future()
        waiter = Waiter(agent_id, future, max_tasks, max_capacity, only)
        self._by_agent[agent_id].append(waiter)
        try:
            yield waiter
        finally:
            waiters = self._by_agent.get(agent_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._by_agent[agent_id]
            if not future.done() and not waiter.taken:
                future.cancel()
