"""The blocking `Client` against a real server: it offers every call of `AsyncClient`,
returns the same typed results, turns async iterators into iterators, and stops its loop
thread when closed, when collected, and never holds a program at exit."""

from __future__ import annotations

import gc
import inspect
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest

from dispatchd.client import (
    AsyncClient,
    BadRequest,
    Client,
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
)
from tests.agent.conftest import LiveServer

MakeClient = Callable[..., Client]


@pytest.fixture
def make_client(live_server: LiveServer) -> Iterator[MakeClient]:
    made: list[Client] = []

    def make(agent_id: str, **kwargs: Any) -> Client:
        client = Client(live_server.url, agent_id=agent_id, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def admin(make_client: MakeClient, live_server: LiveServer, unique: str) -> Client:
    return make_client(f"ops-{unique}", admin_token=live_server.admin_token)


def test_client_has_every_call_of_the_async_client() -> None:
    calls = {
        name
        for name in dir(AsyncClient)
        if not name.startswith("_")
        and (
            inspect.iscoroutinefunction(getattr(AsyncClient, name))
            or inspect.isasyncgenfunction(getattr(AsyncClient, name))
        )
    }
    calls -= {"aclose", "send", "call", "call_json"}
    assert calls - set(dir(Client)) == set()
    for name in calls:
        sync_sig = inspect.signature(getattr(Client, name))
        async_sig = inspect.signature(getattr(AsyncClient, name))
        assert list(sync_sig.parameters) == list(async_sig.parameters), name


def test_every_call(admin: Client, make_client: MakeClient, unique: str) -> None:
    tag = f"sync-{unique}"
    worker = make_client(f"worker-{unique}")
    registration = worker.register_agent(capabilities=[tag], max_concurrent=3)
    assert isinstance(registration, Registration) and registration.created
    assert worker.token == registration.token

    assert isinstance(worker.get_agent(worker.agent_id), Agent)
    assert worker.update_agent(worker.agent_id, description="sync").description == "sync"
    assert worker.heartbeat().id == worker.agent_id
    assert [a.id for a in admin.list_agents(capability=tag).items] == [worker.agent_id]
    assert [a.id for a in admin.iter_agents(capability=tag)] == [worker.agent_id]
    assert admin.drain_agent(worker.agent_id).draining
    assert not admin.undrain_agent(worker.agent_id).draining

    start = admin.read_events("latest").next_cursor
    task = admin.create_task("sync task", capabilities=[tag], context={"k": 1})
    assert isinstance(task, Task)
    batch = admin.create_tasks([{"title": "b1", "capabilities": [tag]}])
    page = admin.list_tasks(capability=tag, order="asc")
    assert isinstance(page, Page) and [t.id for t in page.items] == [task.id, batch[0].id]
    assert [t.id for t in admin.iter_tasks(capability=tag, limit=1, order="asc")] == [
        task.id,
        batch[0].id,
    ]
    assert isinstance(admin.explain_task(task.id), ExplainOut)

    claim = worker.claim(max_tasks=2, wait_s=5)
    assert isinstance(claim, Claim) and len(claim.tasks) == 2
    assert worker.update_task(task.id, context={"k": 2}).context == {"k": 2}
    assert worker.report_progress(task.id, "p", 10).status is TaskStatus.RUNNING
    assert isinstance(worker.add_comment(task.id, "note"), Comment)
    assert worker.request_input(task.id, "q?").status is TaskStatus.WAITING_INPUT
    assert admin.provide_input(task.id, "a").status is TaskStatus.RUNNING
    done = worker.complete_tasks([{"task_id": batch[0].id, "result": 1}])
    assert done[0].ok
    assert worker.complete_task(task.id, "r").status is TaskStatus.COMPLETED
    with pytest.raises(InvalidTransition):
        admin.retry_task(task.id)

    detail = admin.get_task(task.id)
    assert isinstance(detail, TaskDetail) and detail.comments[0].body == "note"
    assert all(isinstance(e, Event) for e in admin.task_events(task.id))

    failing = admin.create_task("to fail", capabilities=[tag])
    worker.claim()
    with pytest.raises(StaleAttempt):
        worker.fail_task(failing.id, "x", attempt=9)
    assert worker.fail_task(failing.id, "x", retryable=False).status is TaskStatus.FAILED
    assert admin.retry_task(failing.id).status in (TaskStatus.PENDING, TaskStatus.ASSIGNED)
    assert admin.cancel_task(failing.id).status is TaskStatus.CANCELLED

    reviewed = admin.create_task("review me", capabilities=[tag], review=True)
    worker.claim()
    assert worker.complete_task(reviewed.id, "draft").status is TaskStatus.REVIEW
    assert admin.review_task(reviewed.id, "rejected", "again").status is not TaskStatus.REVIEW

    assigned = admin.create_task("direct", assigned_to=worker.agent_id)
    assert worker.start_task(assigned.id).status is TaskStatus.RUNNING
    queued = worker.claim_one()
    assert isinstance(queued, QueueOut)

    events = admin.read_events(start, types="task.created")
    assert isinstance(events, EventPage) and events.events[0].task_id == task.id
    with closing(admin.stream_events(start, types=["task.created"])) as stream:
        first = next(stream)
    assert first.task_id == task.id

    assert "queue" in admin.stats()
    notes = admin.list_notifications(limit=1)
    assert isinstance(notes, NotificationPage)
    with pytest.raises(BadRequest):
        admin.ack_notifications()

    hook = admin.create_webhook("http://127.0.0.1:9/sync").webhook
    assert isinstance(admin.get_webhook(hook.id), Webhook)
    assert hook.id in [w.id for w in admin.list_webhooks(limit=500).items]
    assert admin.update_webhook(hook.id, description="d").description == "d"
    assert isinstance(admin.list_deliveries(hook.id), Page)
    assert admin.delete_webhook(hook.id).deleted

    removed = worker.deregister_agent()
    assert isinstance(removed, AgentRemoved)
    with pytest.raises(NotFound):
        admin.get_agent(worker.agent_id)


def loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.main_thread()}


def test_close_stops_the_loop_thread(live_server: LiveServer, unique: str) -> None:
    before = loop_threads()
    with Client(live_server.url, agent_id=f"c-{unique}") as client:
        during = loop_threads() - before
        assert during, "the client runs its loop in a thread of its own"
        client.register_agent()
    assert not any(t.is_alive() for t in during)
    client.close()  # a second close does nothing


def test_token_and_agent_id_are_settable(live_server: LiveServer, unique: str) -> None:
    with Client(live_server.url, agent_id=f"first-{unique}") as client:
        client.agent_id = f"second-{unique}"
        registration = client.register_agent()
        assert registration.agent.id == f"second-{unique}"
        client.token = "forged-token-value"
        assert client.aio.token == "forged-token-value"
        with pytest.raises(Unauthorized):
            client.heartbeat()


def test_a_program_that_never_closes_its_client_still_exits(
    live_server: LiveServer, unique: str
) -> None:
    script = textwrap.dedent(
        f"""
        from dispatchd.client import Client

        idle = Client({live_server.url!r}, agent_id="idle-{unique}")
        used = Client({live_server.url!r}, agent_id="used-{unique}")
        print(used.register_agent().agent.id, flush=True)
        """
    )
    # Without the fix the program never exits: the timeout is only a guard.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"used-{unique}"


class ClosingTransport(httpx.AsyncHTTPTransport):
    """A real transport that records being closed."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def test_a_collected_client_closes_its_connections_and_stops_its_loop(
    live_server: LiveServer, unique: str
) -> None:
    before = loop_threads()
    transport = ClosingTransport()
    client = Client(live_server.url, agent_id=f"gc-{unique}", transport=transport)
    client.register_agent()
    (thread,) = loop_threads() - before
    del client
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert transport.closed
