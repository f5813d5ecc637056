"""Schedules through the API (docs/schedules.md): the resource, firing by the sweeper and
by hand, the misfire and overlap policies on a fixed clock, and bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from dispatchd.domain.access import Caller
from dispatchd.domain.ids import utcnow
from dispatchd.domain.schedules import Schedule
from dispatchd.runtime import Runtime
from dispatchd.store.base import TaskFilter, UpdateSchedule
from tests.api.conftest import make_settings
from tests.api.helpers import assert_error, eventually, ts

URL = "/api/v1/schedules"
TEMPLATE = {
    "title": "Generate daily standup report",
    "description": "Summarize all completed tasks from the past 24 hours.",
    "priority": "medium",
    "capabilities": ["report"],
    "context": {"team": "core"},
}


async def make(client: httpx.AsyncClient, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("name", "daily-standup-report")
    body.setdefault("schedule", "0 9 * * 1-5")
    body.setdefault("task_template", TEMPLATE)
    r = await client.post(URL, json=body, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def set_next_fire(runtime: Runtime, schedule_id: str, when: datetime) -> Schedule:
    """Move a schedule's next fire time (as if the clock had come to it)."""
    s = await runtime.store.get_schedule(schedule_id)
    assert s is not None
    moved = s.evolve(next_fire_at=when, version=s.version + 1)
    await runtime.store.commit([UpdateSchedule(moved)])
    return moved


async def fired_tasks(client: httpx.AsyncClient, schedule_id: str) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/tasks", params={"limit": 500})
    assert r.status_code == 200
    return [t for t in r.json()["items"] if t["schedule_id"] == schedule_id]


async def test_create_answers_the_schedule_in_mission_control_shape(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    s = await make(client, admin, timezone="Europe/Berlin")
    for key in (
        "id",
        "name",
        "schedule",
        "timezone",
        "task_template",
        "paused",
        "next_fire_at",
        "last_fire_at",
        "last_task_id",
        "misfire",
        "overlap",
        "catch_up_s",
    ):
        assert key in s, key
    assert s["name"] == "daily-standup-report"
    assert s["timezone"] == "Europe/Berlin"
    assert s["task_template"]["title"] == TEMPLATE["title"]
    assert (s["paused"], s["last_fire_at"], s["last_task_id"]) == (False, None, None)
    assert (s["misfire"], s["overlap"]) == ("skip", "allow")
    local = ts(s["next_fire_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    assert ts(s["next_fire_at"]) > utcnow()
    r = await client.get(f"{URL}/{s['id']}", headers=admin)
    assert r.status_code == 200
    assert r.json()["preview"] == []
    assert {k: v for k, v in r.json().items() if k != "preview"} == s


async def test_list_pages_with_a_cursor(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    ids = [(await make(client, admin, name=f"s{i}"))["id"] for i in range(3)]
    r = await client.get(URL, params={"limit": 2}, headers=admin)
    page = r.json()
    assert set(page) == {"items", "next_cursor"} and len(page["items"]) == 2
    r = await client.get(URL, params={"limit": 2, "cursor": page["next_cursor"]}, headers=admin)
    rest = r.json()
    assert rest["next_cursor"] is None
    assert [s["id"] for s in page["items"] + rest["items"]] == sorted(ids)


async def test_macros_and_preview(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    s = await make(client, admin, schedule="@hourly")
    r = await client.get(f"{URL}/{s['id']}", params={"preview": 5}, headers=admin)
    times = [ts(t) for t in r.json()["preview"]]
    assert len(times) == 5 and times[0] == ts(s["next_fire_at"])
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(times))
    assert all((t.minute, t.second) == (0, 0) for t in times)


async def test_run_fires_once_now_with_a_dated_task(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    s = await make(client, admin)
    r = await client.post(f"{URL}/{s['id']}/run", headers=admin)
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["schedule_id"] == s["id"]
    assert task["title"].startswith(TEMPLATE["title"] + " — ") and task["title"].endswith(" UTC")
    assert task["prompt"] == TEMPLATE["description"]
    assert task["capabilities"] == ["report"] and task["requester"] == "admin"
    assert task["context"]["team"] == "core"
    assert task["context"]["schedule_id"] == s["id"]
    fired_at = ts(task["context"]["fired_at"])
    assert abs(fired_at - utcnow()) < timedelta(minutes=1)
    r = await client.get(f"/api/v1/tasks/{task['id']}/events")
    types = [e["type"] for e in r.json()["events"]]
    assert types[0] == "task.created" and "schedule.fired" in types
    fired = next(e for e in r.json()["events"] if e["type"] == "schedule.fired")
    assert fired["data"] == {
        "schedule_id": s["id"],
        "fire_time": task["context"]["fired_at"],
        "task_id": task["id"],
    }
    after = (await client.get(f"{URL}/{s['id']}", headers=admin)).json()
    assert after["last_task_id"] == task["id"]
    assert after["next_fire_at"] == s["next_fire_at"]
    fires = await runtime.store.schedule_fires(s["id"], limit=10)
    assert [f.task_id for f in fires] == [task["id"]]


async def test_the_sweeper_fires_when_the_time_comes(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    s = await make(client, admin, schedule="0 9 * * *")
    due = utcnow() - timedelta(seconds=1)
    await set_next_fire(runtime, s["id"], due)
    runtime.sweeper.poke()

    async def probe() -> list[dict[str, Any]]:
        return await fired_tasks(client, s["id"])

    tasks = await eventually(probe, "the schedule to fire")
    assert len(tasks) == 1
    assert ts(tasks[0]["context"]["fired_at"]) == due
    after = (await client.get(f"{URL}/{s['id']}", headers=admin)).json()
    assert ts(after["last_fire_at"]) == due and after["last_task_id"] == tasks[0]["id"]
    nxt = ts(after["next_fire_at"])
    assert nxt > utcnow() and (nxt.hour, nxt.minute) == (9, 0)


async def test_pause_and_resume_skip_what_was_missed(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    s = await make(client, admin, schedule="*/5 * * * *", misfire="all", catch_up_s=86400)
    r = await client.post(f"{URL}/{s['id']}/pause", headers=admin)
    assert r.status_code == 200 and r.json()["paused"] is True
    assert r.json()["next_fire_at"] is None
    await runtime.firer.fire_due(utcnow() + timedelta(hours=2))
    assert await fired_tasks(client, s["id"]) == []
    r = await client.post(f"{URL}/{s['id']}/resume", headers=admin)
    body = r.json()
    assert r.status_code == 200 and body["paused"] is False
    assert utcnow() < ts(body["next_fire_at"]) <= utcnow() + timedelta(minutes=5)
    assert await fired_tasks(client, s["id"]) == []


async def test_patch_changes_and_recomputes(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    s = await make(client, admin)
    r = await client.patch(
        f"{URL}/{s['id']}",
        json={"schedule": "@daily", "timezone": "Asia/Tokyo", "overlap": "skip"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["schedule"], body["timezone"], body["overlap"]) == ("@daily", "Asia/Tokyo", "skip")
    local = ts(body["next_fire_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (0, 0)
    r = await client.patch(
        f"{URL}/{s['id']}", json={"task_template": {"title": "new"}}, headers=admin
    )
    assert r.json()["task_template"] == {"title": "new"}


async def test_delete_removes_it(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    s = await make(client, admin)
    r = await client.delete(f"{URL}/{s['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["id"] == s["id"]
    assert_error(await client.get(f"{URL}/{s['id']}", headers=admin), 404, "not_found")
    assert_error(await client.delete(f"{URL}/{s['id']}", headers=admin), 404, "not_found")


# --- firing on a fixed clock ---------------------------------------------------------------


@pytest.fixture
def down_since() -> datetime:
    return datetime(2099, 12, 7, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [("skip", []), ("latest", [9]), ("all", [7, 8, 9])],
)
async def test_misfire_after_downtime(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    down_since: datetime,
    misfire: str,
    expected: list[int],
) -> None:
    s = await make(client, admin, schedule="0 * * * *", misfire=misfire, catch_up_s=3 * 3600)
    # Years ahead, so the running sweeper never reaches it: the fixed clock is the `now`
    # given to the firer.
    await set_next_fire(runtime, s["id"], down_since)
    back = down_since + timedelta(hours=5, minutes=20)
    await runtime.firer.fire_due(back)
    tasks = await fired_tasks(client, s["id"])
    hours = sorted(ts(t["context"]["fired_at"]).hour for t in tasks)
    assert hours == expected
    after = await runtime.store.get_schedule(s["id"])
    assert after is not None and after.next_fire_at == datetime(2099, 12, 7, 10, 0, tzinfo=UTC)
    # Looking again at the same moment fires nothing more.
    await runtime.firer.fire_due(back)
    assert len(await fired_tasks(client, s["id"])) == len(expected)


async def test_overlap_skip_holds_back_while_the_last_task_is_unfinished(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    s = await make(client, admin, schedule="0 * * * *", overlap="skip")
    first = (await client.post(f"{URL}/{s['id']}/run", headers=admin)).json()
    t = datetime(2099, 12, 7, 9, 0, tzinfo=UTC)
    await set_next_fire(runtime, s["id"], t)
    await runtime.firer.fire_due(t + timedelta(seconds=1))
    assert [x["id"] for x in await fired_tasks(client, s["id"])] == [first["id"]]
    after = await runtime.store.get_schedule(s["id"])
    assert after is not None and after.next_fire_at == t + timedelta(hours=1)
    # Once it is finished, the next fire time fires.
    r = await client.patch(
        f"/api/v1/tasks/{first['id']}", json={"status": "cancelled"}, headers=admin
    )
    assert r.status_code == 200, r.text
    await runtime.firer.fire_due(t + timedelta(hours=1, seconds=1))
    assert len(await fired_tasks(client, s["id"])) == 2


async def test_overlap_cancel_previous_cancels_the_last_task(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    s = await make(client, admin, schedule="0 * * * *", overlap="cancel_previous")
    first = (await client.post(f"{URL}/{s['id']}/run", headers=admin)).json()
    t = datetime(2099, 12, 7, 9, 0, tzinfo=UTC)
    await set_next_fire(runtime, s["id"], t)
    await runtime.firer.fire_due(t + timedelta(seconds=1))
    tasks = {x["id"]: x for x in await fired_tasks(client, s["id"])}
    assert len(tasks) == 2
    assert tasks[first["id"]]["status"] == "cancelled"
    r = await client.get(f"/api/v1/tasks/{first['id']}/events")
    assert "task.cancelled" in [e["type"] for e in r.json()["events"]]
    (second,) = [x for x in tasks.values() if x["id"] != first["id"]]
    assert second["status"] != "cancelled"


# --- bad input -------------------------------------------------------------------------------


async def count_schedules(client: httpx.AsyncClient, admin: dict[str, str]) -> int:
    return len((await client.get(URL, headers=admin)).json()["items"])


@pytest.mark.parametrize("expr", ["0 9 * *", "0 9 * * 1-5 *", "99 * * * *", "@reboot", "x"])
async def test_a_bad_cron_is_422_naming_schedule(
    client: httpx.AsyncClient, admin: dict[str, str], expr: str
) -> None:
    body = {"name": "n", "schedule": expr, "task_template": TEMPLATE}
    err = assert_error(await client.post(URL, json=body, headers=admin), 422, "invalid_schedule")
    assert err["details"]["field"] == "schedule"
    assert await count_schedules(client, admin) == 0


async def test_a_bad_time_zone_is_422_naming_timezone(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = {"name": "n", "schedule": "@daily", "timezone": "Mars/Base", "task_template": TEMPLATE}
    err = assert_error(await client.post(URL, json=body, headers=admin), 422, "invalid_timezone")
    assert err["details"]["field"] == "timezone"
    s = await make(client, admin)
    r = await client.patch(f"{URL}/{s['id']}", json={"timezone": "Nowhere/X"}, headers=admin)
    assert assert_error(r, 422, "invalid_timezone")["details"]["field"] == "timezone"
    r = await client.patch(f"{URL}/{s['id']}", json={"schedule": "bad"}, headers=admin)
    assert assert_error(r, 422, "invalid_schedule")["details"]["field"] == "schedule"
    unchanged = (await client.get(f"{URL}/{s['id']}", headers=admin)).json()
    assert (unchanged["timezone"], unchanged["schedule"]) == ("UTC", "0 9 * * 1-5")


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ({}, "task_template.title"),
        ({"title": "t", "priority": "urgent"}, "task_template.priority"),
        ({"title": "t", "timeout_s": 0}, "task_template.timeout_s"),
        ({"title": "t", "unknown": 1}, "task_template.unknown"),
        ({"title": "t", "idempotency_key": "k"}, "task_template.idempotency_key"),
    ],
)
async def test_a_template_that_would_not_make_a_task_is_422_naming_its_field(
    client: httpx.AsyncClient, admin: dict[str, str], template: dict[str, Any], field: str
) -> None:
    body = {"name": "n", "schedule": "@daily", "task_template": template}
    err = assert_error(
        await client.post(URL, json=body, headers=admin), 422, "invalid_task_template"
    )
    assert err["details"]["field"] == field
    assert field in err["message"]
    assert await count_schedules(client, admin) == 0


async def test_unknown_schedule_is_404_everywhere(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "nope"),
        ("PATCH", "nope"),
        ("DELETE", "nope"),
        ("POST", "nope/pause"),
        ("POST", "nope/resume"),
        ("POST", "nope/run"),
    ]:
        body = {"name": "x"} if method == "PATCH" else None
        r = await client.request(method, f"{URL}/{path}", json=body, headers=admin)
        assert_error(r, 404, "not_found")


async def test_other_bad_input(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for body in [
        {"schedule": "@daily", "task_template": TEMPLATE},
        {"name": "n", "schedule": "@daily", "task_template": TEMPLATE, "misfire": "never"},
        {"name": "n", "schedule": "@daily", "task_template": TEMPLATE, "overlap": "maybe"},
        {"name": "n", "schedule": "@daily", "task_template": TEMPLATE, "catch_up_s": -1},
        {"name": "n", "schedule": "@daily", "task_template": "title"},
    ]:
        assert_error(await client.post(URL, json=body, headers=admin), 422, "validation_error")
    s = await make(client, admin)
    r = await client.get(f"{URL}/{s['id']}", params={"preview": 1000}, headers=admin)
    assert_error(r, 422, "validation_error")
    r = await client.patch(f"{URL}/{s['id']}", json={"name": None}, headers=admin)
    assert_error(r, 422, "validation_error")
    assert await count_schedules(client, admin) == 1


async def test_schedules_are_for_admins(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    body = {"name": "n", "schedule": "@daily", "task_template": TEMPLATE}
    # Without a token: 401, asked for the admin token.
    assert_error(await client.post(URL, json=body), 401, "admin_token_required")
    s = await make(client, admin)
    assert_error(await client.get(URL), 401, "admin_token_required")
    assert_error(await client.post(f"{URL}/{s['id']}/run"), 401, "admin_token_required")


# --- two replicas on PostgreSQL ------------------------------------------------------------


@pytest.mark.postgres
async def test_two_runtimes_on_one_database_fire_each_time_once(
    tmp_path: Path, postgres_url: str
) -> None:
    tick = {"assignment": {"tick_interval_ms": 50}}
    a = Runtime.build(make_settings(tmp_path / "a", postgres_url, **tick))
    b = Runtime.build(make_settings(tmp_path / "b", postgres_url, **tick))
    async with a, b:
        made = [
            await a.schedules.create(
                name=f"s{i}",
                schedule="0 0 1 1 *",
                task_template={"title": "tick"},
                caller=Caller("admin"),
            )
            for i in range(10)
        ]
        due = utcnow() + timedelta(milliseconds=300)
        for s in made:
            await set_next_fire(a, s.id, due)
        a.sweeper.poke()
        b.sweeper.poke()

        async def all_fired() -> bool:
            fired = [await a.store.get_schedule(s.id) for s in made]
            return all(s is not None and s.last_fire_at == due for s in fired)

        await eventually(all_fired, "both replicas to fire the schedules")
        # Each replica looking again at the same moment finds nothing left to fire.
        later = due + timedelta(seconds=1)
        assert await asyncio.gather(a.firer.fire_due(later), b.firer.fire_due(later)) == [0, 0]
        events = await a.store.read_events(after=0, limit=10_000)
        fired = [e for e in events if e.type == "schedule.fired"]
        assert sorted(e.data["schedule_id"] for e in fired) == sorted(s.id for s in made)
        for s in made:
            fires = await a.store.schedule_fires(s.id, limit=10)
            assert [f.fire_time for f in fires] == [due]
        assert a.firer.fired + b.firer.fired == len(made)


async def test_a_fired_task_is_assigned_like_any_other(
    client: httpx.AsyncClient, admin: dict[str, str], register: Any
) -> None:
    await register("iris", capabilities=("report",))
    s = await make(client, admin, task_template={**TEMPLATE, "assigned_to": "iris"})
    task = (await client.post(f"{URL}/{s['id']}/run", headers=admin)).json()

    async def assigned() -> bool:
        r = await client.get(f"/api/v1/tasks/{task['id']}")
        return bool(r.json()["assignee"] == "iris")

    await eventually(assigned, "the fired task to go to iris")


@pytest.fixture
async def quiet(tmp_path: Path) -> Any:
    """A runtime with no sweeper of its own: only the fixed clock of the test fires."""
    async with Runtime.build(make_settings(tmp_path), background=False) as rt:
        yield rt


@pytest.mark.parametrize(
    ("first", "start", "end", "local_times"),
    [
        # Clocks go back: 02:30 happens twice, fires once.
        (
            "2026-10-25T02:30:00+02:00",
            "2026-10-24T22:00:00+00:00",
            "2026-10-26T03:00:00+00:00",
            ["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"],
        ),
        # Clocks go forward: 02:30 does not exist, fires at 03:00.
        (
            "2026-03-29T03:00:00+02:00",
            "2026-03-28T22:00:00+00:00",
            "2026-03-30T03:00:00+00:00",
            ["2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"],
        ),
    ],
)
async def test_firing_across_daylight_saving_changes_on_a_fixed_clock(
    quiet: Runtime, first: str, start: str, end: str, local_times: list[str]
) -> None:
    s = await quiet.schedules.create(
        name="nightly",
        schedule="30 2 * * *",
        timezone="Europe/Berlin",
        task_template={"title": "Nightly"},
        caller=Caller("admin"),
    )
    await set_next_fire(quiet, s.id, datetime.fromisoformat(first))
    now = datetime.fromisoformat(start)
    while now <= datetime.fromisoformat(end):
        await quiet.firer.fire_due(now)
        now += timedelta(minutes=10)
    page = await quiet.store.list_tasks(TaskFilter(), limit=100, cursor=None, descending=False)
    titles = [t.title for t in page.items if t.schedule_id == s.id]
    assert titles == [f"Nightly — {x}" for x in local_times]
