"""Firing schedules: each fire time makes one task from the template, once.

The sweeper calls `fire_due` when the nearest `next_fire_at` has come (it is one of the
deadlines it sleeps on). A firing is one commit: the fire record (schedule, fire time)
first, then the task, the `schedule.fired` event and the schedule moved on to its next
fire time. The fire record's primary key is what makes a time fire once: a second
replica, or a restarted one re-reading the same schedule, fails on it and writes nothing.
The schedule's version check makes a firing computed from a schedule that changed
meanwhile (paused, edited, fired) start again from a fresh read.

A schedule whose firing fails with an error of dispatchd's own (not the database's) is
passed over for that sweep, so the others fire; after POISON_AFTER failures in a row it is
set aside: paused, with a `schedule.fire_failed` event giving the error (resuming it tries
again), logged and counted by the sweeper's job.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from datetime import datetime

from dispatchd.domain.access import Caller
from dispatchd.domain.ids import isoformat, new_id, utcnow
from dispatchd.domain.models import Event, Task
from dispatchd.domain.schedules import (
    Fire,
    Overlap,
    Schedule,
    check_timezone,
    dated_title,
    plan,
)
from dispatchd.engine.schedules import template_spec
from dispatchd.engine.tasks import TaskService
from dispatchd.errors import (
    ConcurrentUpdate,
    DispatchError,
    DuplicateKey,
    InvalidTransition,
    NotFound,
    StoreError,
    ValidationFailed,
)
from dispatchd.jobs import POISON_AFTER, JobStatus
from dispatchd.store.base import AppendEvent, InsertFire, Store, UpdateSchedule

log = logging.getLogger(__name__)

BATCH = 100
MAX_BATCHES = 10
# Looks at one schedule before leaving it to the next sweep (a schedule firing every
# missed time of a long downtime, or one another replica keeps moving).
MAX_STEPS = 1000


class Firer:
    def __init__(self, store: Store, tasks: TaskService) -> None:
        self.store = store
        self.tasks = tasks
        self.fired = 0
        # Whose errors these are (the sweeper's, which fires the schedules).
        self.job = JobStatus("sweeper")
        self._failures: dict[str, int] = {}
        # Set aside but not paused (the pause itself failed): skipped until a restart.
        self.set_aside: dict[str, str] = {}

    async def fire_due(self, now: datetime | None = None) -> int:
        """Fire every schedule whose next fire time has come; how many tasks were made."""
        made = 0
        # Bounded: schedules that cannot fire stay due, and are looked at next sweep.
        for _ in range(MAX_BATCHES):
            moment = now or utcnow()
            due = await self.store.due_schedules(moment, BATCH)
            for schedule in due:
                if schedule.id in self.set_aside:
                    continue
                try:
                    made += await self._catch_up(schedule.id, moment)
                except DispatchError as exc:
                    # One schedule that cannot be read or fired must not hold up the
                    # others, nor the task deadlines swept with them.
                    log.warning("schedule %s: %s", schedule.id, exc, extra={"action": "fire"})
                except Exception as exc:
                    await self._failed(schedule.id, exc)
                else:
                    self._failures.pop(schedule.id, None)
            if len(due) < BATCH:
                break
        return made

    async def _failed(self, schedule_id: str, exc: Exception) -> None:
        """Firing the schedule failed with an error of ours: logged with its id, counted;
        set aside (paused, with an event saying why) after POISON_AFTER in a row."""
        tries = self._failures[schedule_id] = self._failures.get(schedule_id, 0) + 1
        extra = {"action": "fire", "schedule_id": schedule_id}
        if tries < POISON_AFTER:
            log.error("firing schedule %s failed", schedule_id, exc_info=exc, extra=extra)
            self.job.failed(exc, f"firing schedule {schedule_id}")
            return
        error = f"set aside after {tries} failures to fire it: {type(exc).__name__}: {exc}"
        try:
            schedule = await self._reread(schedule_id)
            now = utcnow()
            stopped = schedule.evolve(paused=True)
            await self._advance(stopped, None, now, schedule.next_fire_at or now, error=error[:500])
            self._failures.pop(schedule_id, None)
        except DispatchError as pausing:
            # The database: the pause is tried again when the schedule next fails.
            self._failures[schedule_id] = tries - 1
            log.warning("could not pause schedule %s: %s", schedule_id, pausing, extra=extra)
            return
        except Exception as pausing:
            # Not even paused: skipped by this replica until it restarts.
            self._failures.pop(schedule_id, None)
            self.set_aside[schedule_id] = error
            log.error("could not pause schedule %s: %r", schedule_id, pausing, extra=extra)
        log.error(
            "schedule %s set aside (paused) after %d failures to fire it",
            schedule_id,
            tries,
            exc_info=exc,
            extra={**extra, "action": "fire_set_aside"},
        )
        self.job.set_aside(f"schedule {schedule_id}", exc)

    async def run_now(self, schedule: Schedule, caller: Caller) -> Task:
        """Fire once now, outside the schedule (its next fire time stays as it is); the
        overlap policy does not apply: it was asked for."""
        for _ in range(MAX_STEPS):
            now = utcnow()
            task = await self._fire(schedule, now, schedule.next_fire_at, caller.agent_id)
            if task is not None:
                return task
            schedule = await self._reread(schedule.id)
        raise ConcurrentUpdate(f"schedule {schedule.id} is changing too fast; try again")

    async def _reread(self, schedule_id: str) -> Schedule:
        found = await self.store.get_schedule(schedule_id)
        if found is None:
            raise NotFound(f"no schedule {schedule_id}", schedule_id=schedule_id)
        return found

    async def _catch_up(self, schedule_id: str, now: datetime) -> int:
        """Fire what the misfire policy keeps of the schedule's due times, one commit each,
        reading the schedule again before each."""
        made = 0
        for _ in range(MAX_STEPS):
            schedule = await self.store.get_schedule(schedule_id)
            if schedule is None:
                return made
            try:
                decided = plan(schedule, now)
            except ValidationFailed as exc:
                # Its fire times cannot be worked out any more (a time zone gone from the
                # system's database): it is paused, with an event saying why, rather
                # than looked at again and again.
                log.warning("schedule %s paused: %s", schedule.id, exc.message)
                stopped = schedule.evolve(paused=True)
                await self._advance(stopped, None, now, now, error=exc.message)
                return made
            if not decided.fire:
                if decided.next_fire_at != schedule.next_fire_at:
                    # Only missed times, and the policy fires none of them: wait for the next.
                    if decided.missed:
                        log.info(
                            "schedule %s skipped %d missed fire times",
                            schedule.id,
                            decided.missed,
                            extra={"action": "schedule_misfire", "schedule_id": schedule.id},
                        )
                    await self._advance(schedule, decided.next_fire_at, now, None)
                return made
            fire_time = decided.fire[0]
            after = decided.fire[1] if len(decided.fire) > 1 else decided.next_fire_at
            try:
                if await self._overlapping(schedule, now):
                    await self._advance(schedule, after, now, fire_time)
                    continue
                task = await self._fire(schedule, fire_time, after, None)
            except ConcurrentUpdate:
                continue  # the previous task or the schedule moved: look again
            except StoreError:
                raise  # the database, not the schedule: the time fires when it is back
            except DispatchError as exc:
                # A template that no longer makes a task (a dependency pruned, say): the
                # fire time passes, with an event saying why.
                log.warning("schedule %s could not fire: %s", schedule.id, exc)
                await self._advance(schedule, after, now, fire_time, error=exc.message)
                continue
            made += task is not None
        return made

    async def _overlapping(self, schedule: Schedule, now: datetime) -> bool:
        """Whether the policy `overlap` holds this firing back: `skip` while the task fired
        last is unfinished; `cancel_previous` cancels that task (the usual cancel) first."""
        if schedule.overlap is Overlap.ALLOW or schedule.last_task_id is None:
            return False
        previous = await self.store.get_task(schedule.last_task_id)
        if previous is None or previous.status.terminal:
            return False
        if schedule.overlap is Overlap.SKIP:
            return True
        admin = Caller(schedule.created_by, is_admin=True)
        # Finished meanwhile: nothing to cancel.
        with contextlib.suppress(InvalidTransition, NotFound):
            await self.tasks.cancel(
                previous.id, admin, reason=f"schedule {schedule.id} fired again"
            )
        return False

    async def _fire(
        self, schedule: Schedule, fire_time: datetime, after: datetime | None, by: str | None
    ) -> Task | None:
        """One firing in one commit; None when the fire time had fired already or the
        schedule moved meanwhile (the caller reads it again)."""
        tz = check_timezone(schedule.timezone)
        spec = template_spec(schedule.task_template)
        stamp = isoformat(fire_time)
        task_id = new_id()
        now = utcnow()
        spec = replace(
            spec,
            title=dated_title(spec.title, fire_time, tz),
            context={**spec.context, "schedule_id": schedule.id, "fired_at": stamp},
            schedule_id=schedule.id,
        )
        moved = schedule.evolve(
            next_fire_at=after,
            last_fire_at=fire_time,
            last_task_id=task_id,
            updated_at=now,
            version=schedule.version + 1,
        )
        event = Event(
            type="schedule.fired",
            created_at=now,
            task_id=task_id,
            agent_id=by,
            data={"schedule_id": schedule.id, "fire_time": stamp, "task_id": task_id},
        )
        fire = Fire(schedule.id, fire_time, task_id, now)
        try:
            task = await self.tasks.creation.create_with(
                spec,
                Caller(schedule.created_by),
                task_id,
                first=[InsertFire(fire)],
                extra=[AppendEvent(event), UpdateSchedule(moved)],
            )
        except ConcurrentUpdate:
            return None
        except DuplicateKey:
            # Fired already: by another replica, or before a restart. A schedule still
            # pointing at that time (its fire record outlived an edit) moves past it.
            current = await self.store.get_schedule(schedule.id)
            if current is not None and current.next_fire_at == fire_time:
                await self._advance(current, after, now, None)
            return None
        self.fired += 1
        return task

    async def _advance(
        self,
        schedule: Schedule,
        after: datetime | None,
        now: datetime,
        passed: datetime | None,
        *,
        error: str | None = None,
    ) -> None:
        """Move the schedule on to `after` without a task; `passed` is the fire time let go
        (held back by `overlap`, or failed), told by an event."""
        moved = schedule.evolve(next_fire_at=after, updated_at=now, version=schedule.version + 1)
        ops: list[UpdateSchedule | AppendEvent] = [UpdateSchedule(moved)]
        if passed is not None:
            kind = "schedule.skipped" if error is None else "schedule.fire_failed"
            data = {"schedule_id": schedule.id, "fire_time": isoformat(passed)}
            if error is not None:
                data["error"] = error
            else:
                data["reason"] = "overlap"
            ops.append(AppendEvent(Event(type=kind, created_at=now, data=data)))
        # Moved by someone else meanwhile: the next look reads it again.
        with contextlib.suppress(ConcurrentUpdate):
            await self.store.commit(ops)
