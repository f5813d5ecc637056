"""Managing schedules (the admin routes): create, read, change, pause, resume, delete.

Everything a schedule holds is checked when it is written: the cron expression and the
time zone by `domain.schedules`, the task template by the task creation model itself, so
a schedule that was accepted never fails to fire for its own input. Each change is
written with its event in one commit; the event wakes the deadline sweeper of every
replica, which then waits for the schedule's (new) next fire time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dispatchd.api.schemas.tasks import TaskCreate
from dispatchd.domain.access import Caller
from dispatchd.domain.ids import isoformat, new_id, utcnow
from dispatchd.domain.models import Event, TaskSpec
from dispatchd.domain.schedules import (
    MAX_PREVIEW,
    Misfire,
    Overlap,
    Schedule,
    check_cron,
    check_timezone,
    fire_times,
    next_fire,
)
from dispatchd.errors import ConcurrentUpdate, NotFound, ValidationFailed
from dispatchd.store.base import AppendEvent, InsertSchedule, Page, Store, UpdateSchedule

# A PATCH that meets a concurrent write (a firing) reads again this many times.
UPDATE_TRIES = 5
EDITABLE = frozenset(
    {"name", "schedule", "timezone", "task_template", "misfire", "overlap", "catch_up_s"}
)


def check_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template as the task creation model reads it (unset fields left out), or a 422
    naming the template's field, e.g. `task_template.priority`."""
    try:
        body = TaskCreate.model_validate(template)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("task_template", *first["loc"]))
        raise ValidationFailed(
            f"{where}: {first['msg']}",
            code="invalid_task_template",
            field=where,
            errors=[
                {"loc": ["task_template", *map(str, e["loc"])], "msg": e["msg"]}
                for e in exc.errors()
            ],
        ) from None
    if body.idempotency_key is not None:
        raise ValidationFailed(
            "task_template.idempotency_key: each firing makes a new task; a template has no "
            "idempotency key",
            code="invalid_task_template",
            field="task_template.idempotency_key",
        )
    dumped: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
    return dumped


def template_spec(template: Mapping[str, Any]) -> TaskSpec:
    """The task a template makes (a template stored before the task model changed may no
    longer be valid: that is a `ValidationFailed`, never a crash of the sweeper)."""
    check_template(template)
    return TaskCreate.model_validate(template).spec()


def schedule_event(kind: str, schedule: Schedule, at: datetime, by: str | None) -> Event:
    return Event(
        type=f"schedule.{kind}",
        created_at=at,
        agent_id=by,
        data={
            "schedule_id": schedule.id,
            "name": schedule.name,
            "paused": schedule.paused,
            "next_fire_at": isoformat(schedule.next_fire_at) if schedule.next_fire_at else None,
        },
    )


class ScheduleService:
    def __init__(self, store: Store, changed: Callable[[], None] = lambda: None) -> None:
        self.store = store
        # Tells this replica's sweeper at once (the others hear of it by the event).
        self.changed = changed

    async def create(
        self,
        *,
        name: str,
        schedule: str,
        task_template: Mapping[str, Any],
        caller: Caller,
        timezone: str = "UTC",
        misfire: Misfire = Misfire.SKIP,
        overlap: Overlap = Overlap.ALLOW,
        catch_up_s: int = 3600,
        paused: bool = False,
    ) -> Schedule:
        expr = check_cron(schedule)
        tz = check_timezone(timezone)
        template = check_template(task_template)
        now = utcnow()
        created = Schedule(
            id=new_id(),
            name=name,
            schedule=expr,
            timezone=tz.key,
            task_template=template,
            created_by=caller.agent_id,
            created_at=now,
            updated_at=now,
            misfire=misfire,
            overlap=overlap,
            catch_up_s=catch_up_s,
            paused=paused,
            next_fire_at=None if paused else next_fire(expr, tz, now),
        )
        event = schedule_event("created", created, now, caller.agent_id)
        await self.store.commit([InsertSchedule(created), AppendEvent(event)])
        self.changed()
        return created

    async def get(self, schedule_id: str) -> Schedule:
        found = await self.store.get_schedule(schedule_id)
        if found is None:
            raise NotFound(f"no schedule {schedule_id}", schedule_id=schedule_id)
        return found

    async def page(self, *, limit: int, cursor: str | None) -> Page[Schedule]:
        return await self.store.list_schedules(limit=limit, cursor=cursor)

    def preview(
        self, schedule: Schedule, count: int, now: datetime | None = None
    ) -> list[datetime]:
        """The next `count` fire times: from `next_fire_at` on (or from now, if paused)."""
        count = min(count, MAX_PREVIEW)
        tz = check_timezone(schedule.timezone)
        if schedule.next_fire_at is None:
            return fire_times(schedule.schedule, tz, now or utcnow(), count)
        if count == 0:
            return []
        return [
            schedule.next_fire_at,
            *fire_times(schedule.schedule, tz, schedule.next_fire_at, count - 1),
        ]

    async def update(
        self, schedule_id: str, changes: Mapping[str, Any], caller: Caller
    ) -> Schedule:
        """Change a schedule. A new expression or time zone starts counting from now."""
        unknown = set(changes) - EDITABLE
        if unknown:  # pragma: no cover - the request model forbids them
            raise ValidationFailed(f"cannot change {', '.join(sorted(unknown))}")
        values = dict(changes)
        if "schedule" in values:
            values["schedule"] = check_cron(values["schedule"])
        if "timezone" in values:
            values["timezone"] = check_timezone(values["timezone"]).key
        if "task_template" in values:
            values["task_template"] = check_template(values["task_template"])
        return await self._write(
            schedule_id, "updated", caller, lambda s, now: _edit(s, values, now)
        )

    async def pause(self, schedule_id: str, caller: Caller) -> Schedule:
        return await self._write(
            schedule_id, "paused", caller, lambda s, now: s.evolve(paused=True, next_fire_at=None)
        )

    async def resume(self, schedule_id: str, caller: Caller) -> Schedule:
        """Fire again from now on: what was missed while paused is not fired."""

        def resumed(s: Schedule, now: datetime) -> Schedule:
            if not s.paused:
                return s
            tz = check_timezone(s.timezone)
            return s.evolve(paused=False, next_fire_at=next_fire(s.schedule, tz, now))

        return await self._write(schedule_id, "resumed", caller, resumed)

    async def delete(self, schedule_id: str) -> None:
        if not await self.store.delete_schedule(schedule_id):
            raise NotFound(f"no schedule {schedule_id}", schedule_id=schedule_id)
        self.changed()

    async def _write(
        self,
        schedule_id: str,
        kind: str,
        caller: Caller,
        change: Callable[[Schedule, datetime], Schedule],
    ) -> Schedule:
        for _ in range(UPDATE_TRIES):
            current = await self.get(schedule_id)
            now = utcnow()
            new = change(current, now)
            if new == current:
                return current
            new = new.evolve(updated_at=now, version=current.version + 1)
            event = schedule_event(kind, new, now, caller.agent_id)
            try:
                await self.store.commit([UpdateSchedule(new), AppendEvent(event)])
            except ConcurrentUpdate:
                continue
            self.changed()
            return new
        raise ConcurrentUpdate(f"schedule {schedule_id} is changing too fast; try again")


def _edit(schedule: Schedule, values: Mapping[str, Any], now: datetime) -> Schedule:
    new = schedule.evolve(**values)
    timing = new.schedule != schedule.schedule or new.timezone != schedule.timezone
    if timing and not new.paused:
        new = new.evolve(next_fire_at=next_fire(new.schedule, check_timezone(new.timezone), now))
    return new
