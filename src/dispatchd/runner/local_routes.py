"""The local agent API's own routes: read the task, comment, progress, ask a question,
create a follow-up, complete, fail. Each is forwarded to the broker with the runner's
identity, fenced with the scope's attempt."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, status
from pydantic import Field, StringConstraints, model_validator

from dispatchd.client.models import Task
from dispatchd.runner.local_scope import (
    Body,
    Ctx,
    LocalContext,
    Scope,
    TaskScope,
    comment_view,
    complete,
    fail,
    own,
    readable,
    task_view,
)
from dispatchd.runner.local_seed import queue_tag

router = APIRouter(prefix="/s/{secret}")

Text = Annotated[str, StringConstraints(min_length=1)]

# The events that end a wait for an answer: the answer itself, or the task leaving
# waiting_input some other way.
_ANSWER_EVENTS = (
    "task.input_received",
    "task.cancelled",
    "task.failed",
    "task.timed_out",
    "task.requeued",
    "task.retrying",
)
# One long-poll of the broker's event log, below the client's own request timeout.
_POLL_SLICE_S = 20.0
MAX_WAIT_S = 24 * 3600.0


class CommentBody(Body):
    """`comment` is what board agents send; `body` is the broker's name."""

    comment: Text | None = None
    body: Text | None = None

    @model_validator(mode="after")
    def _one_text(self) -> CommentBody:
        if self.comment is None and self.body is None:
            raise ValueError("give the comment's text as 'comment' or 'body'")
        return self

    @property
    def text(self) -> str:
        return self.body if self.body is not None else str(self.comment)


# What the attempt has cost so far, passed on to the broker, which checks it.
CostBody = dict[str, Any] | None


class ProgressBody(Body):
    message: str | None = None
    percent: float | None = Field(None, ge=0, le=100)
    cost: CostBody = None


class QuestionBody(Body):
    question: Text
    wait_s: float = Field(0.0, ge=0, le=MAX_WAIT_S)


class CompleteBody(Body):
    result: Any = None
    summary: str | None = None
    cost: CostBody = None


class FailBody(Body):
    error: Text
    retryable: bool = True
    cost: CostBody = None


class FollowUpBody(Body):
    """A new task. Board agents send `name`, `description` and `queue_name`; the queue
    becomes a required capability. `depends_on` defaults to the scope's task, so the
    follow-up starts once this task completes and finds its result in `context.inputs`."""

    title: Text | None = None
    name: Text | None = None
    prompt: str | None = None
    description: str | None = None
    capabilities: list[Text] = Field(default_factory=list)
    queue_name: Text | None = None
    priority: Literal["critical", "high", "medium", "low"] | None = None
    depends_on: list[Text] | None = None
    context: dict[str, Any] | None = None
    labels: list[Text] = Field(default_factory=list)
    model: Text | None = None
    timeout_s: int | None = None
    max_attempts: int | None = None
    idempotency_key: Text | None = None

    @model_validator(mode="after")
    def _titled(self) -> FollowUpBody:
        if self.title is None and self.name is None:
            raise ValueError("give the task a 'title' (or 'name')")
        return self


@router.get("/task")
async def get_own_task(scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """The scope's task in detail: attempts, progress log and comments."""
    return task_view(await ctx.client.get_task(scope.task_id))


@router.get("/tasks/{task_id}")
async def get_task(task_id: str, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """The scope's task, or a follow-up it created, in detail."""
    return task_view(await ctx.client.get_task(readable(scope, task_id)))


@router.post("/tasks/{task_id}/comments", status_code=status.HTTP_201_CREATED)
async def add_comment(task_id: str, body: CommentBody, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    comment = await ctx.client.add_comment(own(scope, task_id), body.text)
    return comment_view(comment.model_dump(mode="json"))


@router.post("/tasks/{task_id}/progress")
async def report_progress(
    task_id: str, body: ProgressBody, scope: Scope, ctx: Ctx
) -> dict[str, Any]:
    task = await ctx.client.report_progress(
        own(scope, task_id), body.message, body.percent, attempt=scope.attempt, cost=body.cost
    )
    return task_view(task)


@router.post("/tasks/{task_id}/question")
async def ask_question(task_id: str, body: QuestionBody, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    """Ask the requester a question; the task waits for input. With `wait_s`, answer once
    the reply arrives (or the wait ends: `answer` is then null). Every reply is also kept
    in the task's `context.answers`."""
    task: Task = await ctx.client.request_input(
        own(scope, task_id), body.question, attempt=scope.attempt
    )
    answer: str | None = None
    if body.wait_s > 0:
        # The agent's process waits for a person: its timeout stops, as the broker's does.
        scope.clock.hold()
        try:
            answer, task = await _await_answer(ctx, scope, task, body.wait_s)
        finally:
            scope.clock.release()
    return {"answer": answer, "task": task_view(task)}


async def _await_answer(
    ctx: LocalContext, scope: TaskScope, asked: Task, wait_s: float
) -> tuple[str | None, Task]:
    """Follow the broker's event log from the question on until the task's answer (or its
    end) shows up, the wait runs out, or the scope closes."""
    client = ctx.client
    history = await client.task_events(asked.id)
    questions = [e for e in history if e.type == "task.waiting_input"]
    cursor = questions[-1].id if questions else (history[-1].id if history else None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (remaining := deadline - loop.time()) > 0:
        read = asyncio.ensure_future(
            client.read_events(
                cursor,
                types=list(_ANSWER_EVENTS),
                task=asked.id,
                wait_s=min(remaining, _POLL_SLICE_S),
            )
        )
        closed = asyncio.ensure_future(scope.closed.wait())
        await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            return None, asked
        page = read.result()
        cursor = page.next_cursor
        for event in page.events:
            if event.task_id != asked.id:
                continue
            answer = event.data.get("answer") if event.type == "task.input_received" else None
            return (str(answer) if answer is not None else None), await client.get_task(asked.id)
    return None, await client.get_task(asked.id)


@router.post("/tasks", status_code=status.HTTP_201_CREATED)
async def create_followup(body: FollowUpBody, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    return task_view(await create_task(body, scope, ctx))


async def create_task(body: FollowUpBody, scope: TaskScope, ctx: LocalContext) -> Task:
    capabilities = list(body.capabilities)
    if body.queue_name is not None:
        tag = await queue_tag(ctx, body.queue_name)
        if tag not in capabilities:
            capabilities.append(tag)
    depends_on = [scope.task_id] if body.depends_on is None else body.depends_on
    task = await ctx.client.create_task(
        str(body.title if body.title is not None else body.name),
        prompt=body.prompt if body.prompt is not None else (body.description or ""),
        capabilities=capabilities,
        priority=body.priority,
        depends_on=depends_on,
        labels=body.labels,
        context=body.context,
        model=body.model,
        timeout_s=body.timeout_s,
        max_attempts=body.max_attempts,
        idempotency_key=body.idempotency_key,
    )
    scope.followups.add(task.id)
    return task


@router.post("/tasks/{task_id}/complete")
async def complete_task(
    task_id: str, scope: Scope, ctx: Ctx, body: CompleteBody | None = None
) -> dict[str, Any]:
    body = body or CompleteBody()
    task = await complete(scope, ctx, own(scope, task_id), body.result, body.summary, body.cost)
    return task_view(task)


@router.post("/tasks/{task_id}/fail")
async def fail_task(task_id: str, body: FailBody, scope: Scope, ctx: Ctx) -> dict[str, Any]:
    task = await fail(scope, ctx, own(scope, task_id), body.error, body.retryable, body.cost)
    return task_view(task)
