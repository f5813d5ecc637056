"""The board-style routes of the local agent API, for agents written against a board of
queues (`/move`, `PATCH /tasks/{id}`, `/queues`, `/status`), mapped onto the broker.

A queue of the board is a capability tag of the broker: creating a task in a queue
requires that capability, and the runner's queues are its capabilities.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import StringConstraints

from dispatchd.runner.local_scope import (
    Body,
    Ctx,
    LocalContext,
    LocalError,
    Scope,
    complete,
    fail,
    own,
    task_view,
)

router = APIRouter(prefix="/s/{secret}")

QueueKind = Literal["done", "failed", "rejected", "active", "other"]

_KINDS: dict[str, QueueKind] = {
    **dict.fromkeys(["done", "complete", "completed", "finished", "closed", "resolved"], "done"),
    **dict.fromkeys(["failed", "failure", "error", "errored"], "failed"),
    **dict.fromkeys(
        ["rejected", "cancelled", "canceled", "wontfix", "wont do", "won't do"], "rejected"
    ),
    **dict.fromkeys(
        ["in progress", "wip", "doing", "running", "started", "active", "working", "ongoing"],
        "active",
    ),
}
# Pending tasks counted per queue; beyond it `/queues` says there are more.
COUNT_LIMIT = 500


def queue_kind(name: str) -> QueueKind:
    """What moving a task to the queue `name` means. Board queues may be dotted paths
    (`Project.Board.Done`): the last part names the column. Case, spaces, `-` and `_`
    do not matter."""
    column = name.rsplit(".", 1)[-1]
    normal = re.sub(r"[\s_-]+", " ", column).strip().casefold()
    return _KINDS.get(normal, "other")


def queue_slug(name: str) -> str:
    """A queue name as a capability tag: runs of whitespace and commas become `-`."""
    return re.sub(r"[\s,]+", "-", name.strip())


async def runner_queues(ctx: LocalContext) -> list[str]:
    """The runner's queues: the capability tags of its agent."""
    agent = await ctx.client.get_agent(ctx.client.agent_id)
    return list(agent.capabilities)


async def queue_tag(ctx: LocalContext, name: str) -> str:
    """The capability tag for the queue `name`: the runner's own tag when one matches
    regardless of case, else the name as a tag."""
    slug = queue_slug(name)
    for tag in await runner_queues(ctx):
        if tag.casefold() == slug.casefold():
            return tag
    return slug


class MoveBody(Body):
    target_queue: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    reason: str | None = None
    retryable: bool | None = None


class FieldsBody(Body):
    name: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    assignees: list[str] | None = None
    context: dict[str, Any] | None = None


@router.post("/tasks/{task_id}/move")
async def move_task(task_id: str, body: MoveBody, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """Move the task to a board queue. A done-like queue (done, completed, finished,
    closed, resolved) completes it; a failed-like one (failed, error) fails it, to be
    retried; rejected or cancelled fails it for good; an in-progress-like one changes
    nothing (the task is running). Any other queue is recorded in the task's context as
    `{"queue": name}`."""
    own(scope, task_id)
    queue = body.target_queue
    kind = queue_kind(queue)
    if kind == "done":
        task = await complete(scope, ctx, task_id, None, f"moved to {queue}")
    elif kind in ("failed", "rejected"):
        reason = body.reason or f"the agent moved the task to {queue}"
        retryable = body.retryable if body.retryable is not None else kind == "failed"
        task = await fail(scope, ctx, task_id, reason, retryable)
    elif kind == "active":
        task = await ctx.client.get_task(task_id)
    else:
        task = await ctx.client.update_task(task_id, context={"queue": queue})
    return {**task_view(task), "queue": queue, "moved": kind}


@router.patch("/tasks/{task_id}")
async def update_fields(task_id: str, body: FieldsBody, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """Record board fields (`name`, `description`, `labels`, `assignees`) in the task's
    context under `fields`, and merge `context` into it. The broker does not rename or
    relabel a running task, so the fields are kept beside the task rather than applied."""
    own(scope, task_id)
    fields = body.model_dump(exclude_none=True, exclude={"context"})
    if not fields and body.context is None:
        raise LocalError(
            422,
            "empty_patch",
            "nothing to change: give name, description, labels, assignees or context",
        )
    patch: dict[str, Any] = dict(body.context or {})
    if fields:
        patch["fields"] = fields
    return task_view(await ctx.client.update_task(task_id, context=patch))


@router.get("/queues")
async def list_queues(scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """The runner's queues (its capabilities), each with its number of pending tasks
    (counted up to COUNT_LIMIT; `more` says there are more)."""

    async def count(tag: str) -> dict[str, Any]:
        page = await ctx.client.list_tasks(status="pending", capability=tag, limit=COUNT_LIMIT)
        pending = len(page.items)
        return {"name": tag, "pending": pending, "more": page.next_cursor is not None}

    tags = await runner_queues(ctx)
    return {"queues": list(await asyncio.gather(*(count(t) for t in tags)))}


@router.get("/status")
async def runner_status(scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """The runner's status: its agent, active agents, free slots, running tasks."""
    status: dict[str, Any] = {"agent_id": ctx.client.agent_id}
    if ctx.status is not None:
        status.update(ctx.status())
    return status
