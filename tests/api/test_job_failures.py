"""A failure injected into each background job, one job at a time: /health names the job and
answers 503 while it is down, /metrics counts its errors (and its restarts, when it
crashed), the error is logged with its traceback, and the broker keeps assigning. The
webhook sender sets aside a delivery it keeps failing on, and the deliveries behind it
still reach the receiver. (NATS, which needs a server of its own: tests/integration/
test_nats.py.)"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

import dispatchd.events.webhooks as webhooks_module
from dispatchd.domain.ids import utcnow
from dispatchd.domain.webhooks import Delivery, DeliveryStatus, Outcome
from dispatchd.engine.presence import Presence
from dispatchd.events.follower import Backoff
from dispatchd.jobs import POISON_AFTER
from dispatchd.runtime import Runtime
from dispatchd.store.postgres import LISTENER_NAME
from tests.api.helpers import Register, create_code_task, eventually, wait_assigned, wait_task
from tests.api.job_helpers import Boom, health_says, metric, ops_client
from tests.api.test_schedules import fired_tasks, set_next_fire
from tests.api.test_schedules import make as make_schedule
from tests.api.webhook_helpers import (
    FAST,
    create_webhook,
    deliveries,
    task_created,
    wait_deliveries,
    wait_requests,
)
from tests.support.receiver import Receiver

QUICK = Backoff(0.1, 0.3)


@pytest.fixture(autouse=True)
def quick_loops(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The periodic jobs take a turn every few milliseconds (set before the runtime starts:
    a loop already asleep would sleep its whole interval)."""
    monkeypatch.setattr(Presence, "interval_s", 0.05)
    monkeypatch.setattr(webhooks_module, "PRUNE_EVERY_S", 0.05)
    caplog.set_level(logging.INFO, logger="dispatchd")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"events": {"prune_interval_s": 0.05}, "webhooks": FAST}


@pytest.fixture
async def ops(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with ops_client(runtime) as c:
        yield c


# Each job: the object and the method whose failure makes its turn fail.
TURNS: dict[str, Callable[[Runtime], tuple[Any, str]]] = {
    "assigner": lambda rt: (rt.assigner, "handle"),
    "sweeper": lambda rt: (rt.sweeper, "sweep"),
    "presence": lambda rt: (rt.presence, "sweep"),
    "retention": lambda rt: (rt.pruner, "prune"),
    "webhooks": lambda rt: (rt.webhook_dispatcher.follower.consumer, "resume"),
    "webhook sender": lambda rt: (rt.webhook_dispatcher, "send_due"),
    "webhook retention": lambda rt: (rt.webhook_dispatcher, "prune_once"),
    "notifier": lambda rt: (rt.notifier, "resume"),
    "metrics": lambda rt: (rt.metrics_follower.follower.consumer, "resume"),
}


def nudge(runtime: Runtime) -> None:
    """Have `job` take a turn now rather than at its next tick."""
    runtime.sweeper.poke()
    runtime.webhook_dispatcher.changed()
    runtime.notifier.follower.reload()
    runtime.metrics_follower.follower.reload()


def quicken(runtime: Runtime) -> None:
    for follower in (
        runtime.webhook_dispatcher.follower,
        runtime.notifier.follower,
        runtime.metrics_follower.follower,
    ):
        follower.backoff = QUICK


async def keeps_assigning(client: httpx.AsyncClient, register: Register, name: str) -> None:
    """A new agent gets a new task meant for it alone."""
    await register(name, [name])
    task = await create_code_task(client, capabilities=[name])
    await wait_assigned(client, task["id"], name)


def logged_with_traceback(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> bool:
    def boom(exc: BaseException | None) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            return any(boom(member) for member in exc.exceptions)
        return isinstance(exc, Boom)

    return any(r.levelno >= level and r.exc_info and boom(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("job", list(TURNS))
async def test_a_failing_job_is_reported_and_the_broker_keeps_assigning(
    job: str,
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quicken(runtime)
    target, method = TURNS[job](runtime)
    original = getattr(target, method)
    failing = [True]

    async def fail(*args: Any, **kwargs: Any) -> Any:
        if failing[0]:
            raise Boom(f"injected into the {job}")
        return await original(*args, **kwargs)

    monkeypatch.setattr(target, method, fail)
    nudge(runtime)
    if job == "assigner":
        await create_code_task(client)  # an event for it to fail on
    body = await health_says(ops, job, down=True)
    assert body["status"] == "unavailable"
    entry = body["jobs"][job]
    assert f"Boom: injected into the {job}" in entry["last_error"]
    assert entry["doing"], "what it was doing when it failed"
    assert await metric(ops, "dispatchd_job_errors_total", job) >= 1
    assert logged_with_traceback(caplog)
    # Every other job is up: one job's failure is its own.
    assert body["jobs_down"] == [job]

    if job != "assigner":
        await keeps_assigning(client, register, "while-down")
    failing[0] = False
    nudge(runtime)
    await health_says(ops, job, down=False)
    await keeps_assigning(client, register, "after")


# Each job that runs its own loop: the module of the loop, and the object that runs it. A
# job crashes (its loop raises out of itself) when `stop_if_cancelled`, which each loop
# calls at the top of every turn, raises there; a follower's loop turns inside the one
# that keeps its lease, so it raises in both until the job has crashed.
LOOPS: dict[str, tuple[str, Callable[[Runtime], object]]] = {
    "assigner": ("dispatchd.engine.assigner", lambda rt: rt.assigner),
    "sweeper": ("dispatchd.engine.deadlines", lambda rt: rt.sweeper),
    "presence": ("dispatchd.engine.presence", lambda rt: rt.presence),
    "retention": ("dispatchd.events.retention", lambda rt: rt.pruner),
    "webhooks": ("dispatchd.events.webhooks", lambda rt: rt.webhook_dispatcher),
    "notifier": ("dispatchd.events.follower", lambda rt: rt.notifier.follower),
    "metrics": ("dispatchd.events.follower", lambda rt: rt.metrics_follower.follower),
}


@pytest.mark.parametrize("job", list(LOOPS))
async def test_a_crashed_job_is_restarted_and_the_broker_keeps_assigning(
    job: str,
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quicken(runtime)
    module, owner_of = LOOPS[job]
    owner = owner_of(runtime)
    status = runtime.jobs.status(job)
    original = importlib.import_module(module).stop_if_cancelled

    def crash() -> None:
        if sys._getframe(1).f_locals.get("self") is owner and status.restarts == 0:
            raise Boom(f"{job} crashed")
        original()

    monkeypatch.setattr(f"{module}.stop_if_cancelled", crash)
    nudge(runtime)
    await create_code_task(client)  # news for the event followers and the assigner
    body = await health_says(ops, job, down=True, state="restarting")
    assert body["status"] == "unavailable"
    assert f"Boom: {job} crashed" in body["jobs"][job]["last_error"]
    assert await metric(ops, "dispatchd_job_restarts_total", job) == 1
    assert await metric(ops, "dispatchd_job_errors_total", job) >= 1
    assert logged_with_traceback(caplog, logging.CRITICAL)

    body = await health_says(ops, job, down=False)
    assert body["jobs"][job]["restarts"] == 1
    await keeps_assigning(client, register, "after-restart")


# --- the webhook sender's set-aside -----------------------------------------------------


async def poisoned_event(client: httpx.AsyncClient) -> str:
    """A task.created event by agent `poisoner` (its delivery carries that name); its id."""
    r = await client.post(
        "/api/v1/tasks",
        json={"title": "poison", "capabilities": ["nobody"]},
        headers={"X-Agent-ID": "poisoner"},
    )
    assert r.status_code == 201, r.text
    r = await client.get(f"/api/v1/tasks/{r.json()['id']}/events")
    [created] = [e for e in r.json()["events"] if e["type"] == "task.created"]
    return str(created["id"])


async def assert_set_aside(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    hook_id: str,
    event_id: str,
    error: str,
    attempts: int,
) -> dict[str, Any]:
    """The delivery of `event_id` is failed with `error` in its reason, the set-aside is
    logged with its ids and counted, and the sender is up."""
    [failed] = [d for d in await deliveries(client, hook_id) if d["status"] == "failed"]
    assert failed["event_id"] == event_id
    assert failed["error"].startswith(f"set aside after {POISON_AFTER} failures")
    assert error in failed["error"]
    # Each try is in its history, as far as it could be written.
    assert [a["outcome"] for a in failed["attempts"]] == ["failed"] * attempts
    assert await metric(ops, "dispatchd_job_set_aside_total", "webhook sender") == 1
    assert await metric(ops, "dispatchd_job_errors_total", "webhook sender") >= POISON_AFTER
    body = await health_says(ops, "webhook sender", down=False)
    entry = body["jobs"]["webhook sender"]
    assert entry["set_aside"] == 1 and error in entry["last_error"]
    assert any(
        failed["id"] in r.getMessage() and hook_id in r.getMessage() and r.exc_info
        for r in caplog.records
        if getattr(r, "action", None) == "webhook_set_aside"
    )
    return dict(failed)


async def test_a_delivery_the_sender_cannot_sign_is_set_aside(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime.webhook_dispatcher.mishandled_retry = Backoff(0.01, 0.05)
    sign = webhooks_module.signature_header
    signing: list[bytes] = []

    def sign_or_fail(secret: str, timestamp: int, body: bytes) -> str:
        if b'"poisoner"' in body:
            signing.append(body)
            raise Boom("cannot sign this one")
        return sign(secret, timestamp, body)

    monkeypatch.setattr(webhooks_module, "signature_header", sign_or_fail)
    with Receiver() as receiver:
        hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
        poisoned = await poisoned_event(client)
        after = [await task_created(client, f"after {n}") for n in range(2)]
        got = await wait_requests(receiver, 2)
        # The deliveries behind it arrive, in order; it never does.
        assert [r.event["id"] for r in got] == after
        await wait_deliveries(client, hook["id"], 1, status="failed")
        await assert_set_aside(
            runtime,
            client,
            ops,
            caplog,
            hook["id"],
            poisoned,
            "Boom: cannot sign this one",
            POISON_AFTER,
        )
        assert len(signing) == POISON_AFTER
        # And the webhook goes on.
        later = await task_created(client, "later")
        got = await wait_requests(receiver, 3)
        assert got[-1].event["id"] == later


async def test_a_delivery_whose_outcome_cannot_be_recorded_is_set_aside(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dispatcher = runtime.webhook_dispatcher
    dispatcher.mishandled_retry = Backoff(0.01, 0.05)
    # The claim of an attempt whose outcome was lost lapses this soon.
    dispatcher.lease = timedelta(milliseconds=300)
    store = runtime.store
    claim, record = store.claim_delivery, store.record_delivery
    poisoned_ids: set[str] = set()

    async def claim_noting(*args: Any, **kwargs: Any) -> Delivery | None:
        claimed = await claim(*args, **kwargs)
        if claimed is not None and '"poisoner"' in claimed.payload:
            poisoned_ids.add(claimed.id)
        return claimed

    async def record_or_fail(outcome: Outcome) -> bool:
        # This one row takes nothing but its set-aside.
        if outcome.delivery_id in poisoned_ids and outcome.status != DeliveryStatus.FAILED:
            raise Boom("cannot record this one")
        return await record(outcome)

    monkeypatch.setattr(store, "claim_delivery", claim_noting)
    monkeypatch.setattr(store, "record_delivery", record_or_fail)
    with Receiver() as receiver:
        hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
        poisoned = await poisoned_event(client)
        after = [await task_created(client, f"after {n}") for n in range(2)]
        await wait_deliveries(client, hook["id"], 2)
        await wait_deliveries(client, hook["id"], 1, status="failed")
        await assert_set_aside(
            runtime, client, ops, caplog, hook["id"], poisoned, "Boom: cannot record this one", 1
        )
        got = [r.event["id"] for r in receiver.requests()]
        # Sent each time (the receiver drops repeats by delivery id), then the rest in order.
        assert got == [poisoned] * POISON_AFTER + after


async def test_a_job_that_goes_on_failing_stays_down(
    runtime: Runtime, ops: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def prune(now: Any = None) -> Any:
        raise Boom("never works")

    monkeypatch.setattr(runtime.pruner, "prune", prune)
    await health_says(ops, "retention", down=True)
    seen = await metric(ops, "dispatchd_job_errors_total", "retention")
    await eventually(
        lambda: _more_errors(ops, seen), "retention to go on trying, and failing", limit_s=10
    )
    r = await ops.get("/health")
    assert r.status_code == 503 and r.json()["jobs_down"] == ["retention"]


async def _more_errors(ops: httpx.AsyncClient, seen: float) -> bool:
    return await metric(ops, "dispatchd_job_errors_total", "retention") > seen


# --- the sweeper's schedules ------------------------------------------------------------


async def test_a_schedule_that_cannot_fire_is_set_aside_and_the_others_fire(
    runtime: Runtime,
    client: httpx.AsyncClient,
    admin: dict[str, str],
    ops: httpx.AsyncClient,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poisoned = await make_schedule(client, admin, name="poisoned", schedule="0 9 * * *")
    good = await make_schedule(client, admin, name="good", schedule="0 9 * * *")
    catch_up = runtime.firer._catch_up
    tried: list[str] = []

    async def catch_up_or_fail(schedule_id: str, now: Any) -> int:
        if schedule_id == poisoned["id"]:
            tried.append(schedule_id)
            raise Boom("cannot fire this one")
        return await catch_up(schedule_id, now)

    monkeypatch.setattr(runtime.firer, "_catch_up", catch_up_or_fail)
    due = utcnow() - timedelta(seconds=1)
    # The poisoned one first in line.
    await set_next_fire(runtime, poisoned["id"], due - timedelta(seconds=1))
    await set_next_fire(runtime, good["id"], due)
    runtime.sweeper.poke()
    await eventually(lambda: fired_tasks(client, good["id"]), "the good schedule to fire")

    async def paused() -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/schedules/{poisoned['id']}", headers=admin)
        return dict(r.json()) if r.json()["paused"] else None

    body = await eventually(paused, "the failing schedule to be paused")
    assert body["next_fire_at"] is None
    assert len(tried) == POISON_AFTER
    [event] = [
        e
        for e in await runtime.store.read_events(after=0, limit=1000)
        if e.type == "schedule.fire_failed"
    ]
    assert event.data["schedule_id"] == poisoned["id"]
    assert "set aside after 3 failures" in event.data["error"]
    assert "Boom: cannot fire this one" in event.data["error"]
    assert await metric(ops, "dispatchd_job_set_aside_total", "sweeper") == 1
    assert await metric(ops, "dispatchd_job_errors_total", "sweeper") >= POISON_AFTER
    health = await health_says(ops, "sweeper", down=False)
    assert health["jobs"]["sweeper"]["set_aside"] == 1
    # The sweeper goes on: the good schedule fires again when its time comes.
    await set_next_fire(runtime, good["id"], utcnow() - timedelta(milliseconds=10))
    runtime.sweeper.poke()
    await eventually(
        lambda: _at_least(fired_tasks(client, good["id"]), 2), "the good schedule again"
    )
    assert await fired_tasks(client, poisoned["id"]) == []
    await keeps_assigning(client, register, "after")


async def _at_least(tasks: Awaitable[list[Any]], count: int) -> bool:
    return len(await tasks) >= count


# --- presence ---------------------------------------------------------------------------


async def test_an_agent_presence_cannot_mark_offline_is_set_aside(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    presence = runtime.presence
    mark = presence._mark_offline
    tried: list[str] = []

    async def mark_or_fail(agent: Any) -> bool:
        if agent.id == "a-poisoned":
            tried.append(agent.id)
            raise Boom("cannot mark this one")
        return bool(await mark(agent))

    monkeypatch.setattr(presence, "_mark_offline", mark_or_fail)
    # Listed first, then one behind it; both silent at once.
    await register("a-poisoned", ["silent"])
    await register("b-silent", ["silent"])
    presence.offline_after = timedelta(milliseconds=200)

    async def offline() -> bool:
        r = await client.get("/api/v1/agents/b-silent", headers={"X-Agent-ID": "b-silent"})
        return bool(r.json()["status"] == "offline")

    await eventually(offline, "the agent behind the failing one to go offline")
    await eventually(lambda: "a-poisoned" in presence.set_aside, "the failing agent set aside")
    assert len(tried) == POISON_AFTER
    assert await metric(ops, "dispatchd_job_set_aside_total", "presence") == 1
    body = await health_says(ops, "presence", down=False)
    assert body["jobs"]["presence"]["set_aside"] == 1
    presence.offline_after = timedelta(minutes=3)
    await keeps_assigning(client, register, "after")


# --- the commit listener (PostgreSQL) ---------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_lost_commit_listener_is_counted_and_comes_back(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    database_url: str,
) -> None:
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    with psycopg.connect(database_url, autocommit=True) as admin_conn:

        def listener_pid() -> int | None:
            row = admin_conn.execute(sql, [LISTENER_NAME]).fetchone()
            return int(row[0]) if row else None

        first = await eventually(listener_pid, "the commit listener's connection")
        admin_conn.execute("SELECT pg_terminate_backend(%s)", [first])
        await eventually(
            lambda: _metric_at_least(ops, "commit listener", 1), "the lost listener counted"
        )
        again = await eventually(listener_pid, "the commit listener back")
        assert again != first
    body = await health_says(ops, "commit listener", down=False)
    entry = body["jobs"]["commit listener"]
    assert entry["errors"] >= 1 and entry["restarts"] == 0
    assert entry["last_error"] and entry["doing"] is None
    await keeps_assigning(client, register, "after")


async def _metric_at_least(ops: httpx.AsyncClient, job: str, count: float) -> bool:
    return await metric(ops, "dispatchd_job_errors_total", job) >= count


# --- the assigner's agents --------------------------------------------------------------


async def test_an_agent_whose_queue_cannot_be_read_is_set_aside(
    runtime: Runtime,
    client: httpx.AsyncClient,
    ops: httpx.AsyncClient,
    register: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claimable = runtime.store.claimable
    tried: list[str] = []

    async def claimable_or_fail(query: Any) -> Any:
        if query.agent_id == "a-poisoned":
            tried.append(query.agent_id)
            raise Boom("cannot read this one's queue")
        return await claimable(query)

    monkeypatch.setattr(runtime.store, "claimable", claimable_or_fail)
    waiting = [await create_code_task(client, capabilities=["fill"]) for _ in range(2)]
    # Offered the queue in this order when they come: the failing one first.
    await register("a-poisoned", ["fill"])
    await register("b-good", ["fill"], max_concurrent=5)
    for task in waiting:
        # Placed by whoever is best for it (the agent set aside too: only reading its
        # queue fails).
        await wait_task(client, task["id"], lambda t: t["status"] == "assigned", "assigned")
    assert "a-poisoned" in runtime.assigner.agents_set_aside
    assert len(tried) == POISON_AFTER
    assert await metric(ops, "dispatchd_job_set_aside_total", "assigner") == 1
    body = await health_says(ops, "assigner", down=False)
    assert body["jobs"]["assigner"]["set_aside"] == 1
    await keeps_assigning(client, register, "after")
