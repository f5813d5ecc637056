"""What every route of the local agent API shares: the per-task scope, the error it
raises, and the dependencies that resolve a request to its scope.

A scope is one running task of the runner, reached under `/s/<secret>/…`. The secret is
the subprocess's only credential: it may act on its own task and read the follow-ups it
created, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict

from dispatchd.client import AsyncClient
from dispatchd.client.models import Task
from dispatchd.runner.process import Stopwatch

Finished = Literal["completed", "failed"]


@dataclass(eq=False)
class TaskScope:
    """The local API as one task's subprocess sees it.

    `finished` says what the agent reported itself through the API (`"completed"` or
    `"failed"`), so the runner does not report the task again when the process exits.
    """

    task_id: str
    attempt: int
    url: str = field(repr=False)
    secret: str = field(repr=False)
    finished: Finished | None = None
    followups: set[str] = field(default_factory=set, repr=False)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # The agent's timeout; held while it waits for the answer to its question.
    clock: Stopwatch = field(default_factory=Stopwatch, repr=False)

    def env(self) -> dict[str, str]:
        """The environment variables that point a subprocess at this scope."""
        return {"DISPATCH_URL": self.url, "DISPATCH_TASK_ID": self.task_id}


@dataclass
class LocalContext:
    """What the routes need from the runner: its broker client, the open scopes by secret
    and its status."""

    client: AsyncClient
    scopes: dict[str, TaskScope] = field(default_factory=dict)
    status: Callable[[], Mapping[str, Any]] | None = None


class LocalError(Exception):
    """A refusal by the local API itself, answered in the broker's error form."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class Body(BaseModel):
    """A request body: unknown fields are refused, so a typo is a 422 rather than ignored."""

    model_config = ConfigDict(extra="forbid")


def _context(request: Request) -> LocalContext:
    ctx = request.app.state.local
    assert isinstance(ctx, LocalContext)
    return ctx


def _scope(secret: str, ctx: Annotated[LocalContext, Depends(_context)]) -> TaskScope:
    scope = ctx.scopes.get(secret)
    if scope is None or scope.closed.is_set():
        raise LocalError(404, "unknown_scope", "this local API address is unknown or closed")
    return scope


Ctx = Annotated[LocalContext, Depends(_context)]
Scope = Annotated[TaskScope, Depends(_scope)]


def own(scope: TaskScope, task_id: str) -> str:
    """`task_id` if it is the scope's task; anything else is refused."""
    if task_id != scope.task_id:
        raise LocalError(
            403,
            "out_of_scope",
            f"this agent works on task {scope.task_id} and may not act on task {task_id}",
            task_id=task_id,
            scope_task_id=scope.task_id,
        )
    return task_id


def readable(scope: TaskScope, task_id: str) -> str:
    """`task_id` if the scope may read it: its own task or a follow-up it created."""
    if task_id in scope.followups:
        return task_id
    return own(scope, task_id)


async def complete(
    scope: TaskScope,
    ctx: LocalContext,
    task_id: str,
    result: Any,
    summary: str | None,
    cost: Mapping[str, Any] | None = None,
) -> Task:
    """Complete the task and note that the agent reported it itself."""
    task = await ctx.client.complete_task(
        task_id, result, summary, attempt=scope.attempt, cost=cost
    )
    scope.finished = "completed"
    return task


async def fail(
    scope: TaskScope,
    ctx: LocalContext,
    task_id: str,
    error: str,
    retryable: bool,
    cost: Mapping[str, Any] | None = None,
) -> Task:
    """Fail the task and note that the agent reported it itself."""
    task = await ctx.client.fail_task(
        task_id, error, retryable=retryable, attempt=scope.attempt, cost=cost
    )
    scope.finished = "failed"
    return task


def task_view(task: Task) -> dict[str, Any]:
    """The task as JSON, with the names agents written for a board expect beside ours:
    `name`, `description`, `assignees`, and comments with `text` as well as `body`."""
    data = task.model_dump(mode="json")
    data["name"] = data.get("title")
    data["description"] = data.get("prompt")
    assignee = data.get("assignee")
    data["assignees"] = [assignee] if assignee else []
    comments = data.get("comments")
    if isinstance(comments, list):
        data["comments"] = [comment_view(c) for c in comments]
    return data


def comment_view(comment: Mapping[str, Any]) -> dict[str, Any]:
    return {**comment, "text": comment.get("body")}
