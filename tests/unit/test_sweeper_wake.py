"""The deadline sweeper never sleeps through work that arrived while it was reading: a poke
during a sweep, or during the look for the next deadline, makes it look again at once,
however long its tick."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from dispatchd.domain.lifecycle import Policy
from dispatchd.engine.deadlines import Sweeper
from dispatchd.store.base import Due


class SlowReads:
    """A store whose first read of the chosen kind waits until the test lets it go on."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.reads = {"due": 0, "next_deadline": 0}
        self.reading = asyncio.Event()
        self.go_on = asyncio.Event()
        self.swept_again = asyncio.Event()

    async def _read(self, kind: str) -> None:
        self.reads[kind] += 1
        if self.reads["due"] >= 2:
            self.swept_again.set()
        if kind == self.slow and self.reads[kind] == 1:
            self.reading.set()
            await self.go_on.wait()

    async def due(self, now: datetime, since: datetime, limit: int) -> Due:
        await self._read("due")
        return Due()

    async def next_deadline(self, since: datetime) -> datetime | None:
        await self._read("next_deadline")
        return None  # nothing upcoming: the sweeper would sleep its whole tick


async def _poked_while(slow: str) -> None:
    store = SlowReads(slow)
    sweeper = Sweeper(store, Policy(), tick=timedelta(minutes=10), kick=lambda ids: None)  # type: ignore[arg-type]
    job = asyncio.create_task(sweeper.run())
    try:
        await asyncio.wait_for(store.reading.wait(), 5)
        sweeper.poke()  # a commit lands while the sweeper reads
        store.go_on.set()
        await asyncio.wait_for(store.swept_again.wait(), 5)
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


async def test_a_poke_while_the_next_deadline_is_read_is_not_lost() -> None:
    await _poked_while("next_deadline")


async def test_a_poke_while_the_sweep_reads_is_not_lost() -> None:
    await _poked_while("due")
