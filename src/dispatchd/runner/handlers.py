"""What a worker's handlers see: `Job` (one claimed task and what may be reported on
it), `Handler` (a function and the tasks it takes), `choose` and `TaskFailed`."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispatchd.client import AsyncClient
from dispatchd.client.errors import Conflict
from dispatchd.client.models import Task

if TYPE_CHECKING:
    from dispatchd.runner.worker import Worker

HandlerFn = Callable[["Job"], Awaitable[Any]] | Callable[["Job"], Any]
TRACEBACK_CHARS = 4000
ERROR_CHARS = 16_000


class TaskFailed(Exception):
    """Raised by a handler to fail its task with this message (no traceback);
    `retryable=False` makes the failure final at once."""

    def __init__(self, error: str, *, retryable: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.retryable = retryable


@dataclass(eq=False)
class Handler:
    """A handler function and the tasks it takes: those needing its capabilities (all of
    them, when it names none). `priority` orders handlers (lower first) when several could
    take a task, and orders what the worker claims first; `concurrency` bounds how many of
    its tasks run at once, below the worker's own limit."""

    fn: HandlerFn
    capabilities: frozenset[str]
    priority: int = 0
    concurrency: int | None = None
    order: int = 0
    active: int = 0
    slots: asyncio.Semaphore | None = None
    # A review handler takes review tasks (`kind` review) only; the others never do.
    review: bool = False

    def __post_init__(self) -> None:
        if self.concurrency is not None:
            self.slots = asyncio.Semaphore(self.concurrency)

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))

    def has_room(self) -> bool:
        return self.concurrency is None or self.active < self.concurrency

    def room(self, free: int) -> int:
        return free if self.concurrency is None else min(free, self.concurrency - self.active)


def choose(handlers: Iterable[Handler], task: Task) -> Handler | None:
    """The handler for `task`: the one sharing the most of its capabilities, then a
    handler naming none (it takes anything), by priority and registration order. A review
    task goes to a review handler, any other task to another handler."""
    need = set(task.capabilities)
    reviewing = task.kind == "review"
    best: tuple[tuple[int, int, int], Handler] | None = None
    for h in handlers:
        if h.review != reviewing:
            continue
        overlap = len(need & h.capabilities)
        if overlap == 0 and h.capabilities and need:
            continue
        rank = (-overlap, h.priority, h.order)
        if best is None or rank < best[0]:
            best = (rank, h)
    return best[1] if best else None


@dataclass(eq=False)
class Job:
    """One claimed task in a handler's hands, with what it may report on it."""

    worker: Worker
    task: Task
    handler: Handler | None
    lost: str | None = None
    reported: bool = False
    _answers: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def attempt(self) -> int:
        return self.task.attempt

    @property
    def client(self) -> AsyncClient:
        return self.worker.client

    async def progress(
        self,
        message: str | None = None,
        percent: float | None = None,
        *,
        cost: Mapping[str, float | int] | None = None,
    ) -> None:
        """Report progress (this also renews the task's lease), and with `cost` what the
        attempt has cost so far (its running total; docs/costs.md). A refusal because the
        task is no longer this worker's also stops the handler."""
        try:
            await self.client.report_progress(
                self.id, message, percent, attempt=self.attempt, cost=cost
            )
        except Conflict:
            await self.worker.verify(self, "progress refused")
            raise

    async def comment(self, body: str) -> None:
        await self.client.add_comment(self.id, body)

    async def update_context(self, patch: Mapping[str, Any]) -> None:
        """Merge `patch` into the task's context (RFC 7386)."""
        await self.client.update_task(self.id, context=dict(patch))

    async def ask(self, question: str, *, timeout_s: float | None = None) -> str:
        """Ask the requester a question (the task waits for input) and return the answer.
        Raises TimeoutError when none comes within `timeout_s`."""
        cursor = (await self.client.read_events("latest", limit=1)).next_cursor
        await self.client.request_input(self.id, question, attempt=self.attempt)
        async with asyncio.timeout(timeout_s):
            while True:
                page = await self.client.read_events(
                    cursor, types="task.input_received", task=self.id, wait_s=30, limit=100
                )
                cursor = page.next_cursor
                for event in page.events:
                    if event.task_id == self.id:
                        return str(event.data.get("answer", ""))

    async def followup(self, title: str, **fields: Any) -> Task:
        """Create a task that takes over from this one: by default it depends on it, so it
        starts when this one completes, with its result in `context.inputs`."""
        fields.setdefault("depends_on", [self.id])
        return await self.client.create_task(title, **fields)

    async def complete(
        self,
        result: Any = None,
        summary: str | None = None,
        *,
        cost: Mapping[str, float | int] | None = None,
    ) -> None:
        """Complete the task now (a handler's return value does this by itself), with what
        the attempt cost."""
        self.reported = True
        await self.worker.report(
            self,
            lambda: self.client.complete_task(
                self.id, result, summary, attempt=self.attempt, cost=cost
            ),
        )

    async def fail(
        self,
        error: str,
        *,
        retryable: bool = True,
        cost: Mapping[str, float | int] | None = None,
    ) -> None:
        """Fail the task now (an exception from the handler does this by itself)."""
        self.reported = True
        text = clip(error)
        await self.worker.report(
            self,
            lambda: self.client.fail_task(
                self.id, text, retryable=retryable, attempt=self.attempt, cost=cost
            ),
        )


def clip(error: str) -> str:
    """An error text the broker accepts: not empty, its last ERROR_CHARS characters."""
    text = error.strip() or "failed"
    return text if len(text) <= ERROR_CHARS else "…" + text[-ERROR_CHARS:]


def short_traceback(exc: BaseException) -> str:
    """The exception and the last frames of its traceback, within TRACEBACK_CHARS."""
    text = "".join(traceback.format_exception(exc, limit=-6)).strip()
    return text if len(text) <= TRACEBACK_CHARS else "…" + text[-TRACEBACK_CHARS:]
