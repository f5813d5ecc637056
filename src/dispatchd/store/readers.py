"""The readers' part of the storage interface (`base.Store` includes it): the event log
read through a filter, and the notifications a reader may see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dispatchd.domain.models import Event
from dispatchd.domain.notifications import Notification


@dataclass(frozen=True, slots=True)
class EventScope:
    """Events of one task, of one requester's tasks, of one room (its tasks' and those whose
    data names it as `room`); every filter given must hold (docs/events.md#long-poll)."""

    task_id: str | None = None
    requester: str | None = None
    room: str | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.task_id, self.requester, self.room))


class ReaderStore(Protocol):
    async def read_events_where(
        self, scope: EventScope, *, after: int, until: int, limit: int
    ) -> list[Event]:
        """Up to `limit` events with an id in `(after, until]` that `scope` selects, in
        order: filtered in SQL, so a reader of one task or one room reads only those."""
        ...

    async def list_notifications(
        self,
        *,
        after: int,
        limit: int,
        unacknowledged_only: bool = False,
        requester: str | None = None,
    ) -> list[Notification]:
        """Up to `limit` finished notifications with an id above `after`, oldest first;
        with `requester`, only the entries about its tasks and the digests (whole: the
        reader cuts them to its items, `domain.notifications.for_requester`)."""
        ...
