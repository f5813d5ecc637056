"""The async SDK against a real server: every call with its typed result, and the
error tree as the server's answers map onto it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import anyio
import pytest

import dispatchd
import dispatchd.client
from dispatchd.client import (
    ApiError,
    AsyncClient,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidTransition,
    NotFound,
    StaleAttempt,
    Unauthorized,
)
from dispatchd.client.models import (
    Agent,
    AgentRemoved,
    Claim,
    Comment,
    CompleteItemOut,
    Delivery,
    Event,
    EventPage,
    ExplainOut,
    NotificationPage,
    Page,
    QueueOut,
    Registration,
    Task,
    TaskDetail,
    TaskStatus,
    Webhook,
    WebhookCreated,
    WebhookRemoved,
)
from tests.agent.conftest import LiveServer

MakeClient = Callable[..., AsyncClient]


@pytest.fixture
async def make_client(live_server: LiveServer) -> AsyncIterator[MakeClient]:
    """Clients of the live server, closed at the end of the test."""
    made: list[AsyncClient] = []

    def make(agent_id: str, **kwargs: Any) -> AsyncClient:
        client = AsyncClient(live_server.url, agent_id=agent_id, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def admin(make_client: MakeClient, live_server: LiveServer, unique: str) -> AsyncClient:
    """An operator: the admin token, an agent id of its own."""
    return make_client(f"ops-{unique}", admin_token=live_server.admin_token)


async def registered(make_client: MakeClient, name: str, tag: str, **kwargs: Any) -> AsyncClient:
    client = make_client(name)
    await client.register_agent(capabilities=[tag], **kwargs)
    return client


# --- the public surface -----------------------------------------------------------------


def test_exported_members() -> None:
    """`__all__` lists exactly the public names of the SDK package, and the top-level
    package offers both clients."""
    public = {
        name
        for name, value in vars(dispatchd.client).items()
        if not name.startswith("_") and not isinstance(value, type(sys))
    }
    public.discard("annotations")
    assert set(dispatchd.client.__all__) == public
    assert set(dispatchd.__all__) == {
        "AsyncClient",
        "Client",
        "Job",
        "Runner",
        "Task",
        "TaskFailed",
        "Worker",
        "__version__",
    }
    for name in dispatchd.__all__:
        assert getattr(dispatchd, name) is not None
    with pytest.raises(AttributeError):
        _ = dispatchd.Nothing  # type: ignore[attr-defined]
    assert dispatchd.AsyncClient is AsyncClient
    assert dispatchd.Client is dispatchd.client.Client


def test_sdk_import_stays_light() -> None:
    """`import dispatchd` does not load the SDK, and the SDK does not load the server's
    web framework, ASGI server or database driver."""
    code = (
        "import sys, dispatchd\n"
        "assert 'dispatchd.client' not in sys.modules\n"
        "import dispatchd.client\n"
        "heavy = {'fastapi', 'starlette', 'uvicorn', 'psycopg', 'sse_starlette', 'nats'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_notification_models_are_the_servers() -> None:
    """The SDK parses notifications with the models the route answers with."""
    from dispatchd.api.routes import notifications as server
    from dispatchd.client import models

    routes = {getattr(r, "path", ""): r for r in server.router.routes}
    listing = routes["/api/v1/notifications"]
    assert getattr(listing, "response_model", None) is models.NotificationPage
    assert (
        models.Notification is models.NotificationPage.model_fields["items"].annotation.__args__[0]
    )


# --- tasks ------------------------------------------------------------------------------


async def test_register_keeps_token_and_reregister_updates(
    make_client: MakeClient, unique: str
) -> None:
    client = make_client(f"agent-{unique}")
    first = await client.register_agent(capabilities={f"tag-{unique}": 0.5}, max_concurrent=2)
    assert isinstance(first, Registration)
    assert first.created is True
    assert first.token and client.token == first.token
    assert first.agent.capabilities == {f"tag-{unique}": 0.5}

    again = await client.register_agent(description="second time")
    assert again.created is False and again.token is None
    assert client.token == first.token  # kept, and still accepted by the server
    assert again.agent.description == "second time"


async def test_task_lifecycle(make_client: MakeClient, admin: AsyncClient, unique: str) -> None:
    tag = f"life-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag)
    requester = make_client(f"req-{unique}")

    created = await requester.create_task(
        "Write the summary",
        prompt="Summarise the report",
        capabilities=[tag],
        priority="high",
        labels=["docs"],
        context={"a": 1, "drop": True},
        timeout_s=600,
        max_attempts=3,
        model="small",
    )
    assert isinstance(created, Task)
    assert created.status in (TaskStatus.PENDING, TaskStatus.ASSIGNED)
    assert created.context == {"a": 1, "drop": True} and created.labels == ["docs"]

    listed = await requester.list_tasks(capability=tag, status=["pending", "assigned"])
    assert isinstance(listed, Page) and [t.id for t in listed.items] == [created.id]
    assert [t.id async for t in requester.iter_tasks(capability=tag, limit=1)] == [created.id]

    claim = await worker.claim(max_tasks=2, wait_s=5)
    assert isinstance(claim, Claim)
    assert [t.id for t in claim.tasks] == [created.id]
    task = claim.tasks[0]
    assert task.status is TaskStatus.RUNNING and task.assignee == worker.agent_id

    patched = await worker.update_task(task.id, context={"b": 2, "drop": None})
    assert patched.context == {"a": 1, "b": 2}

    progressed = await worker.report_progress(task.id, "half way", 50, attempt=task.attempt)
    assert progressed.progress == {"message": "half way", "percent": 50}
    comment = await worker.add_comment(task.id, "looking at section 2")
    assert isinstance(comment, Comment) and comment.author == worker.agent_id

    asked = await worker.request_input(task.id, "Which format?", attempt=task.attempt)
    assert asked.status is TaskStatus.WAITING_INPUT and asked.question == "Which format?"
    answered = await requester.provide_input(task.id, "Markdown")
    assert answered.status is TaskStatus.RUNNING

    done = await worker.complete_task(task.id, {"text": "ok"}, "summary", attempt=task.attempt)
    assert done.status is TaskStatus.COMPLETED and done.result == {"text": "ok"}

    detail = await requester.get_task(task.id)
    assert isinstance(detail, TaskDetail)
    assert [a.outcome for a in detail.attempts] == ["completed"]
    assert [p.message for p in detail.progress_log] == ["half way"]
    assert [c.body for c in detail.comments] == ["looking at section 2"]

    events = await requester.task_events(task.id)
    assert all(isinstance(e, Event) and e.task_id == task.id for e in events)
    types = [e.type for e in events]
    assert types[0] == "task.created" and types[-1] == "task.completed"

    explained = await admin.explain_task(task.id)
    assert isinstance(explained, ExplainOut) and explained.task_id == task.id


async def test_review_fail_retry_cancel(
    make_client: MakeClient, admin: AsyncClient, unique: str
) -> None:
    tag = f"rev-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag)

    reviewed = await admin.create_task("Needs a review", capabilities=[tag], review=True)
    claim = await worker.claim()
    assert [t.id for t in claim.tasks] == [reviewed.id]
    in_review = await worker.complete_task(reviewed.id, "draft")
    assert in_review.status is TaskStatus.REVIEW
    approved = await admin.review_task(reviewed.id, "approved", "fine")
    assert approved.status is TaskStatus.COMPLETED

    failing = await admin.create_task("Will fail", capabilities=[tag])
    await worker.claim()
    failed = await worker.fail_task(failing.id, "broken input", retryable=False)
    assert failed.status is TaskStatus.FAILED and failed.error == "broken input"
    retried = await admin.retry_task(failing.id)
    assert retried.status in (TaskStatus.PENDING, TaskStatus.ASSIGNED)

    cancelled = await admin.cancel_task(failing.id, reason="not needed")
    assert cancelled.status is TaskStatus.CANCELLED


async def test_assigned_task_is_started_and_queue_claim(
    make_client: MakeClient, admin: AsyncClient, unique: str
) -> None:
    tag = f"start-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag)
    assigned = await admin.create_task("Direct", assigned_to=worker.agent_id)
    assert assigned.status is TaskStatus.ASSIGNED
    started = await worker.start_task(assigned.id, attempt=assigned.attempt)
    assert started.status is TaskStatus.RUNNING

    queued = await admin.create_task("Queued", capabilities=[tag])
    one = await worker.claim_one()
    assert isinstance(one, QueueOut)
    assert one.task is not None and one.task.id == queued.id and one.reason is None
    none = await worker.claim_one(max_capacity=1)
    assert none.task is None and none.reason == "at_capacity"


async def test_batches(make_client: MakeClient, admin: AsyncClient, unique: str) -> None:
    tag = f"batch-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag, max_concurrent=5)
    made = await admin.create_tasks(
        [{"title": f"item {i}", "capabilities": [tag], "context": {"i": i}} for i in range(3)]
    )
    assert [t.title for t in made] == ["item 0", "item 1", "item 2"]
    claim = await worker.claim(max_tasks=3)
    assert {t.id for t in claim.tasks} == {t.id for t in made}

    items = [{"task_id": t.id, "result": t.title, "attempt": t.attempt} for t in claim.tasks]
    items.append({"task_id": "no-such-task", "result": None})
    answers = await worker.complete_tasks(items)
    assert all(isinstance(a, CompleteItemOut) for a in answers)
    assert [a.ok for a in answers] == [True, True, True, False]
    assert answers[-1].error is not None and answers[-1].error.code == "not_found"


# --- agents -----------------------------------------------------------------------------


async def test_agent_calls(make_client: MakeClient, admin: AsyncClient, unique: str) -> None:
    tag = f"ag-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag, room=f"room-{unique}")

    got = await worker.get_agent(worker.agent_id)
    assert isinstance(got, Agent) and got.room == f"room-{unique}"
    updated = await worker.update_agent(worker.agent_id, max_concurrent=4, description="d")
    assert updated.max_concurrent == 4 and updated.description == "d"
    beat = await worker.heartbeat(status="busy")
    assert beat.status == "busy" and beat.last_heartbeat_at is not None

    page = await admin.list_agents(room=f"room-{unique}")
    assert isinstance(page, Page) and [a.id for a in page.items] == [worker.agent_id]
    assert [a.id async for a in admin.iter_agents(capability=tag, limit=1)] == [worker.agent_id]

    drained = await admin.drain_agent(worker.agent_id)
    assert drained.draining is True
    assert (await admin.undrain_agent(worker.agent_id)).draining is False

    held = await admin.create_task("held", capabilities=[tag])
    await worker.claim()
    removed = await worker.deregister_agent()
    assert isinstance(removed, AgentRemoved) and removed.requeued == [held.id]
    with pytest.raises(NotFound):
        await admin.get_agent(worker.agent_id)


# --- events -----------------------------------------------------------------------------


async def test_read_events_pages_and_long_polls(admin: AsyncClient, unique: str) -> None:
    start = await admin.read_events("latest")
    assert isinstance(start, EventPage) and start.events == []

    first = await admin.create_task("one", capabilities=[f"ev-{unique}"])
    page = await admin.read_events(start.next_cursor, types=["task.created"])
    assert [(e.type, e.task_id) for e in page.events] == [("task.created", first.id)]

    second: list[Task] = []

    async def later() -> None:
        await anyio.sleep(0.2)
        second.append(await admin.create_task("two", capabilities=[f"ev-{unique}"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        waited = await admin.read_events(page.next_cursor, types="task.created", wait_s=20)
    assert [e.task_id for e in waited.events] == [second[0].id]


async def test_stream_events_follows_the_log(admin: AsyncClient, unique: str) -> None:
    start = (await admin.read_events("latest")).next_cursor
    made = [await admin.create_task(f"s{i}", capabilities=[f"st-{unique}"]) for i in range(3)]
    seen: list[Event] = []
    with anyio.fail_after(20):
        async with aclosing(admin.stream_events(start, types=["task.created"])) as stream:
            async for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    break
    assert [e.task_id for e in seen] == [t.id for t in made]
    assert [int(e.id) for e in seen] == sorted(int(e.id) for e in seen)


# --- operations -------------------------------------------------------------------------


async def test_stats_and_notifications(
    make_client: MakeClient, admin: AsyncClient, unique: str
) -> None:
    stats = await admin.stats()
    assert {"queue", "agents", "throughput"} <= stats.keys()

    tag = f"note-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag)
    task = await admin.create_task("Ask", capabilities=[tag])
    await worker.claim()
    await worker.request_input(task.id, "Which one?")

    found: NotificationPage | None = None
    with anyio.fail_after(20):
        while found is None:
            page = await admin.list_notifications(unacknowledged=True, limit=500)
            mine = [n for n in page.items if n.task_id == task.id]
            if mine:
                found = page
            else:
                await anyio.sleep(0.1)
    entry = next(n for n in found.items if n.task_id == task.id)
    assert entry.acknowledged_at is None
    assert await admin.ack_notifications([entry.id]) == 1
    assert isinstance(await admin.ack_notifications(up_to=entry.id), int)
    after = await admin.list_notifications(unacknowledged=True, limit=500)
    assert entry.id not in [n.id for n in after.items]


async def test_webhook_crud(admin: AsyncClient, unique: str) -> None:
    created = await admin.create_webhook(
        "http://127.0.0.1:9/hook", types=["task.completed"], description=unique
    )
    assert isinstance(created, WebhookCreated) and len(created.secret) >= 16
    hook = created.webhook
    got = await admin.get_webhook(hook.id)
    assert isinstance(got, Webhook) and got.types == ["task.completed"]
    listed = await admin.list_webhooks(limit=500)
    assert hook.id in [w.id for w in listed.items]
    changed = await admin.update_webhook(hook.id, active=False, types="task.*,agent")
    assert changed.active is False and changed.types == ["task.*", "agent.*"]
    deliveries = await admin.list_deliveries(hook.id)
    assert isinstance(deliveries, Page)
    assert all(isinstance(d, Delivery) for d in deliveries.items)
    removed = await admin.delete_webhook(hook.id)
    assert isinstance(removed, WebhookRemoved) and removed.deleted
    with pytest.raises(NotFound):
        await admin.get_webhook(hook.id)


# --- errors -----------------------------------------------------------------------------


async def test_not_found(admin: AsyncClient) -> None:
    with pytest.raises(NotFound) as caught:
        await admin.get_task("no-such-task")
    assert caught.value.status == 404 and caught.value.code == "not_found"
    assert "no-such-task" in caught.value.message


async def test_conflicts(make_client: MakeClient, admin: AsyncClient, unique: str) -> None:
    tag = f"conf-{unique}"
    worker = await registered(make_client, f"worker-{unique}", tag)
    task = await admin.create_task("c", capabilities=[tag])
    await worker.claim()

    with pytest.raises(StaleAttempt) as stale:
        await worker.complete_task(task.id, attempt=task.attempt + 5)
    assert stale.value.status == 409 and stale.value.code == "stale_attempt"
    assert stale.value.details["current_attempt"] == 1

    await worker.complete_task(task.id)
    with pytest.raises(InvalidTransition) as invalid:
        await admin.cancel_task(task.id)
    assert isinstance(invalid.value, Conflict) and invalid.value.code == "invalid_transition"
    assert invalid.value.details["current_state"] == "completed"


async def test_validation_error_carries_details(admin: AsyncClient) -> None:
    with pytest.raises(BadRequest) as caught:
        await admin.create_task("")
    error = caught.value
    assert error.status == 422 and error.code == "validation_error"
    assert error.details["errors"][0]["loc"][-1] == "title"


async def test_auth_errors(make_client: MakeClient, live_server: LiveServer, unique: str) -> None:
    plain = make_client(f"plain-{unique}")
    with pytest.raises(Unauthorized) as anonymous:
        await plain.list_agents()
    assert anonymous.value.status == 401 and anonymous.value.code == "admin_token_required"
    known = make_client(f"known-{unique}")
    await known.register_agent()  # now it holds its agent token: known, and not an admin
    with pytest.raises(Forbidden) as forbidden:
        await known.list_agents()
    assert forbidden.value.status == 403 and forbidden.value.code == "admin_required"

    wrong = make_client(f"wrong-{unique}", admin_token="not-the-admin-token-at-all")
    with pytest.raises(Unauthorized) as unauthorized:
        await wrong.stats()
    assert unauthorized.value.status == 401

    agent = make_client(f"tok-{unique}")
    await agent.register_agent()
    agent.token = "forged-token-value"
    with pytest.raises(Unauthorized):
        await agent.heartbeat()
    assert all(isinstance(e, ApiError) for e in (forbidden.value, unauthorized.value))
