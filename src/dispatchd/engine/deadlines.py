"""The deadline sweeper: the only timed work, and never between a request and its answer.

Every deadline is a column behind an index (`deadline_at`, `lease_expires_at`,
`not_before`, `run_at`), so a restart loses none. The sweeper asks the store for the
earliest one, sleeps until then (at most `tick`, and less when new work may have brought
an earlier deadline), and acts on what has passed:

* a running task past its timeout → timed out (retried with backoff, or final);
* a task waiting for input past its input timeout → failed (`input_timeout`); while it
  waits its run deadline and lease are set aside (`run_left_ms`), so neither fires;
* a running task whose lease lapsed (no progress or heartbeat) → requeued as lost;
* an assigned task not started in time (the wake timeout) → requeued;
  in both cases the agent, if it has not been heard from for as long, is marked offline
  in the same commit, so the assigner never hands the task straight back to it;
* a pending task whose backoff ended → offered to the assigner;
* a blocked task whose `run_at` came → pending, if its dependencies are done;
* a schedule whose `next_fire_at` came → fired (`engine/firing.py`).

Each action re-reads the task and re-checks the deadline before it writes, with the
task's version: a heartbeat or a completion that lands first wins, and a task that
finished is never touched. Several replicas may sweep at once; one write wins.

A sweep that fails is logged and tried again after a backoff. A task whose action fails
with an error (not a race) is passed over for that sweep, so the others go on; after
POISON_AFTER failures in a row it is set aside (logged, counted) until the runtime restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from dispatchd.domain import lifecycle
from dispatchd.domain.access import Caller
from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import AgentStatus, Task, TaskStatus
from dispatchd.engine.agents import status_event
from dispatchd.engine.followups import unblock_due
from dispatchd.engine.transitions import MAX_TRIES, commit_changes, transact
from dispatchd.errors import ConcurrentUpdate, DispatchError, NotFound
from dispatchd.jobs import JobStatus, Strikes, backoff_s, stop_if_cancelled
from dispatchd.store.base import AppendEvent, Op, Store, UpdateAgent

log = logging.getLogger(__name__)

BATCH = 500
# After work arrives, look again for an earlier deadline no sooner than this.
RECHECK_S = 0.05
MIN_SLEEP_S = 0.01
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Step = tuple[Change, Task | None]
Kick = Callable[[list[str]], None]


class Firing(Protocol):
    async def fire_due(self, now: datetime | None = None) -> int: ...


class Sweeper:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        tick: timedelta,
        kick: Kick,
        escalate_to: str | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.tick = tick
        self.kick = kick
        self.escalate_to = escalate_to
        # Backoffs and run_at times up to here have been acted on. It starts at the epoch,
        # so that after a restart every one that passed while down is acted on once.
        self.since = EPOCH
        self._poke = asyncio.Event()
        self._random = random.SystemRandom()
        self.actions = 0
        self.job = JobStatus("sweeper")
        self.strikes = Strikes(lambda: self.job, "task", "sweep", log)
        # Fires the schedules whose time came (None: schedules are not fired here).
        self.firer: Firing | None = None

    @property
    def set_aside(self) -> dict[str, str]:
        """The tasks set aside (until this process restarts), with their error."""
        return self.strikes.set_aside

    def poke(self, _last: int = 0) -> None:
        """New work may carry an earlier deadline than the one slept for."""
        self._poke.set()

    async def run(self) -> None:
        failures = 0
        while True:
            stop_if_cancelled()
            # Cleared before the store is read, not after: work committed while the sweep
            # or the look for the next deadline reads leaves its poke set, and the wait
            # below ends at once instead of sleeping past the deadline that work brought.
            self._poke.clear()
            try:
                await self.sweep()
                delay = await self._delay()
                failures = 0
                self.job.ok()
            except Exception as exc:
                failures += 1
                delay = backoff_s(failures, MIN_SLEEP_S * 10, self.tick.total_seconds())
                self.job.failed(exc, "sweeping the deadlines")
                if isinstance(exc, DispatchError):
                    log.warning("deadline sweep failed: %s", exc, extra={"action": "sweep"})
                else:
                    log.error("deadline sweep failed", exc_info=exc, extra={"action": "sweep"})
            try:
                async with asyncio.timeout(delay):
                    await self._poke.wait()
                # Woken by new work: let a burst settle before querying again.
                await asyncio.sleep(RECHECK_S)
            except TimeoutError:
                pass

    async def _delay(self) -> float:
        upcoming = await self.store.next_deadline(self.since)
        cap = self.tick.total_seconds()
        if upcoming is None:
            return cap
        # At least a little: a deadline that cannot be acted on yet (a racing writer) is
        # looked at again shortly, not in a busy loop.
        return min(max((upcoming - utcnow()).total_seconds(), MIN_SLEEP_S), cap)

    async def sweep(self) -> int:
        """Act on every deadline that has passed; return how many tasks were acted on."""
        total = 0
        while True:
            now = utcnow()
            due = await self.store.due(now, self.since, BATCH)
            lease, wake = self.policy.lease, self.policy.wake_timeout
            for task in due.timed_out:
                await self._guard(task.id, "timing out", self._act, task.id, self._time_out)
            for task in due.lease_lost:
                await self._guard(
                    task.id, "requeuing", self._requeue_silent, task.id, self._lease_lost, lease
                )
            for task in due.not_started:
                await self._guard(
                    task.id, "requeuing", self._requeue_silent, task.id, self._not_started, wake
                )
            for task in due.run_at:
                await self._guard(task.id, "unblocking", self._act, task.id, self._run_at)
            if due.ready:
                self.kick([t.id for t in due.ready])
            total += len(due)
            if self.firer is not None:
                try:
                    total += await self.firer.fire_due(now)
                except DispatchError:
                    raise
                except Exception as exc:
                    # Schedules that cannot be fired must not hold up the task deadlines.
                    log.error(
                        "firing the due schedules failed", exc_info=exc, extra={"action": "sweep"}
                    )
                    self.job.failed(exc, "firing the due schedules")
            full = max(
                len(due.timed_out),
                len(due.lease_lost),
                len(due.not_started),
                len(due.ready),
                len(due.run_at),
            )
            if full < BATCH:
                self.since = now
                self.actions += total
                return total
            # A full batch: the backoffs seen are offered; go on past them. (`since` bounds
            # backoffs only: a due run_at is found again until its task is unblocked.)
            seen = [t.not_before for t in due.ready if t.not_before is not None]
            self.since = max([self.since, *seen])

    async def _guard(
        self, task_id: str, doing: str, action: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run one task's action. An error other than the database's is that task's alone:
        logged and counted, and the sweep goes on with the others."""
        if task_id in self.set_aside:
            return
        try:
            await action(*args)
        except DispatchError:
            raise
        except Exception as exc:
            self.strikes.failed(task_id, exc, doing)
        else:
            self.strikes.ok(task_id)

    async def _act(self, task_id: str, compute: Callable[[Task], Awaitable[list[Step]]]) -> None:
        # Gone, or racing a live writer: the next sweep looks again.
        with contextlib.suppress(NotFound, ConcurrentUpdate):
            await transact(self.store, task_id, compute, escalate_to=self.escalate_to)

    async def _time_out(self, task: Task) -> list[Step]:
        now = utcnow()
        if not (_held_running(task) and task.deadline_at and task.deadline_at <= now):
            return []
        if task.status is TaskStatus.WAITING_INPUT:
            # A waiting task's only deadline is its input timeout: nobody answered.
            return [(lifecycle.input_timed_out(task, now, self.policy), task)]
        return [(lifecycle.time_out(task, now, self.policy, jitter=self._random.random()), task)]

    async def _lease_lost(self, task: Task, now: datetime) -> Change | None:
        lease = task.lease_expires_at
        if not (task.status is TaskStatus.RUNNING and lease and lease <= now):
            return None
        reason = f"lease expired: no heartbeat or progress from {task.assignee}"
        return lifecycle.requeue(task, now, self.policy, reason=reason)

    async def _not_started(self, task: Task, now: datetime) -> Change | None:
        lease = task.lease_expires_at
        if task.status is not TaskStatus.ASSIGNED or not lease or lease > now:
            return None
        wait_s = self.policy.wake_timeout.total_seconds()
        reason = f"not started by {task.assignee} within the wake timeout ({wait_s:g}s)"
        return lifecycle.requeue(task, now, self.policy, reason=reason)

    async def _requeue_silent(
        self,
        task_id: str,
        decide: Callable[[Task, datetime], Awaitable[Change | None]],
        quiet: timedelta,
    ) -> None:
        """Take a task from an agent that went silent on it; in the same commit, mark the
        agent offline if it has not been heard from for `quiet` either, so the assigner,
        seeing both at once, gives the task to someone else."""
        for _ in range(MAX_TRIES):
            task = await self.store.get_task(task_id)
            now = utcnow()
            change = await decide(task, now) if task is not None else None
            if task is None or change is None:
                return  # finished, renewed or started meanwhile
            try:
                await commit_changes(
                    self.store,
                    [(change, task)],
                    await self._offline_ops(task.assignee, now, quiet),
                    escalate_to=self.escalate_to,
                )
            except ConcurrentUpdate:
                continue  # the task or the agent moved: look again
            except NotFound:
                return
            return

    async def _offline_ops(self, agent_id: str | None, now: datetime, quiet: timedelta) -> list[Op]:
        """An agent silent on its task has not sent a heartbeat for `quiet` either: it is
        taken as gone, offline until it is heard from again."""
        if agent_id is None:
            return []
        agent = await self.store.get_agent(agent_id)
        if agent is None or agent.status is AgentStatus.OFFLINE:
            return []
        if agent.last_heartbeat_at is not None and agent.last_heartbeat_at > now - quiet:
            return []
        gone = agent.evolve(status=AgentStatus.OFFLINE, updated_at=now, version=agent.version + 1)
        return [UpdateAgent(gone), AppendEvent(status_event(agent, gone, Caller("dispatchd")))]

    async def _run_at(self, task: Task) -> list[Step]:
        change = await unblock_due(self.store, task, utcnow())
        return [(change, task)] if change else []


def _held_running(task: Task) -> bool:
    return task.status in (TaskStatus.RUNNING, TaskStatus.WAITING_INPUT)
