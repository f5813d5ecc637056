"""Room routes of API v1 (SPEC §4 Rooms; docs/rooms.md).

Reading rooms and dispatching work into one are open to every caller (a dispatched task's
requester is its caller); creating, changing, removing and interrupting rooms are for the
admin.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.params import PageCursor
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas.rooms import (
    InterruptBody,
    InterruptOut,
    RoomCreate,
    RoomDispatch,
    RoomHistoryOut,
    RoomList,
    RoomOut,
    RoomPatch,
    RoomRemoved,
)
from dispatchd.api.schemas.tasks import TaskOut

router = APIRouter(prefix="/api/v1/rooms", tags=["rooms"], responses=ERRORS)

RoomId = Annotated[str, Path(min_length=1, max_length=128)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RoomOut)
async def create_room(body: RoomCreate, caller: CallerDep, rt: RuntimeDep) -> RoomOut:
    """Create a room (admin). A room id in use is a 409."""
    created = await rt.rooms.create(body.id, caller, name=body.name, workspace=body.workspace)
    return RoomOut.of(created)


@router.get("", response_model=RoomList)
async def list_rooms(
    caller: CallerDep, rt: RuntimeDep, limit: Limit = 100, cursor: PageCursor = None
) -> RoomList:
    """The rooms by id, each with its status derived from its agents and tasks."""
    page = await rt.rooms.page(limit=limit, cursor=cursor)
    return RoomList(items=[RoomOut.of(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/{room_id}", response_model=RoomOut)
async def get_room(room_id: RoomId, caller: CallerDep, rt: RuntimeDep) -> RoomOut:
    return RoomOut.of(await rt.rooms.status(room_id))


@router.patch("/{room_id}", response_model=RoomOut)
async def patch_room(
    room_id: RoomId, body: RoomPatch, caller: CallerDep, rt: RuntimeDep
) -> RoomOut:
    """Change a room's name or workspace (admin)."""
    fields = body.model_dump(exclude_unset=True)
    return RoomOut.of(await rt.rooms.update(room_id, fields, caller))


@router.delete("/{room_id}", response_model=RoomRemoved)
async def delete_room(room_id: RoomId, caller: CallerDep, rt: RuntimeDep) -> RoomRemoved:
    """Remove a room (admin); 409 `room_busy` while any of its tasks is unfinished."""
    await rt.rooms.remove(room_id, caller)
    return RoomRemoved(id=room_id)


@router.post("/{room_id}/dispatch", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
async def dispatch(
    room_id: RoomId, body: RoomDispatch, caller: CallerDep, rt: RuntimeDep
) -> TaskOut:
    """Create a task of the room (`scope` = the room) from a prompt; it goes only to the
    room's agents."""
    task = await rt.rooms.dispatch(
        room_id,
        caller,
        prompt=body.prompt,
        title=body.title,
        priority=body.priority,
        depends_on=body.depends_on,
        capabilities=body.capabilities,
        context=body.context,
    )
    return TaskOut.of(task)


@router.get("/{room_id}/history", response_model=RoomHistoryOut)
async def history(
    room_id: RoomId, caller: CallerDep, rt: RuntimeDep, limit: Limit = 20
) -> RoomHistoryOut:
    """The room's latest `limit` tasks with their outcomes and latest `limit` events,
    newest first."""
    return RoomHistoryOut.of(room_id, await rt.rooms.history(room_id, limit=limit))


@router.post("/{room_id}/interrupt", response_model=InterruptOut)
async def interrupt(
    room_id: RoomId, caller: CallerDep, rt: RuntimeDep, body: InterruptBody | None = None
) -> InterruptOut:
    """Cancel the room's work in agents' hands (assigned, running, waiting for input) and
    log `room.interrupted` (admin); `cancelled` is empty when nothing was running."""
    reason = body.reason if body else None
    return InterruptOut(cancelled=await rt.rooms.interrupt(room_id, caller, reason=reason))
