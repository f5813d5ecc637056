"""Room calls of the async client (`/api/v1/rooms`, docs/rooms.md)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from dispatchd.client._http import HttpBase, compact, pages
from dispatchd.client.models import (
    Page,
    Priority,
    Room,
    RoomHistory,
    RoomInterrupted,
    RoomRemoved,
    Task,
)

ROOMS = "/api/v1/rooms"


def room_path(room_id: str, action: str = "") -> str:
    path = f"{ROOMS}/{quote(room_id, safe='')}"
    return f"{path}/{action}" if action else path


class RoomsApi(HttpBase):
    async def create_room(
        self, room_id: str, *, name: str | None = None, workspace: str | None = None
    ) -> Room:
        """Create a room (admin): `room_id` a slug such as `infra`, `name` a channel name
        (default `#<room_id>`), `workspace` a path such as `~/ops/servers`."""
        body = compact({"id": room_id, "name": name, "workspace": workspace})
        return await self.call(Room, "POST", ROOMS, json=body, admin=True)

    async def list_rooms(self, *, limit: int = 100, cursor: str | None = None) -> Page[Room]:
        """One page of rooms, by id, each with its derived status."""
        params = {"limit": limit, "cursor": cursor}
        return await self.call(Page[Room], "GET", ROOMS, params=params)

    async def iter_rooms(self, *, limit: int = 100) -> AsyncGenerator[Room, None]:
        """Every room, page after page."""
        async for room in pages(lambda cursor: self.list_rooms(limit=limit, cursor=cursor)):
            yield room

    async def get_room(self, room_id: str) -> Room:
        """A room with its status: `agent_status`, `agents`, `current_task`,
        `last_activity_at`, `pending`."""
        return await self.call(Room, "GET", room_path(room_id))

    async def update_room(
        self,
        room_id: str,
        *,
        name: str | None = None,
        workspace: str | None = None,
        clear_workspace: bool = False,
    ) -> Room:
        """Change a room's name or workspace (admin); None leaves a field as it is,
        `clear_workspace` removes the workspace."""
        body: dict[str, Any] = compact({"name": name, "workspace": workspace})
        if clear_workspace:
            body["workspace"] = None
        return await self.call(Room, "PATCH", room_path(room_id), json=body, admin=True)

    async def delete_room(self, room_id: str) -> RoomRemoved:
        """Remove a room (admin); refused (`Conflict`, `room_busy`) while any of its tasks
        is unfinished."""
        return await self.call(RoomRemoved, "DELETE", room_path(room_id), admin=True)

    async def room_history(self, room_id: str, *, limit: int = 20) -> RoomHistory:
        """The room's latest tasks with their outcomes and its latest events, newest
        first."""
        params = {"limit": limit}
        return await self.call(RoomHistory, "GET", room_path(room_id, "history"), params=params)

    async def dispatch(
        self,
        room: str,
        prompt: str,
        *,
        title: str | None = None,
        priority: Priority | str | None = None,
        depends_on: Sequence[str] = (),
        capabilities: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
    ) -> Task:
        """Create a task of `room` from `prompt` (titled by its first line unless `title`
        is given); it goes only to the room's agents."""
        body = compact(
            {
                "prompt": prompt,
                "title": title,
                "priority": priority,
                "depends_on": list(depends_on),
                "capabilities": list(capabilities),
                "context": dict(context) if context is not None else None,
            }
        )
        return await self.call(Task, "POST", room_path(room, "dispatch"), json=body)

    async def interrupt_room(self, room: str, reason: str | None = None) -> list[str]:
        """Cancel the room's work in agents' hands (admin); the ids of the tasks cancelled
        (empty when nothing was running)."""
        body = compact({"reason": reason})
        path = room_path(room, "interrupt")
        return (await self.call(RoomInterrupted, "POST", path, json=body, admin=True)).cancelled
