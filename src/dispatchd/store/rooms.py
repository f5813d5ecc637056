"""The rooms' part of the storage interface (`base.Store` includes it): the writes of a
room, committed with its event like every other write, and the reads a room's status is
derived from, each over a whole page of rooms at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dispatchd.domain.models import Event, Task
from dispatchd.domain.rooms import Room, RoomActivity

if TYPE_CHECKING:
    from dispatchd.store.base import Page


@dataclass(frozen=True, slots=True)
class InsertRoom:
    """Insert a room; `DuplicateKey` (field `id`) when its id exists."""

    room: Room


@dataclass(frozen=True, slots=True)
class UpdateRoom:
    """Write `room` if the stored row is still at `room.version - 1`, else
    `ConcurrentUpdate` (`NotFound` is the caller's to tell apart)."""

    room: Room


@dataclass(frozen=True, slots=True)
class DeleteRoom:
    """Remove a room at `version` none of whose tasks is unfinished: `Conflict`
    (`room_busy`) when one is, `ConcurrentUpdate` when the row moved or went. The row is
    locked first, so work dispatched meanwhile (`RequireRoom`) is seen, never left in a
    room that is gone."""

    room_id: str
    version: int


@dataclass(frozen=True, slots=True)
class RequireRoom:
    """Fail the commit with `NotFound` unless the room exists (on PostgreSQL this holds a
    share lock on the row, so a removal waits for the commit and then sees what it wrote,
    while other dispatches into the room go ahead)."""

    room_id: str


class RoomStore(Protocol):
    async def get_room(self, room_id: str) -> Room | None: ...

    async def list_rooms(self, *, limit: int, cursor: str | None) -> Page[Room]:
        """Rooms by id."""
        ...

    async def room_activity(self, room_ids: Sequence[str]) -> Mapping[str, RoomActivity]:
        """For each room, what its status is derived from (`domain.rooms.status_of`): a
        fixed number of statements however many rooms are asked for."""
        ...

    async def room_tasks(
        self, room_id: str, *, limit: int, statuses: Sequence[str] = ()
    ) -> list[Task]:
        """The room's tasks (those with `scope` = the room), newest first, optionally only
        in `statuses`."""
        ...

    async def room_events(self, room_id: str, *, limit: int) -> list[Event]:
        """The room's events, newest first: the `room.*` events naming it and the events
        of its tasks."""
        ...
