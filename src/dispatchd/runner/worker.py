"""The worker runtime (SPEC §5): a process that registers as an agent, heartbeats, claims
tasks and runs a handler function for each, reporting progress, completion and failure.

    client = AsyncClient("http://127.0.0.1:8600", agent_id="coder-1")
    worker = Worker(client, max_concurrent=4)

    @worker.handler("code")
    async def code(job: Job) -> str:
        await job.progress("reading the repository", percent=10)
        return "patched"

    worker.run()  # until SIGTERM or SIGINT

* Claims long-poll the broker, which wakes them the moment a task is assigned to the agent,
  so a task starts as soon as it exists; the worker claims only as many as it has room for.
* A handler's return value completes the task; an exception fails it with a short
  traceback (`TaskFailed(..., retryable=False)` makes the failure final). Every report
  carries the task's attempt, so a worker whose task was taken away changes nothing.
* The broker's event log tells the worker when a task it runs was cancelled, timed out,
  requeued or stopped by its budget: that handler is cancelled at once.
* On SIGTERM/SIGINT (or `stop()`) the worker stops claiming, gives running handlers
  `grace_s` to finish, cancels the rest and deregisters, which hands every task it still
  holds back to the queue in one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from dispatchd.client import AsyncClient
from dispatchd.client.errors import (
    ApiError,
    ClientError,
    Gone,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from dispatchd.client.models import Event, Task
from dispatchd.domain.costs import BUDGET_EXCEEDED
from dispatchd.domain.models import TaskStatus
from dispatchd.runner.handlers import (
    Handler,
    HandlerFn,
    Job,
    TaskFailed,
    choose,
    clip,
    short_traceback,
)
from dispatchd.runner.review import ReviewVerdict, UnderReview, as_verdict
from dispatchd.runner.signals import run_until_signalled

__all__ = [
    "Handler",
    "Job",
    "ReviewVerdict",
    "TaskFailed",
    "UnderReview",
    "Worker",
    "choose",
    "run_until_signalled",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Events that may mean a running task is no longer this worker's; each is checked against
# the task itself before its handler is stopped.
WATCHED = "task.cancelled,task.requeued,task.timed_out,task.retrying,task.assigned,task.failed"
HELD = frozenset({TaskStatus.RUNNING, TaskStatus.WAITING_INPUT, TaskStatus.ASSIGNED})
RETRY_CAP_S = 10.0
# Finished (task, attempt) pairs remembered, so a stale listing never runs one again.
FINISHED_KEPT = 1000
# Answers that may come out differently when asked again.
TRANSIENT = (TransportError, ServerError, RateLimited)


class Worker:
    def __init__(
        self,
        client: AsyncClient,
        *,
        agent_id: str | None = None,
        capabilities: Sequence[str] | Mapping[str, float] = (),
        max_concurrent: int = 1,
        owner: str | None = None,
        room: str | None = None,
        description: str | None = None,
        heartbeat_s: float = 10.0,
        claim_wait_s: float = 20.0,
        grace_s: float = 30.0,
        deregister_on_stop: bool = True,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.client = client
        self.agent_id = agent_id or client.agent_id
        self.capabilities = (
            dict(capabilities)
            if isinstance(capabilities, Mapping)
            else dict.fromkeys(capabilities, 1.0)
        )
        self.max_concurrent = max_concurrent
        self.owner = owner
        self.room = room
        self.description = description
        self.heartbeat_s = heartbeat_s
        self.claim_wait_s = claim_wait_s
        self.grace_s = grace_s
        self.deregister_on_stop = deregister_on_stop
        self.handlers: list[Handler] = []
        self.jobs: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._finished: dict[tuple[str, int], None] = {}
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._started = asyncio.Event()

    # --- handlers -----------------------------------------------------------------------

    def handler(
        self, *capabilities: str, priority: int = 0, concurrency: int | None = None
    ) -> Callable[[F], F]:
        """Decorate a function (async, or plain: it then runs in a thread) that handles the
        tasks needing `capabilities` (any task, when none are named)."""

        def register(fn: F) -> F:
            self.add_handler(fn, capabilities, priority=priority, concurrency=concurrency)
            return fn

        return register

    def add_handler(
        self,
        fn: HandlerFn,
        capabilities: Iterable[str] = (),
        *,
        priority: int = 0,
        concurrency: int | None = None,
        review: bool = False,
    ) -> Handler:
        """`review`: the handler takes review tasks only (see `review`); its function gets
        the `Job` and returns the review task's result."""
        if concurrency is not None and concurrency < 1:
            raise ValueError("a handler's concurrency must be at least 1")
        h = Handler(
            fn,
            frozenset(capabilities),
            priority,
            concurrency,
            order=len(self.handlers),
            review=review,
        )
        self.handlers.append(h)
        return h

    def review(
        self, *capabilities: str, priority: int = 0, concurrency: int | None = None
    ) -> Callable[[F], F]:
        """Decorate a reviewer (async, or plain: it then runs in a thread): it gets the work
        under review (`UnderReview`: the task's prompt, result, summary, who did it) and
        returns a verdict (`ReviewVerdict.approve(...)` / `.reject(...)`, a `(verdict,
        feedback)` pair, or text in the Aegis convention). It takes the review tasks needing
        `capabilities` (a reviewer capability such as `review`), and those named for this
        agent. A return value that is no verdict fails the review attempt, which goes back
        to its queue (docs/review.md)."""

        def register(fn: F) -> F:
            async def handle(job: Job) -> dict[str, Any]:
                work = UnderReview.of(job.task)
                if inspect.iscoroutinefunction(fn):
                    value = await fn(work)
                else:
                    value = await asyncio.to_thread(fn, work)
                verdict = as_verdict(value)
                if verdict is None:
                    raise TaskFailed(f"the reviewer returned no verdict: {value!r:.200}")
                return verdict.as_result()

            handle.__name__ = getattr(fn, "__name__", "review")
            self.add_handler(
                handle, capabilities, priority=priority, concurrency=concurrency, review=True
            )
            return fn

        return register

    def all_capabilities(self) -> dict[str, float]:
        caps = {tag: 1.0 for h in self.handlers for tag in h.capabilities}
        caps.update(self.capabilities)
        return caps

    # --- state --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "active_agents": len(self.jobs),
            "available_slots": max(self.max_concurrent - len(self.jobs), 0),
            "max_concurrent": self.max_concurrent,
            "running": sorted(self.jobs),
            "stopping": self.is_stopping(),
        }

    async def wait_started(self) -> None:
        """Wait until the worker has registered and begun claiming."""
        await self._started.wait()

    def stop(self) -> None:
        """Stop claiming; running handlers get `grace_s` to finish. Safe from a signal
        handler and callable more than once."""
        self._stopping.set()
        self._changed.set()

    # --- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully (a second signal stops at
        once, handing running tasks back)."""
        run_until_signalled(self.serve, self.stop, self.is_stopping, self.grace_s)

    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    async def serve(self) -> None:
        """Register, then claim and run tasks until `stop()`; then finish or hand back."""
        if not self.handlers:
            raise ValueError("the worker has no handler: add one with @worker.handler(...)")
        await self.register()
        cursor = (await self.client.read_events("latest", limit=1)).next_cursor
        await self._adopt()
        background = [
            asyncio.create_task(self._heartbeats(), name="dispatchd-worker-heartbeat"),
            asyncio.create_task(self._watch(cursor), name="dispatchd-worker-watch"),
        ]
        self._started.set()
        try:
            await self._claim_loop()
            await self._finish(self.grace_s)
        finally:
            await self._finish(0)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self.deregister_on_stop:
                await self._deregister()

    async def register(self) -> None:
        await self.client.register_agent(
            agent_id=self.agent_id,
            capabilities=self.all_capabilities(),
            max_concurrent=self.max_concurrent,
            owner=self.owner,
            room=self.room,
            description=self.description,
        )
        log.info("registered %s for %s", self.agent_id, ", ".join(sorted(self.all_capabilities())))

    async def _deregister(self) -> None:
        try:
            await self.client.deregister_agent(self.agent_id)
        except ClientError as exc:
            log.warning("could not deregister %s: %s", self.agent_id, exc)

    async def _claim_loop(self) -> None:
        pause = 0.0
        while not self._stopping.is_set():
            # Cleared before the state is read, so a change from here on is never missed.
            self._changed.clear()
            plan = self._claim_plan(self.max_concurrent - len(self.jobs))
            if not plan:
                await self._wait_change(None)
                continue
            try:
                got, reason = await self._claim_round(plan)
                pause = 0.0
            except NotFound:
                log.warning("%s is not registered any more: registering again", self.agent_id)
                got, reason = [], "not_registered"
                with contextlib.suppress(ClientError):
                    await self.register()
            except ClientError as exc:
                pause = min(max(pause * 2, 0.5), RETRY_CAP_S)
                log.warning("claim failed (%s); trying again in %.1fs", exc, pause)
                await self._wait_change(pause * random.uniform(0.5, 1.0))
                # A claim whose answer was lost may have taken tasks all the same.
                with contextlib.suppress(ClientError):
                    await self._adopt()
                continue
            for task in got:
                self._launch(task)
            if not got and reason in ("draining", "degraded", "at_capacity", "not_registered"):
                # Nothing changes by asking again at once: wait for a slot or a while.
                await self._wait_change(min(self.claim_wait_s, 5.0))

    def _claim_plan(self, free: int) -> list[tuple[list[str] | None, int]]:
        """What to claim, most wanted first, as (tags, how many): one claim per priority
        level of the handlers with room, the last one waiting for anything they can take.
        A handler with a concurrency of its own is never sent more than it has room for."""
        open_handlers = [h for h in self.handlers if h.has_room()]
        if free <= 0 or not open_handlers:
            return []
        levels: dict[int, list[Handler]] = {}
        for h in sorted(open_handlers, key=lambda h: h.priority):
            levels.setdefault(h.priority, []).append(h)
        steps = [self._claim_step(hs, free) for hs in levels.values()]
        if len(steps) == 1:
            return steps
        return [*steps[:-1], self._claim_step(open_handlers, free)]

    def _claim_step(self, handlers: list[Handler], free: int) -> tuple[list[str] | None, int]:
        handled = {tag for h in self.handlers for tag in h.capabilities}
        extras = set(self.capabilities) - handled  # tags no handler names, e.g. `python`
        tags: set[str] | None = set(extras)
        for h in handlers:
            tags = None if tags is None or not h.capabilities else tags | h.capabilities
        return (None if tags is None else sorted(tags), min(h.room(free) for h in handlers))

    async def _claim_round(
        self, plan: list[tuple[list[str] | None, int]]
    ) -> tuple[list[Task], str | None]:
        """Claim for each priority level at once, then wait for anything open."""
        for tags, count in plan[:-1]:
            claim = await self.client.claim(count, 0.0, capabilities=tags)
            if claim.tasks:
                return list(claim.tasks), None
        tags, count = plan[-1]
        waiting = asyncio.create_task(
            self.client.claim(count, self.claim_wait_s, capabilities=tags)
        )
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not waiting.done():
            # Stopping: whatever this claim still takes is handed back by deregistration.
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await waiting
            return [], None
        claim = waiting.result()
        return list(claim.tasks), claim.reason

    async def _adopt(self) -> None:
        """Run what the broker says this agent is running and nobody here runs: a task
        whose claim answer was lost on the way, or one an earlier run of this agent held
        when it died. Its attempt stays the same, so every report stays fenced."""
        if self._stopping.is_set():
            return
        page = await self.client.list_tasks(
            assignee=self.agent_id, status=["running", "waiting_input"], limit=500
        )
        for task in page.items:
            if task.id in self.jobs or (task.id, task.attempt) in self._finished:
                continue
            log.info(
                "taking up task %s (attempt %d), held with nobody on it", task.id, task.attempt
            )
            self._launch(task)

    async def _wait_change(self, limit_s: float | None) -> None:
        """Wait for a slot to free, a stop, or `limit_s` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await self._changed.wait()

    def _launch(self, task: Task) -> None:
        held = self.jobs.get(task.id)
        if held is not None:
            old, running = held
            if old.attempt >= task.attempt:
                return
            # The task came back under a newer attempt: the old run is over.
            old.lost = f"superseded by attempt {task.attempt}"
            running.cancel()
        job = Job(self, task, choose(self.handlers, task))
        running = asyncio.create_task(self._execute(job), name=f"dispatchd-job-{task.id}")
        self.jobs[task.id] = (job, running)
        if job.handler is not None:
            job.handler.active += 1

        def done(_: asyncio.Task[None]) -> None:
            self._finished[(task.id, task.attempt)] = None
            if len(self._finished) > FINISHED_KEPT:
                del self._finished[next(iter(self._finished))]
            if self.jobs.get(task.id, (None,))[0] is job:
                del self.jobs[task.id]
            if job.handler is not None:
                job.handler.active -= 1
            self._changed.set()

        running.add_done_callback(done)

    async def _execute(self, job: Job) -> None:
        handler = job.handler
        if handler is None:
            caps = ", ".join(job.task.capabilities) or "none"
            await job.fail(f"{self.agent_id} has no handler for capabilities: {caps}")
            return
        try:
            # A task pushed to the worker while its handler is full waits here for room.
            async with handler.slots or contextlib.nullcontext():
                if inspect.iscoroutinefunction(handler.fn):
                    result = await handler.fn(job)
                else:
                    result = await asyncio.to_thread(handler.fn, job)
        except asyncio.CancelledError:
            if job.lost is not None:
                log.info("task %s stopped: %s", job.id, job.lost)
                return
            raise
        except TaskFailed as exc:
            if not job.reported and job.lost is None:
                await job.fail(exc.error, retryable=exc.retryable)
            return
        except Exception as exc:
            log.info("task %s failed in %s: %r", job.id, handler.name, exc)
            if not job.reported and job.lost is None:
                await job.fail(short_traceback(exc))
            return
        if not job.reported and job.lost is None:
            await job.complete(result)

    async def report(self, job: Job, send: Callable[[], Awaitable[Task]]) -> None:
        """Send a final report, again while the broker cannot answer it. When it is
        refused, the task is checked: if it is no longer this worker's (cancelled, timed
        out, taken away) the report is dropped; if it still is (the result too large, the
        task waiting for an answer), the attempt is failed so the task is retried rather
        than left held with nobody on it."""
        pause = 0.5
        while True:
            try:
                await send()
                return
            except TRANSIENT as exc:
                log.warning("report on task %s failed (%s); again in %.1fs", job.id, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_CAP_S)
            except ApiError as exc:
                refusal = exc
                break
        if not await self.holds(job):
            log.info("report on task %s dropped, it is not this worker's: %s", job.id, refusal)
            return
        log.warning("report on task %s refused: %s; failing the attempt", job.id, refusal)
        error = clip(f"the worker's report was refused ({refusal.code}): {refusal.message}")
        try:
            await self.client.fail_task(job.id, error, retryable=True, attempt=job.attempt)
        except ClientError as exc:
            log.error("task %s could not be failed either: %s", job.id, exc)

    async def holds(self, job: Job) -> bool:
        """Whether the broker still has `job`'s attempt with this worker (True when it
        cannot be asked: the attempt fence makes acting on it safe)."""
        try:
            task = await self.client.get_task(job.id)
        except ClientError as exc:
            log.warning("could not check task %s: %s", job.id, exc)
            return True
        return (
            task.status in HELD and task.assignee == self.agent_id and task.attempt == job.attempt
        )

    async def verify(self, job: Job, why: str) -> None:
        """Stop `job`'s handler if its task is no longer this worker's."""
        held = self.jobs.get(job.id)
        if held is None or held[0] is not job or await self.holds(job):
            return
        job.lost = why
        if not held[1].done():
            held[1].cancel()

    async def _finish(self, grace_s: float) -> None:
        """Let running handlers finish for `grace_s`, then cancel the rest."""
        running = [t for _, t in self.jobs.values()]
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        left = [(job, t) for job, t in self.jobs.values() if not t.done()]
        for job, t in left:
            job.lost = "the worker is stopping; the task is handed back"
            t.cancel()
        if left:
            await asyncio.gather(*(t for _, t in left), return_exceptions=True)

    # --- background -----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.client.heartbeat(self.agent_id)
                await self._adopt()
            except NotFound:
                with contextlib.suppress(ClientError):
                    await self.register()
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _watch(self, cursor: str) -> None:
        """Follow the event log for what takes a running task away from this worker."""
        pause = 0.5
        while True:
            try:
                page = await self.client.read_events(
                    cursor, types=WATCHED, wait_s=self.claim_wait_s, limit=500
                )
            except Gone:
                cursor = "latest"
                continue
            except ClientError as exc:
                log.warning("reading the event log failed: %s", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_CAP_S)
                continue
            pause = 0.5
            cursor = page.next_cursor
            for event in page.events:
                await self._check(event)

    async def _check(self, event: Event) -> None:
        held = self.jobs.get(event.task_id or "")
        if held is None:
            return
        if event.type == "task.retrying" and event.data.get("reason") == "failed":
            return  # this worker's own failure report
        if event.type == "task.assigned" and event.agent_id == self.agent_id:
            return
        if event.type == "task.failed" and event.data.get("code") != BUDGET_EXCEEDED:
            return  # a failure this worker reported; a crossed budget stops the attempt
        why = event.type.removeprefix("task.")
        await self.verify(
            held[0], "budget exceeded" if event.data.get("code") == BUDGET_EXCEEDED else why
        )
