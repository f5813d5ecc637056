"""Schedule calls of the async client (admin): cron schedules that fire tasks from a
template (docs/schedules.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from dispatchd.client._http import HttpBase, compact
from dispatchd.client.models import Page, Schedule, ScheduleDetail, ScheduleRemoved, Task

SCHEDULES = "/api/v1/schedules"


def schedule_path(schedule_id: str, action: str = "") -> str:
    path = f"{SCHEDULES}/{quote(schedule_id, safe='')}"
    return f"{path}/{action}" if action else path


class SchedulesApi(HttpBase):
    async def create_schedule(
        self,
        name: str,
        schedule: str,
        task_template: Mapping[str, Any],
        *,
        timezone: str | None = None,
        misfire: str | None = None,
        overlap: str | None = None,
        catch_up_s: int | None = None,
        paused: bool | None = None,
    ) -> Schedule:
        """Fire a task made from `task_template` (any `create_task` body) on the cron
        expression `schedule` (five fields or a macro such as `@daily`), read in
        `timezone` (IANA, default UTC). `misfire` (skip, latest, all) says what fires
        after downtime, `overlap` (allow, skip, cancel_previous) what happens while the
        last fired task is unfinished."""
        body = compact(
            {
                "name": name,
                "schedule": schedule,
                "task_template": dict(task_template),
                "timezone": timezone,
                "misfire": misfire,
                "overlap": overlap,
                "catch_up_s": catch_up_s,
                "paused": paused,
            }
        )
        return await self.call(Schedule, "POST", SCHEDULES, json=body, admin=True)

    async def list_schedules(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> Page[Schedule]:
        """One page of schedules."""
        params = {"limit": limit, "cursor": cursor}
        return await self.call(Page[Schedule], "GET", SCHEDULES, params=params, admin=True)

    async def get_schedule(self, schedule_id: str, *, preview: int | None = None) -> ScheduleDetail:
        """A schedule; with `preview=N` its next N fire times in `preview`."""
        params = {"preview": preview}
        path = schedule_path(schedule_id)
        return await self.call(ScheduleDetail, "GET", path, params=params, admin=True)

    async def update_schedule(
        self,
        schedule_id: str,
        *,
        name: str | None = None,
        schedule: str | None = None,
        task_template: Mapping[str, Any] | None = None,
        timezone: str | None = None,
        misfire: str | None = None,
        overlap: str | None = None,
        catch_up_s: int | None = None,
    ) -> Schedule:
        """Change the fields given; a new expression or time zone counts from now."""
        body = compact(
            {
                "name": name,
                "schedule": schedule,
                "task_template": dict(task_template) if task_template is not None else None,
                "timezone": timezone,
                "misfire": misfire,
                "overlap": overlap,
                "catch_up_s": catch_up_s,
            }
        )
        path = schedule_path(schedule_id)
        return await self.call(Schedule, "PATCH", path, json=body, admin=True)

    async def delete_schedule(self, schedule_id: str) -> ScheduleRemoved:
        """Delete a schedule; the tasks it fired stay."""
        path = schedule_path(schedule_id)
        return await self.call(ScheduleRemoved, "DELETE", path, admin=True)

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        path = schedule_path(schedule_id, "pause")
        return await self.call(Schedule, "POST", path, admin=True)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire again from the next fire time after now (what was missed is not fired)."""
        path = schedule_path(schedule_id, "resume")
        return await self.call(Schedule, "POST", path, admin=True)

    async def run_schedule(self, schedule_id: str) -> Task:
        """Fire once now; the task it made."""
        path = schedule_path(schedule_id, "run")
        return await self.call(Task, "POST", path, admin=True)
