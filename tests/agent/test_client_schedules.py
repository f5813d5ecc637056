"""The SDK's schedule calls, async and blocking, against a live server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import pytest

from dispatchd.client import AsyncClient, BadRequest, Client, NotFound
from dispatchd.client.models import Page, Schedule, ScheduleDetail, ScheduleRemoved, Task
from tests.agent.conftest import LiveServer

TEMPLATE = {"title": "Weekly security audit", "priority": "high", "capabilities": ["audit"]}


@pytest.fixture
async def admin(live_server: LiveServer, unique: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        live_server.url, agent_id=f"ops-{unique}", admin_token=live_server.admin_token
    ) as client:
        yield client


@pytest.fixture
def blocking(live_server: LiveServer, unique: str) -> Iterator[Client]:
    client = Client(live_server.url, agent_id=f"ops-{unique}", admin_token=live_server.admin_token)
    try:
        yield client
    finally:
        client.close()


async def test_schedule_calls(admin: AsyncClient, unique: str) -> None:
    made = await admin.create_schedule(
        f"weekly-security-scan-{unique}", "0 2 * * 0", TEMPLATE, timezone="Europe/Paris"
    )
    assert isinstance(made, Schedule)
    assert (made.schedule, made.timezone, made.misfire, made.paused) == (
        "0 2 * * 0",
        "Europe/Paris",
        "skip",
        False,
    )
    got = await admin.get_schedule(made.id, preview=3)
    assert isinstance(got, ScheduleDetail) and len(got.preview) == 3
    assert got.preview[0] == made.next_fire_at
    listed = await admin.list_schedules(limit=500)
    assert isinstance(listed, Page) and made.id in [s.id for s in listed.items]
    changed = await admin.update_schedule(made.id, overlap="skip", catch_up_s=60)
    assert (changed.overlap, changed.catch_up_s) == ("skip", 60)
    paused = await admin.pause_schedule(made.id)
    assert paused.paused and paused.next_fire_at is None
    resumed = await admin.resume_schedule(made.id)
    assert not resumed.paused and resumed.next_fire_at is not None
    task = await admin.run_schedule(made.id)
    assert isinstance(task, Task) and task.schedule_id == made.id
    assert task.title.startswith("Weekly security audit — ")
    assert datetime.fromisoformat(task.context["fired_at"].replace("Z", "+00:00"))
    removed = await admin.delete_schedule(made.id)
    assert isinstance(removed, ScheduleRemoved) and removed.deleted
    with pytest.raises(NotFound):
        await admin.get_schedule(made.id)


async def test_bad_schedules_raise(admin: AsyncClient) -> None:
    with pytest.raises(BadRequest) as caught:
        await admin.create_schedule("n", "every tuesday", TEMPLATE)
    assert caught.value.details["field"] == "schedule"
    with pytest.raises(BadRequest) as caught:
        await admin.create_schedule("n", "@daily", {"title": "t", "priority": "asap"})
    assert caught.value.details["field"] == "task_template.priority"


def test_the_blocking_client_has_the_schedule_calls(blocking: Client, unique: str) -> None:
    made = blocking.create_schedule(f"b-{unique}", "@hourly", {"title": "tick"})
    assert blocking.get_schedule(made.id).name == f"b-{unique}"
    assert blocking.run_schedule(made.id).schedule_id == made.id
    assert blocking.pause_schedule(made.id).paused
    assert not blocking.resume_schedule(made.id).paused
    assert blocking.update_schedule(made.id, name="renamed").name == "renamed"
    assert made.id in [s.id for s in blocking.list_schedules(limit=500).items]
    assert blocking.delete_schedule(made.id).deleted
