"""Schedule routes of API v1 (SPEC §4; docs/schedules.md). Admin only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.params import PageCursor
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas.schedules import (
    ScheduleCreate,
    ScheduleDetailOut,
    ScheduleList,
    ScheduleOut,
    SchedulePatch,
    ScheduleRemoved,
)
from dispatchd.api.schemas.tasks import TaskOut
from dispatchd.domain.access import require_admin
from dispatchd.domain.ids import isoformat
from dispatchd.domain.schedules import MAX_PREVIEW

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"], responses=ERRORS)

ScheduleId = Annotated[str, Path(min_length=1, max_length=128)]
Limit = Annotated[int, Query(ge=1, le=500)]
Preview = Annotated[int, Query(ge=0, le=MAX_PREVIEW, description="add the next N fire times")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut)
async def create_schedule(body: ScheduleCreate, caller: CallerDep, rt: RuntimeDep) -> ScheduleOut:
    """Create a schedule; its tasks are created by (and requested by) the caller."""
    require_admin(caller)
    schedule = await rt.schedules.create(
        name=body.name,
        schedule=body.schedule,
        task_template=body.task_template,
        caller=caller,
        timezone=body.timezone,
        misfire=body.misfire,
        overlap=body.overlap,
        catch_up_s=body.catch_up_s,
        paused=body.paused,
    )
    return ScheduleOut.of(schedule)


@router.get("", response_model=ScheduleList)
async def list_schedules(
    caller: CallerDep, rt: RuntimeDep, limit: Limit = 100, cursor: PageCursor = None
) -> ScheduleList:
    require_admin(caller)
    page = await rt.schedules.page(limit=limit, cursor=cursor)
    return ScheduleList(items=[ScheduleOut.of(s) for s in page.items], next_cursor=page.next_cursor)


@router.get("/{schedule_id}", response_model=ScheduleDetailOut)
async def get_schedule(
    schedule_id: ScheduleId, caller: CallerDep, rt: RuntimeDep, preview: Preview = 0
) -> ScheduleDetailOut:
    """A schedule; with `preview=N`, its next N fire times too."""
    require_admin(caller)
    schedule = await rt.schedules.get(schedule_id)
    times = rt.schedules.preview(schedule, preview) if preview else []
    out = ScheduleOut.of(schedule).model_dump()
    return ScheduleDetailOut(**out, preview=[isoformat(t) for t in times])


@router.patch("/{schedule_id}", response_model=ScheduleOut)
async def patch_schedule(
    schedule_id: ScheduleId, body: SchedulePatch, caller: CallerDep, rt: RuntimeDep
) -> ScheduleOut:
    """Change a schedule. A new expression or time zone counts from now."""
    require_admin(caller)
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    return ScheduleOut.of(await rt.schedules.update(schedule_id, changes, caller))


@router.delete("/{schedule_id}", response_model=ScheduleRemoved)
async def delete_schedule(
    schedule_id: ScheduleId, caller: CallerDep, rt: RuntimeDep
) -> ScheduleRemoved:
    """Delete a schedule; the tasks it fired stay."""
    require_admin(caller)
    await rt.schedules.delete(schedule_id)
    return ScheduleRemoved(id=schedule_id)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut)
async def pause_schedule(schedule_id: ScheduleId, caller: CallerDep, rt: RuntimeDep) -> ScheduleOut:
    require_admin(caller)
    return ScheduleOut.of(await rt.schedules.pause(schedule_id, caller))


@router.post("/{schedule_id}/resume", response_model=ScheduleOut)
async def resume_schedule(
    schedule_id: ScheduleId, caller: CallerDep, rt: RuntimeDep
) -> ScheduleOut:
    """Fire again from the next fire time after now; times missed while paused are not
    fired."""
    require_admin(caller)
    return ScheduleOut.of(await rt.schedules.resume(schedule_id, caller))


@router.post("/{schedule_id}/run", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
async def run_schedule(schedule_id: ScheduleId, caller: CallerDep, rt: RuntimeDep) -> TaskOut:
    """Fire once now (also while paused); the next fire time stays as it is."""
    require_admin(caller)
    schedule = await rt.schedules.get(schedule_id)
    return TaskOut.of(await rt.firer.run_now(schedule, caller))
