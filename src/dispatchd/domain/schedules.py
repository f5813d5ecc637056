"""Schedules: a cron expression in a time zone, and the task template it fires.

Cron expressions are parsed and iterated by croniter; this module only says which of its
fire times count. In a time zone with daylight-saving time croniter yields a local time
that occurs twice (the autumn hour repeated) twice, and a local time that does not exist
(the spring hour skipped) at the next valid time: the first is corrected here, so that
such a time fires once; the second is what we want already.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from croniter.croniter import CroniterError

from dispatchd.errors import ValidationFailed

# A fire time the sweeper reaches later than this counts as missed (the `misfire` policy
# decides); within it, as on time.
ON_TIME = timedelta(seconds=60)
# The most fire times one look at a schedule considers (a schedule that fires every
# minute, down for a week, is not iterated minute by minute).
MAX_MISSED = 1000
MAX_PREVIEW = 100
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


# --- what an expression may be, as one regular expression --------------------------------
# The OpenAPI document carries it (ECMA-262, which has no case-insensitive flag: names are
# spelled with both cases), and `check_cron` holds expressions to it before croniter reads
# them, so that the document and the server take the same expressions. croniter's own
# extensions (L, W, #, ?, H, seconds) are not part of it. What it cannot say is whether a
# well-formed expression ever fires (`0 0 31 2 *`): that stays `invalid_schedule`.
def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


def _field(value: str) -> str:
    item = f"(?:\\*|(?:{value})(?:-(?:{value}))?)(?:/[1-9][0-9]?)?"
    return f"{item}(?:,{item})*"


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS = (
    _field("[0-5]?[0-9]"),
    _field("[01]?[0-9]|2[0-3]"),
    _field("0?[1-9]|[12][0-9]|3[01]"),
    _field("|".join(("0?[1-9]|1[0-2]", *map(_any_case, _MONTHS)))),
    _field("|".join(("[0-7]", *map(_any_case, _DAYS)))),
)
CRON_PATTERN = (
    "^ *(?:"
    + " +".join(f"(?:{f})" for f in _CRON_FIELDS)
    + "|"
    + "|".join(_any_case(m) for m in MACROS)
    + ") *$"
)
_CRON = re.compile(CRON_PATTERN)


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA names this server knows (its tz database): the document lists them."""
    return frozenset(available_timezones())


class Misfire(StrEnum):
    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


class Overlap(StrEnum):
    ALLOW = "allow"
    SKIP = "skip"
    CANCEL_PREVIOUS = "cancel_previous"


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    name: str
    schedule: str
    timezone: str
    task_template: Mapping[str, Any]
    created_by: str
    created_at: datetime
    updated_at: datetime
    misfire: Misfire = Misfire.SKIP
    overlap: Overlap = Overlap.ALLOW
    # With misfire `all`: how far back missed fire times are still fired.
    catch_up_s: int = 3600
    paused: bool = False
    # None while paused: nothing to wait for.
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_task_id: str | None = None
    version: int = 1

    def evolve(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Fire:
    """A fire time that fired: one row per schedule and fire time, ever."""

    schedule_id: str
    fire_time: datetime
    task_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """What a look at a due schedule decides: the fire times to fire now (oldest first)
    and the next one to wait for."""

    fire: list[datetime] = field(default_factory=list)
    next_fire_at: datetime | None = None
    missed: int = 0


def check_cron(expr: str) -> str:
    """The expression, trimmed, if it is five cron fields or a macro; else 422 on `schedule`."""
    text = " ".join(expr.split())
    if not _CRON.match(expr):
        ok = False
    elif text.startswith("@"):
        ok = text.lower() in MACROS
    else:
        ok = len(text.split(" ")) == 5 and croniter.is_valid(text) and _fires(text)
    if not ok:
        raise ValidationFailed(
            f"schedule {expr[:100]!r} is not a cron expression of five fields or a macro "
            f"({', '.join(MACROS)})",
            code="invalid_schedule",
            field="schedule",
        )
    return text.lower() if text.startswith("@") else text


def _fires(text: str) -> bool:
    """Whether a well-formed expression names a time that exists (not 31 February)."""
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterError, ValueError):
        return False
    return True


def check_timezone(name: str) -> ZoneInfo:
    try:
        if name not in time_zones():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationFailed(
            f"timezone {name[:100]!r} is not an IANA time zone name",
            code="invalid_timezone",
            field="timezone",
        ) from None


def _second_occurrence(local: datetime) -> bool:
    """A local time of the repeated autumn hour, the second time round."""
    naive = local.replace(tzinfo=None)
    tz = local.tzinfo
    first = naive.replace(tzinfo=tz, fold=0).utcoffset()
    second = naive.replace(tzinfo=tz, fold=1).utcoffset()
    return first != second and local.utcoffset() == second


def next_fire(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire time strictly after `after`, in UTC."""
    try:
        it = croniter(expr, after.astimezone(tz))
        for _ in range(MAX_MISSED):
            local: datetime = it.get_next(datetime)
            if not _second_occurrence(local):
                return local.astimezone(UTC)
    except (CroniterError, ValueError) as exc:  # pragma: no cover - checked at creation
        raise ValidationFailed(f"schedule {expr!r}: {exc}", field="schedule") from exc
    raise ValidationFailed(f"schedule {expr!r} never fires", field="schedule")


def fire_times(expr: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `after`, in UTC."""
    times: list[datetime] = []
    for _ in range(count):
        after = next_fire(expr, tz, after)
        times.append(after)
    return times


def plan(schedule: Schedule, now: datetime) -> Plan:
    """Which fire times to fire now, by the schedule's `misfire` policy.

    The fire times from `next_fire_at` up to `now` are due. One reached within `ON_TIME`
    is on time and fires; older ones were missed (the server was down, or busy): `skip`
    fires none of them, `latest` fires the last due time once, `all` fires each within
    `catch_up_s`. The next fire time to wait for is the first after `now`.
    """
    first = schedule.next_fire_at
    if schedule.paused or first is None or first > now:
        return Plan(next_fire_at=first)
    tz = check_timezone(schedule.timezone)
    due = [first]
    while len(due) < MAX_MISSED:
        following = next_fire(schedule.schedule, tz, due[-1])
        if following > now:
            break
        due.append(following)
    upcoming = next_fire(schedule.schedule, tz, max(due[-1], now))
    on_time = [t for t in due if now - t <= ON_TIME]
    if schedule.misfire is Misfire.LATEST:
        chosen = due[-1:]
    elif schedule.misfire is Misfire.ALL:
        window = timedelta(seconds=schedule.catch_up_s)
        chosen = [t for t in due if now - t <= max(window, ON_TIME)]
    else:
        chosen = on_time[-1:]
    return Plan(fire=chosen, next_fire_at=upcoming, missed=len(due) - len(chosen))


def dated_title(title: str, fire_time: datetime, tz: ZoneInfo, limit: int = 500) -> str:
    """The template's title with the fire time in the schedule's time zone, e.g.
    "Daily report — 2026-12-07 09:00 CET"."""
    local = fire_time.astimezone(tz)
    stamp = f" — {local:%Y-%m-%d %H:%M} {local.tzname() or tz.key}"
    return title[: max(limit - len(stamp), 1)] + stamp
