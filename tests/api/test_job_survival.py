"""Background work never dies silently: a failure injected into each background job is
logged, shown by /health (503 while the job is down), counted by /metrics, and the job
goes on; a record that keeps failing is set aside instead of blocking the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from dispatchd.domain.models import Event, Task
from dispatchd.events.follower import Backoff, Follower
from dispatchd.jobs import Backoff as JobBackoff
from dispatchd.jobs import Jobs, JobState, supervise
from dispatchd.runtime import Runtime
from tests.api.helpers import Register, create_code_task, eventually, wait_assigned
from tests.api.job_helpers import Boom, health_says, metric, ops_client
from tests.api.webhook_helpers import create_webhook

pytestmark = pytest.mark.usefixtures("quiet_job_logs")

FAST = Backoff(0.01, 0.05)


@pytest.fixture
def quiet_job_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"events": {"prune_interval_s": 0.05}}


@pytest.fixture
async def ops(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with ops_client(runtime) as c:
        yield c


async def test_health_lists_every_background_job(ops: httpx.AsyncClient) -> None:
    r = await ops.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["jobs_down"] == []
    for job in (
        "assigner",
        "sweeper",
        "presence",
        "retention",
        "webhooks",
        "webhook sender",
        "webhook retention",
        "notifier",
        "metrics",
        "commit listener",
    ):
        assert body["jobs"][job]["state"] in ("starting", "running"), job
        assert body["jobs"][job]["errors"] == 0


async def test_a_failing_assigner_is_reported_and_recovers(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing = [True]
    original = runtime.assigner.handle

    async def handle(events: Sequence[Event]) -> None:
        if failing[0]:
            raise Boom("injected into the assigner")
        await original(events)

    monkeypatch.setattr(runtime.assigner, "handle", handle)
    task = await create_code_task(client)  # nobody to take it yet
    await register("w1")  # the assigner would offer it the task: it fails instead
    body = await health_says(ops, "assigner", down=True)
    assert body["status"] == "unavailable"
    assert "Boom: injected into the assigner" in body["jobs"]["assigner"]["last_error"]
    assert "handling events" in body["jobs"]["assigner"]["doing"]
    assert await metric(ops, "dispatchd_job_errors_total", "assigner") >= 1
    assert any(
        "assignment failed while handling events" in r.getMessage() and r.exc_info
        for r in caplog.records
    )

    failing[0] = False
    # The events of the failed passes are not lost: the task goes to the agent.
    await wait_assigned(client, task["id"], "w1")
    await health_says(ops, "assigner", down=False)
    # And the broker goes on assigning.
    later = await create_code_task(client, capabilities=["review"])
    await register("w2", ["review"])
    assert (await wait_assigned(client, later["id"], "w2"))["assignee"] == "w2"


async def test_a_task_the_assigner_cannot_place_is_set_aside(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poison = await create_code_task(client, title="poison", priority="critical")
    good = [await create_code_task(client, title=f"good {i}") for i in range(2)]
    plan = runtime.assigner.placer.plan

    def plan_or_fail(tasks: Sequence[Task], *args: Any, **kwargs: Any) -> Any:
        if any(t.title == "poison" for t in tasks):
            raise Boom("this task cannot be placed")
        return plan(tasks, *args, **kwargs)

    monkeypatch.setattr(runtime.assigner.placer, "plan", plan_or_fail)
    await register("w1", max_concurrent=5)
    for task in good:
        await wait_assigned(client, task["id"], "w1")
    assert poison["id"] in runtime.assigner.set_aside
    r = await client.get(f"/api/v1/tasks/{poison['id']}")
    assert r.json()["status"] == "pending"
    assert await metric(ops, "dispatchd_job_set_aside_total", "assigner") == 1
    body = await health_says(ops, "assigner", down=False)
    assert body["jobs"]["assigner"]["set_aside"] == 1
    # New work still flows past it.
    later = await create_code_task(client, title="later")
    await wait_assigned(client, later["id"], "w1")


async def test_a_failing_sweeper_is_reported_and_recovers(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing = [True]
    original = runtime.sweeper.sweep

    async def sweep() -> int:
        if failing[0]:
            raise Boom("injected into the sweeper")
        return await original()

    monkeypatch.setattr(runtime.sweeper, "sweep", sweep)
    runtime.sweeper.poke()
    await health_says(ops, "sweeper", down=True)
    assert await metric(ops, "dispatchd_job_errors_total", "sweeper") >= 1
    # Assignment does not depend on it.
    await register("w1")
    task = await create_code_task(client)
    await wait_assigned(client, task["id"], "w1")
    failing[0] = False
    runtime.sweeper.poke()
    await health_says(ops, "sweeper", down=False)


async def test_a_task_the_sweeper_cannot_act_on_is_set_aside(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def act(task_id: str, compute: Any) -> None:
        calls.append(task_id)
        if task_id == "poison":
            raise Boom("cannot time this one out")

    monkeypatch.setattr(runtime.sweeper, "_act", act)
    for _ in range(4):
        await runtime.sweeper._guard("poison", "timing out", runtime.sweeper._act, "poison", None)
        await runtime.sweeper._guard("fine", "timing out", runtime.sweeper._act, "fine", None)
    # Tried POISON_AFTER times, then left alone; the other task is acted on every time.
    assert calls.count("poison") == 3
    assert calls.count("fine") == 4
    assert "poison" in runtime.sweeper.set_aside
    assert runtime.jobs.status("sweeper").set_aside_count == 1


async def test_a_failing_pruner_is_reported_and_recovers(
    runtime: Runtime, ops: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = [True]
    original = runtime.pruner.prune

    async def prune(now: Any = None) -> Any:
        if failing[0]:
            raise Boom("injected into retention")
        return await original(now)

    monkeypatch.setattr(runtime.pruner, "prune", prune)
    await health_says(ops, "retention", down=True)
    assert await metric(ops, "dispatchd_job_errors_total", "retention") >= 1
    failing[0] = False
    await health_says(ops, "retention", down=False)


def follower_of(runtime: Runtime, job: str) -> Follower:
    return {
        "metrics": runtime.metrics_follower.follower,
        "notifier": runtime.notifier.follower,
        "webhooks": runtime.webhook_dispatcher.follower,
    }[job]


@pytest.mark.parametrize("job", ["metrics", "notifier", "webhooks"])
async def test_an_event_a_follower_cannot_handle_is_set_aside(
    job: str,
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if job == "webhooks":
        # A receiver that is not there: the deliveries are written all the same.
        await create_webhook(client, "http://127.0.0.1:9/hook")
    follower = follower_of(runtime, job)
    follower.backoff = FAST
    handled: list[int] = []
    original = follower.consumer.handle

    async def handle(events: Sequence[Event]) -> None:
        if any(e.type == "task.created" and e.agent_id == "poisoner" for e in events):
            raise Boom(f"{job} cannot handle this event")
        await original(events)
        handled.extend(e.id for e in events if e.id is not None)

    monkeypatch.setattr(follower.consumer, "handle", handle)
    r = await client.post(
        "/api/v1/tasks", json={"title": "poison"}, headers={"X-Agent-ID": "poisoner"}
    )
    assert r.status_code == 201, r.text
    after = await create_code_task(client, title="after")
    r = await client.get(f"/api/v1/tasks/{after['id']}/events")
    [created] = [e for e in r.json()["events"] if e["type"] == "task.created"]
    # The event behind the poisoned one is handled; the poisoned one is set aside.
    await eventually(lambda: int(created["id"]) in handled, f"{job} past the poisoned event")
    assert await metric(ops, "dispatchd_job_set_aside_total", job) == 1
    assert await metric(ops, "dispatchd_job_errors_total", job) >= 6
    status = runtime.jobs.status(job)
    assert status.set_aside_count == 1 and "Boom" in (status.last_error or "")
    await health_says(ops, job, down=False)


async def test_a_failing_follower_is_down_then_up(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    follower = runtime.notifier.follower
    follower.backoff = FAST
    failing = [True]
    original = follower.consumer.resume

    async def resume() -> int | None:
        if failing[0]:
            raise Boom("cannot resume")
        return await original()

    monkeypatch.setattr(follower.consumer, "resume", resume)
    follower.reload()
    await create_code_task(client)
    await health_says(ops, "notifier", down=True)
    failing[0] = False
    await health_says(ops, "notifier", down=False)


async def test_a_crashed_job_is_restarted_and_counted() -> None:
    seen: list[tuple[str, str]] = []
    jobs = Jobs(lambda job, kind: seen.append((job, kind)))
    status = jobs.status("flaky")
    runs = [0]
    running = asyncio.Event()

    async def start() -> None:
        runs[0] += 1
        if runs[0] <= 2:
            raise Boom(f"crash {runs[0]}")
        running.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise(status, start, backoff=JobBackoff(0.01, 0.02)))
    try:
        await asyncio.wait_for(running.wait(), 5)
        assert status.restarts == 2
        assert status.state is JobState.RUNNING and not status.down
        assert status.last_error == "Boom: crash 2"
        assert seen.count(("flaky", "restart")) == 2
        assert seen.count(("flaky", "error")) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
