"""Helpers for the background jobs (assigner, sweeper, event-log readers)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


def stop_if_cancelled() -> None:
    """Raise the cancellation a library lost. On Python 3.11 `asyncio.wait_for` (which
    psycopg_pool uses while a caller waits for a connection) swallows a cancel that lands
    as the connection is handed over; the task still counts it (`cancelling()`). Loops
    call this once per turn, so a stopping job stops."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def first_of(*jobs: Awaitable[Any]) -> None:
    """Run `jobs` until one of them ends; cancel the others. Its error, if any, is raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """The wait after `failures` failures in a row: doubling from `base_s`, capped at
    `cap_s`, and drawn from its upper half so that replicas do not retry in step."""
    ceiling = min(cap_s, base_s * 2 ** min(failures - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float
    cap_s: float


# A record (an event, a task) that fails this many times in a row is set aside.
POISON_AFTER = 3
# A job that ran this long before crashing restarts after the shortest wait.
GOOD_SPELL_S = 60.0
RESTART = Backoff(0.5, 30.0)
ERROR_TEXT = 300

JobListener = Callable[[str, str], None]


def describe_error(exc: BaseException) -> str:
    """The error in a line; a group (the jobs that run in a task group) by its members."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_error(member) for member in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


class JobState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    FAILING = "failing"  # its last turn failed; it retries after a backoff
    RESTARTING = "restarting"  # it crashed; the supervisor starts it again after a backoff
    STOPPED = "stopped"


@dataclass
class JobStatus:
    """What one background job is doing, for `/health` and `/metrics`. The job reports
    its turns (`ok`, `failed`) and the records it gave up on (`set_aside`)."""

    name: str
    listener: JobListener | None = None
    state: JobState = JobState.STARTING
    errors: int = 0
    restarts: int = 0
    set_aside_count: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    doing: str | None = None

    @property
    def down(self) -> bool:
        return self.state in (JobState.FAILING, JobState.RESTARTING)

    def ok(self) -> None:
        self.state = JobState.RUNNING
        self.doing = None

    def stop(self) -> None:
        self.state = JobState.STOPPED

    def failed(self, exc: BaseException, doing: str) -> None:
        self.state = JobState.FAILING
        self._error(exc, doing)

    def crashed(self, exc: BaseException | None) -> None:
        self.state = JobState.RESTARTING
        self.restarts += 1
        self._tell("restart")
        if exc is not None:
            self._error(exc, "running")

    def set_aside(self, what: str, exc: BaseException) -> None:
        """A record that kept failing is skipped: counted, and its error kept (the job
        itself goes on, so its state does not change)."""
        self.set_aside_count += 1
        self._tell("set_aside")
        self._error(exc, f"set aside {what}")

    def _error(self, exc: BaseException, doing: str) -> None:
        self.errors += 1
        self.doing = doing
        self.last_error = describe_error(exc)[:ERROR_TEXT]
        self.last_error_at = datetime.now(UTC)
        self._tell("error")

    def _tell(self, kind: str) -> None:
        if self.listener is not None:
            self.listener(self.name, kind)

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "errors": self.errors,
            "restarts": self.restarts,
            "set_aside": self.set_aside_count,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "doing": self.doing,
        }


class Strikes:
    """A background job's failures in a row on each of its records (tasks, agents): a
    record that fails POISON_AFTER times in a row is set aside (logged with its error and
    counted on the job) instead of holding up the records behind it. `set_aside` maps each
    to its error, for as long as this process runs or until `release`."""

    def __init__(
        self, job: Callable[[], JobStatus], kind: str, action: str, logger: logging.Logger
    ) -> None:
        # The owner's job status, looked up each time: the runtime replaces it with the one
        # it supervises.
        self.job = job
        self.kind = kind
        self.action = action
        self.log = logger
        self.set_aside: dict[str, str] = {}
        self._tries: dict[str, int] = {}

    def ok(self, key: str) -> None:
        """The record was handled: its count starts again."""
        self._tries.pop(key, None)

    def release(self, key: str) -> None:
        """The record changed: it may be tried again."""
        self._tries.pop(key, None)
        self.set_aside.pop(key, None)

    def strike(self, key: str, exc: BaseException, doing: str) -> bool:
        """Count a failure of `doing` the record `key`; True when it is now set aside."""
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        if tries < POISON_AFTER:
            return False
        self._tries.pop(key, None)
        self.set_aside[key] = f"{type(exc).__name__}: {exc}"
        self.log.error(
            "%s %s set aside after %d failures in a row %s it",
            self.kind,
            key,
            tries,
            doing,
            exc_info=exc,
            extra={"action": f"{self.action}_set_aside", f"{self.kind}_id": key},
        )
        self.job().set_aside(f"{self.kind} {key}", exc)
        return True

    def failed(self, key: str, exc: BaseException, doing: str) -> None:
        """A failure the job goes on after: logged and reported to the job, or, the
        POISON_AFTER-th in a row, the record set aside."""
        if self.strike(key, exc, doing):
            return
        extra = {"action": self.action, f"{self.kind}_id": key}
        self.log.error("%s %s %s failed", doing, self.kind, key, exc_info=exc, extra=extra)
        self.job().failed(exc, f"{doing} {self.kind} {key}")


class Jobs:
    """The status of every background job of a runtime, by name."""

    def __init__(self, listener: JobListener | None = None) -> None:
        self.listener = listener
        self.all: dict[str, JobStatus] = {}

    def status(self, name: str) -> JobStatus:
        found = self.all.get(name)
        if found is None:
            found = self.all[name] = JobStatus(name, self.listener)
        return found

    @property
    def down(self) -> list[str]:
        return sorted(name for name, status in self.all.items() if status.down)


async def supervise(
    status: JobStatus,
    start: Callable[[], Coroutine[Any, Any, None]],
    *,
    backoff: Backoff = RESTART,
) -> None:
    """Run the job `start()` makes for as long as the runtime does: each loop handles its
    own errors, and this is the net under them. A job that raises (or returns) is logged
    with its traceback, counted as restarted and started again after a backoff. Only a
    cancellation stops it."""
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        stop_if_cancelled()
        started = loop.time()
        status.state = JobState.RUNNING
        error: Exception | None = None
        try:
            await start()
        except Exception as exc:
            error = exc
        if loop.time() - started > GOOD_SPELL_S:
            failures = 0
        failures += 1
        wait_s = backoff_s(failures, backoff.base_s, backoff.cap_s)
        status.crashed(error)
        log.critical(
            "%s stopped%s; restarting in %.2fs",
            status.name,
            f": {describe_error(error)}" if error else " without an error",
            wait_s,
            exc_info=error,
            extra={"action": "job_restart", "job": status.name},
        )
        await asyncio.sleep(wait_s)
