"""Helpers shared by the API tests: polling, the error form, and the task and agent routes.

Each helper checks the status of every call it makes, so a test reads as what it expects of
the answer, not of the transport.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

import httpx
import pytest

from tests.api.conftest import ADMIN_TOKEN, as_agent

if TYPE_CHECKING:
    from dispatchd.runtime import Runtime

T = TypeVar("T")

# Run a test on both store engines (see the `engine` fixture of conftest).
BOTH = pytest.mark.parametrize("engine", ["sqlite", "postgres"], indirect=True)
# Headers of an admin call, for helpers and parametrizations that cannot take the fixture.
ADMIN = as_agent("admin", ADMIN_TOKEN)

# The `register` fixture of conftest: register(agent_id, capabilities, **fields).
Register = Callable[..., Awaitable[tuple[dict[str, Any], str]]]
# A barrier: wait until the assigner has acted on every event committed so far.
Settle = Callable[[], Awaitable[None]]

# How often a task may lose its agent before it fails (retry.max_lost_requeues, default).
LOST_REQUEUES = 5

# The form of every error code.
SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


# --- polling ----------------------------------------------------------------------------


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, *, limit_s: float = 10.0
) -> T: ...


@overload
async def eventually(probe: Callable[[], T | None], what: str, *, limit_s: float = 10.0) -> T: ...


async def eventually(probe: Callable[[], Any], what: str, *, limit_s: float = 10.0) -> Any:
    """Poll `probe` (sync or async) every 10 ms until it answers something truthy; that
    answer. After `limit_s` seconds, an AssertionError naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def track(runtime: Runtime) -> Settle:
    """Follow the assigner of `runtime`; the barrier that waits until it has acted on every
    event committed before the barrier is called."""
    handled = [runtime.assigner.cursor]
    original = runtime.assigner.handle

    async def handle(events: Any) -> None:
        await original(events)
        if events:
            handled[0] = max(handled[0], events[-1].id)

    runtime.assigner.handle = handle  # type: ignore[method-assign]

    async def settle() -> None:
        target = runtime.feed.latest
        await eventually(lambda: handled[0] >= target, f"the assigner to reach event {target}")

    return settle


# --- the error form and timestamps ------------------------------------------------------


def assert_error(r: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    """The response is `status` in the API's error form with `code` (None: any well-formed
    code); returns the `error` object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str) and SNAKE.match(err["code"]), err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert isinstance(err["details"], dict), err
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def ts(value: str) -> datetime:
    """An API timestamp, which must carry its zone, in UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"timestamp without a zone: {value}"
    return parsed.astimezone(UTC)


def iso(value: datetime) -> str:
    """A timestamp as the API writes it."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- tasks ------------------------------------------------------------------------------


async def create_task(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """POST /api/v1/tasks (titled "a task" unless `body` says otherwise); the new task."""
    body.setdefault("title", "a task")
    r = await client.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def create_code_task(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """A task for the agents with the `code` capability, unless `body` names others."""
    body.setdefault("capabilities", ["code"])
    return await create_task(client, **body)


async def detail(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """The task as GET /api/v1/tasks/{id} shows it."""
    r = await client.get(f"/api/v1/tasks/{task_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def task_events(
    client: httpx.AsyncClient, task_id: str, kind: str | None = None
) -> list[dict[str, Any]]:
    """The task's events, oldest first; only those of type `kind` if given."""
    r = await client.get(f"/api/v1/tasks/{task_id}/events")
    assert r.status_code == 200, r.text
    return [e for e in r.json()["events"] if kind is None or e["type"] == kind]


async def explain(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/tasks/{task_id}/explain")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def act(client: httpx.AsyncClient, task_id: str, action: str, agent: str, **body: Any) -> Any:
    """POST /api/v1/tasks/{id}/{action} as `agent`, which must succeed; the answer."""
    r = await client.post(f"/api/v1/tasks/{task_id}/{action}", json=body, headers=as_agent(agent))
    assert r.status_code == 200, r.text
    return r.json()


async def wait_task(
    client: httpx.AsyncClient, task_id: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The task's detail once `check` holds for it; on a timeout, the error says how the
    task stood when last read."""
    last: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        task = await detail(client, task_id)
        last.update(task)
        return task if check(task) else None

    try:
        return await eventually(probe, f"task {task_id}: {what}")
    except AssertionError as exc:
        seen = {k: last.get(k) for k in ("status", "assignee", "assigned_to", "attempt")}
        raise AssertionError(f"{exc}; last read: {seen}") from None


async def wait_assigned(
    client: httpx.AsyncClient, task_id: str, agent: str, attempt: int | None = None
) -> dict[str, Any]:
    """The task's detail once it is assigned to `agent` (under `attempt`, if given)."""
    under = "" if attempt is None else f" (attempt {attempt})"
    return await wait_task(
        client,
        task_id,
        lambda t: (
            t["status"] == "assigned"
            and t["assignee"] == agent
            and (attempt is None or t["attempt"] == attempt)
        ),
        f"assigned to {agent}{under}",
    )


# --- agents -----------------------------------------------------------------------------


async def agent_status(client: httpx.AsyncClient, agent_id: str) -> str:
    r = await client.get(f"/api/v1/agents/{agent_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


async def heartbeat(client: httpx.AsyncClient, agent_id: str, status: str | None = None) -> str:
    """A heartbeat from `agent_id` (reporting `status`, if given); its status after it."""
    body = {"status": status} if status else {}
    r = await client.post(
        f"/api/v1/agents/{agent_id}/heartbeat", json=body, headers=as_agent(agent_id)
    )
    assert r.status_code == 200, r.text
    return str(r.json()["status"])
