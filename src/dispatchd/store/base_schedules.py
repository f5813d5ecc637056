"""The schedules' part of the storage interface (docs/schedules.md): their writes, which go
into a `Store.commit` like every other, and their reads. `base.Store` includes both."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from dispatchd.domain.schedules import Fire, Schedule

if TYPE_CHECKING:
    from dispatchd.store.base import Page


@dataclass(frozen=True, slots=True)
class InsertSchedule:
    schedule: Schedule


@dataclass(frozen=True, slots=True)
class UpdateSchedule:
    """Write `schedule` if the stored row is still at `schedule.version - 1`, else
    `ConcurrentUpdate`: a firing computed from a schedule changed meanwhile never lands."""

    schedule: Schedule


@dataclass(frozen=True, slots=True)
class InsertFire:
    """Record that a schedule fired at a fire time; `DuplicateKey` when that time has fired
    already, which rolls the whole commit back (the task it was to create with it too).
    Put it first in its commit: on PostgreSQL a concurrent firer of the same time then
    waits here for the first one's transaction, and fails before writing anything else."""

    fire: Fire


class ScheduleReads(Protocol):
    async def get_schedule(self, schedule_id: str) -> Schedule | None: ...

    async def list_schedules(self, *, limit: int, cursor: str | None) -> Page[Schedule]:
        """Schedules by id."""
        ...

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule and the record of its fire times; False if there was none."""
        ...

    async def due_schedules(self, now: datetime, limit: int) -> list[Schedule]:
        """Up to `limit` schedules whose `next_fire_at` has come, the oldest first."""
        ...

    async def schedule_fires(self, schedule_id: str, *, limit: int) -> list[Fire]:
        """A schedule's recorded fire times, the newest first."""
        ...
