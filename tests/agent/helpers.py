"""Shared helpers of the agent-side tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from dispatchd.client import AsyncClient
from dispatchd.client.models import Task, TaskDetail
from tests.api.helpers import eventually

NOW = "2026-01-01T00:00:00Z"


def task_json(**fields: Any) -> dict[str, Any]:
    """A task as the API shows it (every field), with `fields` changed."""
    data: dict[str, Any] = {
        "id": "t-1",
        "title": "Fix the crash",
        "prompt": "The app crashes on start.",
        "status": "running",
        "priority": "medium",
        "capabilities": ["code"],
        "requester": "alice",
        "assignee": "runner-1",
        "assigned_to": None,
        "owner": None,
        "scope": None,
        "attempt": 1,
        "max_attempts": 3,
        "context": {},
        "result": None,
        "summary": None,
        "error": None,
        "depends_on": [],
        "run_at": None,
        "due_at": None,
        "timeout_s": None,
        "input_timeout_s": None,
        "run_left_ms": None,
        "review": False,
        "reviewer": None,
        "escalate_to": None,
        "model": None,
        "model_routed": False,
        "labels": [],
        "question": None,
        "progress": None,
        "requeues": 0,
        "review_cycles": 0,
        "escalated": False,
        "retry_at": None,
        "lease_expires_at": None,
        "deadline_at": None,
        "started_at": NOW,
        "finished_at": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    data.update(fields)
    return data


def make_task(**fields: Any) -> Task:
    return Task.model_validate(task_json(**fields))


async def settled(
    client: AsyncClient, task_id: str, *states: str, limit_s: float = 30.0
) -> TaskDetail:
    """The task once its status is one of `states` (waiting up to `limit_s`)."""

    async def probe() -> TaskDetail | None:
        task = await client.get_task(task_id)
        return task if task.status.value in states else None

    return await eventually(probe, f"task {task_id} to become {'/'.join(states)}", limit_s=limit_s)


class Serving(Protocol):
    """A Worker or a Runner: served until stopped."""

    async def serve(self) -> None: ...

    async def wait_started(self) -> None: ...

    def stop(self) -> None: ...


@asynccontextmanager
async def serving() -> AsyncIterator[Callable[[Serving], Awaitable[asyncio.Task[None]]]]:
    """Start workers or runners in the background; stop them all (and wait) at the end."""
    running: list[tuple[Serving, asyncio.Task[None]]] = []

    async def start(server: Serving) -> asyncio.Task[None]:
        task = asyncio.create_task(server.serve())
        started = asyncio.create_task(server.wait_started())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            started.cancel()
            task.result()
        running.append((server, task))
        return task

    try:
        yield start
    finally:
        for server, _ in running:
            server.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*(task for _, task in running), return_exceptions=True)
