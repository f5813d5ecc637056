"""Room operations (docs/rooms.md): the rooms themselves, their status, work dispatched into
them, their history, and interrupting them.

A room's writes go through `Store.commit` with their event (`room.created`, `room.updated`,
`room.removed`, `room.interrupted`, each naming the room in `data.room`), so everything
that follows the event log sees them like any other event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dispatchd.domain import lifecycle
from dispatchd.domain.access import Caller, require_admin
from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Change
from dispatchd.domain.models import Event, Priority, Task, TaskSpec
from dispatchd.domain.rooms import (
    INTERRUPTIBLE,
    History,
    Room,
    RoomActivity,
    RoomStatus,
    default_title,
    is_slug,
    status_of,
)
from dispatchd.engine.tasks import TaskService
from dispatchd.engine.transitions import MAX_TRIES, commit_changes
from dispatchd.errors import ConcurrentUpdate, NotFound, ValidationFailed
from dispatchd.store.base import AppendEvent, Page, Store
from dispatchd.store.rooms import DeleteRoom, InsertRoom, RequireRoom, UpdateRoom

# Fields of a room that PATCH may change.
ROOM_FIELDS = ("name", "workspace")


class RoomService:
    def __init__(self, store: Store, tasks: TaskService) -> None:
        self.store = store
        self.tasks = tasks

    # --- the rooms ------------------------------------------------------------------------

    async def get(self, room_id: str) -> Room:
        room = await self.store.get_room(room_id)
        if room is None:
            raise NotFound(f"no room {room_id}", room=room_id)
        return room

    async def status(self, room_id: str) -> RoomStatus:
        return (await self.statuses([await self.get(room_id)]))[0]

    async def statuses(self, rooms: Sequence[Room]) -> list[RoomStatus]:
        """Each room's status from one read of all their agents and tasks."""
        found = await self.store.room_activity([r.id for r in rooms])
        return [status_of(r, found.get(r.id, RoomActivity())) for r in rooms]

    async def page(self, *, limit: int, cursor: str | None) -> Page[RoomStatus]:
        page = await self.store.list_rooms(limit=limit, cursor=cursor)
        return Page(await self.statuses(page.items), page.next_cursor)

    async def create(
        self, room_id: str, caller: Caller, *, name: str | None, workspace: str | None
    ) -> RoomStatus:
        """A new room; `DuplicateKey` (409) when the id is taken."""
        require_admin(caller)
        if not is_slug(room_id):
            raise ValidationFailed(
                f"a room id is a slug (a-z, 0-9, '.', '_', '-'; up to 64): {room_id!r}",
                code="invalid_room_id",
                field="id",
            )
        now = utcnow()
        room = Room(
            id=room_id,
            name=name or f"#{room_id}",
            workspace=workspace,
            created_at=now,
            updated_at=now,
        )
        event = _room_event("room.created", room.id, caller, name=room.name, workspace=workspace)
        await self.store.commit([InsertRoom(room), AppendEvent(event)])
        return (await self.statuses([room]))[0]

    async def update(self, room_id: str, fields: Mapping[str, Any], caller: Caller) -> RoomStatus:
        require_admin(caller)
        changes = {k: v for k, v in fields.items() if k in ROOM_FIELDS}
        if changes.get("name", "") is None:
            raise ValidationFailed("a room's name cannot be null", field="name")
        for _ in range(MAX_TRIES):
            room = await self.get(room_id)
            new = room.evolve(updated_at=utcnow(), version=room.version + 1, **changes)
            changed = sorted(k for k in changes if getattr(room, k) != getattr(new, k))
            if not changed:
                return await self.status(room_id)  # nothing to write, nor to tell
            event = _room_event("room.updated", new.id, caller, fields=changed)
            try:
                await self.store.commit([UpdateRoom(new), AppendEvent(event)])
            except ConcurrentUpdate:
                continue
            return await self.status(room_id)
        raise ConcurrentUpdate(f"room {room_id} is changing too fast; try again")

    async def remove(self, room_id: str, caller: Caller) -> None:
        """Remove a room none of whose tasks is unfinished (`Conflict` `room_busy`)."""
        require_admin(caller)
        for _ in range(MAX_TRIES):
            room = await self.get(room_id)
            event = _room_event("room.removed", room.id, caller)
            try:
                await self.store.commit([DeleteRoom(room.id, room.version), AppendEvent(event)])
            except ConcurrentUpdate:
                continue
            return
        raise ConcurrentUpdate(f"room {room_id} is changing too fast; try again")

    # --- work in a room -------------------------------------------------------------------

    async def dispatch(
        self,
        room_id: str,
        caller: Caller,
        *,
        prompt: str,
        title: str | None = None,
        priority: Priority = Priority.MEDIUM,
        depends_on: Sequence[str] = (),
        capabilities: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
    ) -> Task:
        """A task of the room (its `scope`), created only while the room exists."""
        await self.get(room_id)
        spec = TaskSpec(
            title=title or default_title(prompt),
            prompt=prompt,
            priority=priority,
            depends_on=depends_on,
            capabilities=capabilities,
            context=dict(context or {}),
            scope=room_id,
        )
        created = await self.tasks.create(spec, caller, guard=[RequireRoom(room_id)])
        return created.task

    async def history(self, room_id: str, *, limit: int) -> History:
        await self.get(room_id)
        tasks = await self.store.room_tasks(room_id, limit=limit)
        events = await self.store.room_events(room_id, limit=limit)
        return History(tasks=tasks, events=events)

    async def interrupt(self, room_id: str, caller: Caller, *, reason: str | None) -> list[str]:
        """Cancel the room's work in agents' hands (assigned, running, waiting for input)
        in one commit with `room.interrupted`; the ids cancelled (none: nothing written).
        Each cancel is the task's own transition, so its runner stops the agent as for any
        cancel."""
        require_admin(caller)
        await self.get(room_id)
        states = sorted(s.value for s in INTERRUPTIBLE)
        why = reason or f"room {room_id} interrupted"
        for _ in range(MAX_TRIES):
            # A room's agents hold a few tasks at a time: one page takes them all.
            held = await self.store.room_tasks(room_id, limit=10_000, statuses=states)
            if not held:
                return []
            now = utcnow()
            steps: list[tuple[Change, Task | None]] = [
                (lifecycle.cancel(t, now, by=caller.agent_id, reason=why), t) for t in held
            ]
            ids = sorted(t.id for t in held)
            event = _room_event("room.interrupted", room_id, caller, cancelled=ids, reason=reason)
            try:
                await commit_changes(
                    self.store,
                    steps,
                    [AppendEvent(event)],
                    escalate_to=self.tasks.rules.escalate_to,
                )
            except ConcurrentUpdate:
                continue
            return ids
        raise ConcurrentUpdate(f"room {room_id} is changing too fast; try again")


def _room_event(kind: str, room_id: str, caller: Caller, **data: Any) -> Event:
    """A room's event: the room in `data.room` (what `Store.room_events` finds it by), the
    caller as its actor, like a task's."""
    return Event(
        type=kind,
        created_at=utcnow(),
        agent_id=caller.agent_id,
        data={"room": room_id, "by": caller.agent_id, **data},
    )
