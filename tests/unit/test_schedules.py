"""The pure rules of schedules: cron and time zone checks, fire times across daylight-saving
changes, and what the misfire policy fires after downtime, on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dispatchd.domain.schedules import (
    Misfire,
    Schedule,
    check_cron,
    check_timezone,
    dated_title,
    fire_times,
    next_fire,
    plan,
)
from dispatchd.errors import ValidationFailed

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def make(expr: str, tz: str, next_fire_at: datetime, **changes: object) -> Schedule:
    s = Schedule(
        id="s1",
        name="n",
        schedule=expr,
        timezone=tz,
        task_template={"title": "t"},
        created_by="admin",
        created_at=next_fire_at,
        updated_at=next_fire_at,
        next_fire_at=next_fire_at,
    )
    return s.evolve(**changes)


def run_clock(s: Schedule, start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """What a sweeper looking every `step` from `start` to `end` fires."""
    fired: list[datetime] = []
    now = start
    while now <= end:
        p = plan(s, now)
        fired.extend(p.fire)
        s = s.evolve(next_fire_at=p.next_fire_at)
        now += step
    return fired


@pytest.mark.parametrize(
    "expr", ["0 9 * * 1-5", "*/15 * * * *", "@daily", "@HOURLY", " 0  9 * * * "]
)
def test_good_expressions_pass(expr: str) -> None:
    assert check_cron(expr)


@pytest.mark.parametrize(
    "expr", ["", "0 9 * * 1-5 *", "0 9 * *", "61 * * * *", "@reboot", "@sometimes", "every day"]
)
def test_bad_expressions_name_the_schedule_field(expr: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_cron(expr)
    assert caught.value.status == 422
    assert caught.value.details["field"] == "schedule"


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", " UTC", "Europe/"])
def test_bad_time_zones_name_the_timezone_field(name: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_timezone(name)
    assert caught.value.details["field"] == "timezone"


def test_a_repeated_autumn_time_fires_once() -> None:
    # 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    times = fire_times("30 2 * * *", BERLIN, at("2026-10-24T12:00:00+00:00"), 3)
    assert times == [
        at("2026-10-25T02:30:00+02:00"),
        at("2026-10-26T02:30:00+01:00"),
        at("2026-10-27T02:30:00+01:00"),
    ]


def test_a_missing_spring_time_fires_at_the_next_valid_time() -> None:
    # 2026-03-29: Berlin goes from 02:00 CET to 03:00 CEST; 02:30 does not exist.
    times = fire_times("30 2 * * *", BERLIN, at("2026-03-28T12:00:00+00:00"), 2)
    assert times == [at("2026-03-29T03:00:00+02:00"), at("2026-03-30T02:30:00+02:00")]


def test_a_clock_across_both_transitions_fires_each_local_time_once() -> None:
    step = timedelta(minutes=5)
    autumn = make("30 2 * * *", "Europe/Berlin", at("2026-10-25T02:30:00+02:00"))
    fired = run_clock(
        autumn, at("2026-10-24T22:00:00+00:00"), at("2026-10-26T06:00:00+00:00"), step
    )
    assert fired == [at("2026-10-25T02:30:00+02:00"), at("2026-10-26T02:30:00+01:00")]

    spring = make("30 2 * * *", "Europe/Berlin", at("2026-03-29T03:00:00+02:00"))
    fired = run_clock(
        spring, at("2026-03-28T22:00:00+00:00"), at("2026-03-30T06:00:00+00:00"), step
    )
    assert fired == [at("2026-03-29T03:00:00+02:00"), at("2026-03-30T02:30:00+02:00")]


def test_an_hourly_schedule_across_the_autumn_change_fires_each_local_hour_once() -> None:
    start = at("2026-10-25T00:00:00+02:00")
    s = make("0 * * * *", "Europe/Berlin", start)
    fired = run_clock(s, start, at("2026-10-25T05:00:00+01:00"), timedelta(minutes=1))
    local = [f"{t.astimezone(BERLIN):%H:%M}" for t in fired]
    assert local == ["00:00", "01:00", "02:00", "03:00", "04:00", "05:00"]


def test_new_york_and_utc_differ() -> None:
    after = at("2026-07-01T00:00:00+00:00")
    assert next_fire("0 9 * * *", ZoneInfo("UTC"), after) == at("2026-07-01T09:00:00+00:00")
    assert next_fire("0 9 * * *", ZoneInfo("America/New_York"), after) == at(
        "2026-07-01T13:00:00+00:00"
    )


HOURLY_DOWN = at("2026-12-07T04:00:00+00:00")  # the server was down from 04:00 ...
BACK = at("2026-12-07T09:20:00+00:00")  # ... to 09:20


def test_misfire_skip_fires_none_of_the_missed_and_waits_for_the_next() -> None:
    p = plan(make("0 * * * *", "UTC", HOURLY_DOWN), BACK)
    assert p.fire == []
    assert p.next_fire_at == at("2026-12-07T10:00:00+00:00")
    assert p.missed == 6


def test_misfire_latest_fires_one_catch_up() -> None:
    p = plan(make("0 * * * *", "UTC", HOURLY_DOWN, misfire=Misfire.LATEST), BACK)
    assert p.fire == [at("2026-12-07T09:00:00+00:00")]
    assert p.next_fire_at == at("2026-12-07T10:00:00+00:00")


def test_misfire_all_fires_each_missed_time_within_catch_up() -> None:
    s = make("0 * * * *", "UTC", HOURLY_DOWN, misfire=Misfire.ALL, catch_up_s=3 * 3600)
    p = plan(s, BACK)
    assert p.fire == [at(f"2026-12-07T0{h}:00:00+00:00") for h in (7, 8, 9)]
    assert p.next_fire_at == at("2026-12-07T10:00:00+00:00")


def test_on_time_fires_under_every_policy() -> None:
    due = at("2026-12-07T09:00:00+00:00")
    for misfire in Misfire:
        p = plan(make("0 9 * * *", "UTC", due, misfire=misfire), due + timedelta(seconds=2))
        assert p.fire == [due]
        assert p.next_fire_at == at("2026-12-08T09:00:00+00:00")


def test_nothing_before_the_fire_time_and_nothing_while_paused() -> None:
    due = at("2026-12-07T09:00:00+00:00")
    assert plan(make("0 9 * * *", "UTC", due), due - timedelta(microseconds=1)).fire == []
    assert plan(make("0 9 * * *", "UTC", due, paused=True), due).fire == []


def test_the_title_is_dated_in_the_schedule_time_zone() -> None:
    when = at("2026-12-07T08:00:00+00:00")
    assert dated_title("Daily report", when, BERLIN) == "Daily report — 2026-12-07 09:00 CET"
    assert len(dated_title("x" * 500, when, BERLIN)) == 500
