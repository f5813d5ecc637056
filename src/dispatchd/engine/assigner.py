"""Push assignment (SPEC §3): a task goes to the best agent the moment both exist.

One assigner runs in each replica. It follows the event log by cursor, woken by the feed
(a commit here, or a NOTIFY from another replica), and acts on what the events say:

* a task became assignable (created pending, unblocked, requeued, rejected, escalated,
  retried by hand, its priority changed) → choose its best agent;
* an agent gained room or availability (a task it held ended, it registered, was
  undrained, changed status or capabilities) → offer it the queue's best tasks it may take.

Every choice is committed with the task's version and a slot reserved on the agent row, so
replicas racing for the same task or the same slot cannot both win: the loser re-reads.

A pass that fails is logged with what it was doing and tried again after a backoff, from
a fresh start (the agents read again, every agent with room offered the queue), so the
events of the failed pass lose nothing. A task that cannot be assigned without an error
POISON_AFTER times in a row is set aside (logged, counted) until it changes, instead of
blocking the queue behind it; so is an agent whose queue cannot be read for it, so that
the other agents are still offered theirs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Policy
from dispatchd.domain.models import AgentStatus, Event, Task, TaskStatus
from dispatchd.domain.scoring import limit_of
from dispatchd.engine.directory import Directory
from dispatchd.engine.feed import EventFeed
from dispatchd.engine.placement import Placement, Placer, queue_key
from dispatchd.engine.rules import Rules
from dispatchd.engine.transitions import MAX_TRIES, writes_for
from dispatchd.engine.waiters import Waiters
from dispatchd.engine.wake import Waker
from dispatchd.errors import AgentUnavailable, ConcurrentUpdate, DispatchError
from dispatchd.jobs import JobStatus, Strikes, backoff_s, stop_if_cancelled
from dispatchd.store.base import ClaimQuery, Op, Store

log = logging.getLogger(__name__)

BATCH = 1000
# Assignments committed together when many tasks arrive at once.
CHUNK = 100
# The waits between failed passes.
RETRY_BASE_S = 0.1
RETRY_CAP_S = 5.0

# Events after which a task may be given to an agent.
_ASSIGNABLE = frozenset(
    {
        "task.created",
        "task.unblocked",
        "task.requeued",
        "task.rejected",
        "task.escalated",
        "task.retrying",
        "task.updated",
    }
)
# Events after which the acting agent (or the task's former assignee) may have room.
# (Agent events are listed too: a registration or an undrain opens room.)
_ROOM = frozenset(
    {
        "task.completed",
        "task.failed",
        "task.timed_out",
        "task.retrying",
        "task.requeued",
        "task.cancelled",
        "task.review_requested",
        "agent.registered",
        "agent.updated",
        "agent.undrained",
        "agent.status_changed",
    }
)


class Assigner:
    def __init__(
        self,
        store: Store,
        feed: EventFeed,
        directory: Directory,
        rules: Rules,
        policy: Policy,
        *,
        waiters: Waiters,
        waker: Waker,
        placer: Placer | None = None,
        refresh_s: float | None = None,
    ) -> None:
        self.store = store
        self.feed = feed
        self.directory = directory
        self.rules = rules
        self.policy = policy
        self.waiters = waiters
        self.waker = waker
        self.placer = placer or Placer(directory, waiters, waker, rules, policy)
        directory.position = lambda: feed.latest
        # With an external capability/availability service, its answers change without
        # events here: reload the directory this often.
        self.refresh_s = refresh_s
        self.cursor = 0
        self._wake = asyncio.Event()
        directory.on_stale = self._wake.set
        self._tasks_due: set[str] = set()
        # Held while a pass over the events is under way (see `caught_up`).
        self._stepping = asyncio.Lock()
        self.assigned = 0
        self.job = JobStatus("assigner")
        # Tasks that keep failing to be assigned with an error (not a race), and agents
        # whose queue keeps failing to be read, set aside after POISON_AFTER in a row.
        self.task_strikes = Strikes(lambda: self.job, "task", "assign", log)
        self.agent_strikes = Strikes(lambda: self.job, "agent", "assign", log)
        self.set_aside = self.task_strikes.set_aside
        self.agents_set_aside = self.agent_strikes.set_aside
        self._resync = False
        self._doing = "starting"

    # --- driving ----------------------------------------------------------------------

    def kick(self, task_ids: Iterable[str] = ()) -> None:
        """Look at these tasks soon (the sweeper calls this when a backoff ends)."""
        self._tasks_due.update(task_ids)
        self._wake.set()

    def _advanced(self, _last: int) -> None:
        self._wake.set()

    async def start(self) -> None:
        """Load the agents and serve what is already waiting (after a restart, say)."""
        self.feed.listen(self._advanced)
        await self.resync()
        self.placer.caught_up = self.caught_up

    async def resync(self) -> None:
        """Start afresh from now: the agents read again and each one with room offered the
        queue, which covers whatever the events before now would have led to."""
        self._doing = "reading the agents and offering them the queue"
        self.cursor = self.feed.latest
        await self.directory.load()
        await self.fill(list(self.directory.agents))

    def caught_up(self) -> bool:
        """Whether the assigner has acted on every event logged so far, so that the
        directory is as current as it would be for its own next choice."""
        return (
            self.feed.latest <= self.cursor and not self._tasks_due and not self._stepping.locked()
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reload_at = loop.time() + self.refresh_s if self.refresh_s else None
        failures = 0
        # A restart by the supervisor after a crash: nothing said where this one stood.
        self._resync = self._resync or self.job.restarts > 0
        self._wake.set()
        while True:
            stop_if_cancelled()
            if reload_at is not None and loop.time() >= reload_at:
                # On a clock of its own: steady traffic must not postpone it.
                assert self.refresh_s is not None
                reload_at = loop.time() + self.refresh_s
                await self._reload()
                continue
            try:
                wait = None if reload_at is None else max(reload_at - loop.time(), 0.0)
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                continue
            self._wake.clear()
            try:
                async with self._stepping:
                    if self._resync:
                        await self.resync()
                        self._resync = False
                    await self.step()
                failures = 0
                self.job.ok()
            except Exception as exc:
                failures += 1
                await self._failed(exc, failures)

    async def _failed(self, exc: Exception, failures: int) -> None:
        wait_s = backoff_s(failures, RETRY_BASE_S, RETRY_CAP_S)
        self.job.failed(exc, self._doing)
        self._resync = True
        if isinstance(exc, DispatchError):
            log.warning(
                "assignment failed while %s: %s; retrying in %.2fs",
                self._doing,
                exc,
                wait_s,
                extra={"action": "assign"},
            )
        else:
            log.error(
                "assignment failed while %s; retrying in %.2fs",
                self._doing,
                wait_s,
                exc_info=exc,
                extra={"action": "assign"},
            )
        await asyncio.sleep(wait_s)
        self._wake.set()

    async def _reload(self) -> None:
        try:
            async with self._stepping:
                await self.resync()
        except Exception as exc:
            log.warning("reloading the agents failed: %r", exc, extra={"action": "assign"})
            self.job.failed(exc, "reloading the agents")
            self._resync = True
            self._wake.set()

    async def step(self) -> None:
        """Act on the agents to read again, the events after the cursor and the tasks
        kicked meanwhile."""
        stale = self.directory.take_stale()
        if stale:
            self._doing = f"reading {len(stale)} agents again"
            try:
                await self.directory.refresh(stale)
            except BaseException:
                self.directory.mark_stale(stale)
                raise
        due, self._tasks_due = self._tasks_due, set()
        if due:
            self._doing = f"considering {len(due)} tasks whose wait ended"
            try:
                await self.consider(due)
            except BaseException:
                self._tasks_due |= due
                raise
        while self.feed.latest > self.cursor:
            self._doing = f"reading events after {self.cursor}"
            events = await self.feed.read(self.cursor, BATCH)
            if not events:
                break
            self._doing = f"handling events {events[0].id} to {events[-1].id}"
            self.cursor = events[-1].id or self.cursor
            await self.handle(events)

    # --- reacting to events -------------------------------------------------------------

    async def handle(self, events: Sequence[Event]) -> None:
        touched: set[str] = set()
        # Tasks that may be given to an agent, in the order they became so; a task
        # assigned later in the same events is left out (no read to find that out).
        tasks: dict[str, None] = {}
        roomy: set[str] = set()
        known = self.directory.agents
        for event in events:
            holder = event.data.get("assignee") if event.type == "task.cancelled" else None
            agent_id = holder if isinstance(holder, str) else event.agent_id
            if event.type.startswith("agent.") and event.agent_id:
                touched.add(event.agent_id)
                # It changed: worth trying again if it was set aside.
                self.agent_strikes.release(event.agent_id)
            elif event.type in _LOAD and agent_id in known and not self.directory.apply_load(event):
                # The load on the agent row moved and the event does not say exactly how:
                # re-read the row (requesters are not agents).
                touched.add(agent_id)
            if event.type == "task.assigned" and event.agent_id:
                self.waiters.wake(event.agent_id)
            if event.task_id:
                if event.type in _ASSIGNABLE:
                    # It changed: worth trying again if it was set aside.
                    self.task_strikes.release(event.task_id)
                if event.type in _ASSIGNABLE and _makes_assignable(event):
                    tasks[event.task_id] = None
                elif event.type in _SETTLED:
                    tasks.pop(event.task_id, None)
            if event.type in _ROOM and agent_id:
                roomy.add(agent_id)
        if touched:
            await self.directory.refresh(touched)
        if tasks:
            await self.consider(tasks, events)
        if roomy:
            await self.fill(sorted(roomy))

    async def consider(
        self, task_ids: Iterable[str], events: Sequence[Event] | None = None
    ) -> None:
        """Give each of these tasks, if still waiting, to its best agent, in queue order.
        With the `events` that made them assignable, a task this process wrote at or after
        them is taken as written (`EventFeed.tasks_of`) instead of read back; a copy that
        is no longer the row fails its version check, and the task is then read."""
        now = utcnow()
        wanted = set(task_ids)
        if events is None:
            found = await self.store.get_tasks(sorted(wanted))
        else:
            of = await self.feed.tasks_of([e for e in events if e.task_id in wanted])
            found = [of[task_id] for task_id in sorted(wanted) if task_id in of]
        ready = [
            t for t in sorted(found, key=queue_key) if _ready(t, now) and t.id not in self.set_aside
        ]
        for start in range(0, len(ready), CHUNK):
            await self.assign_many(ready[start : start + CHUNK])

    async def assign_many(self, tasks: Sequence[Task]) -> None:
        """Choose for every task first, then commit the choices together: one transaction
        for a burst of new tasks instead of one each. If any choice no longer holds (a slot
        taken, a task changed), the store refuses the whole commit and each task is
        assigned on its own."""
        if len(tasks) == 1:
            await self.assign(tasks[0])
            return
        try:
            await self._assign_together(tasks)
        except DispatchError:
            raise
        except Exception:
            # One of them cannot be placed or written: each on its own finds which.
            for task in tasks:
                await self.assign(task)

    async def _assign_together(self, tasks: Sequence[Task]) -> None:
        placement = self.placer.plan(tasks, utcnow())
        if not placement:
            return
        try:
            await self.store.commit(_writes(placement))
        except (AgentUnavailable, ConcurrentUpdate):
            await self.directory.refresh(self.placer.undo(placement))
            for task in tasks:
                fresh = await self.store.get_task(task.id)
                if fresh is not None and _ready(fresh, utcnow()):
                    await self.assign(fresh)
            return
        except BaseException:
            await self.directory.refresh(self.placer.undo(placement))
            raise
        self.assigned += len(placement.given)
        self.placer.settle(placement)

    async def fill(self, agent_ids: Sequence[str]) -> None:
        """Offer each agent with room the best queued tasks it may take."""
        for agent_id in agent_ids:
            await self._fill_one(agent_id)

    async def _fill_one(self, agent_id: str) -> None:
        if agent_id in self.agents_set_aside:
            return
        for _ in range(MAX_TRIES):
            try:
                offer = await self._queue_for(agent_id)
            except DispatchError:
                raise
            except Exception as exc:
                # The pass fails (and is tried again) until the agent is set aside.
                if not self.agent_strikes.strike(agent_id, exc, "reading the queue of"):
                    raise
                return
            self.agent_strikes.ok(agent_id)
            if offer is None:
                return
            tasks, free = offer
            before = self.assigned
            # Each task goes to whoever is best for it, which may be another agent that
            # gained room in the same moment; then this one looks further down the queue.
            await self.assign_many(tasks)
            if len(tasks) < free or self.assigned == before:
                return

    async def _queue_for(self, agent_id: str) -> tuple[list[Task], int] | None:
        """The best queued tasks the agent may take and its free slots; None when it has
        no room or is not there."""
        agent = self.directory.agents.get(agent_id)
        if agent is None or agent.drained or agent.status in _OUT:
            return None
        free = limit_of(agent, self.rules.default_limit) - agent.active
        if free <= 0:
            return None
        query = ClaimQuery(
            agent_id=agent.id,
            capabilities=sorted(agent.capabilities),
            owner=agent.owner,
            owner_filter=self.rules.owner_filter,
            now=utcnow(),
            limit=free + len(self.set_aside),
            room=agent.room,
        )
        queued = await self.store.claimable(query)
        # A task whose events this assigner has not handled yet (it was queued while the
        # read was under way) waits for them: its choice is made then, among the agents
        # those events may have brought, not here by whichever agent read it first.
        tasks = [t for t in queued if t.id not in self.set_aside and not self._ahead(t.id)]
        return tasks[:free], free

    def _ahead(self, task_id: str) -> bool:
        """Whether this process wrote an event of the task after the assigner's cursor."""
        at = self.feed.last_event_of(task_id)
        return at is not None and at > self.cursor

    # --- one assignment -----------------------------------------------------------------

    async def assign(self, task: Task) -> Task | None:
        """Commit `task` to its best agent; None when nobody can take it now (or it was
        set aside)."""
        if task.id in self.set_aside:
            return None
        try:
            given = await self._assign(task)
        except DispatchError:
            raise
        except Exception as exc:
            # The pass fails (and is tried again) until the task is set aside.
            if not self.task_strikes.strike(task.id, exc, "assigning"):
                raise
            return None
        self.task_strikes.ok(task.id)
        return given

    async def _assign(self, task: Task) -> Task | None:
        skip: set[str] = set()
        for _ in range(MAX_TRIES):
            now = utcnow()
            placement = self.placer.plan([task], now, skip=skip)
            if not placement:
                return None
            try:
                await self.store.commit(_writes(placement))
            except AgentUnavailable:
                # Our copy of the agent was stale: re-read it and choose again.
                skip.update(placement.slots)
                await self.directory.refresh(self.placer.undo(placement))
                continue
            except ConcurrentUpdate:
                await self.directory.refresh(self.placer.undo(placement))
                fresh = await self.store.get_task(task.id)
                if fresh is None or not _ready(fresh, now):
                    return None
                task = fresh
                continue
            except BaseException:
                await self.directory.refresh(self.placer.undo(placement))
                raise
            self.assigned += 1
            self.placer.settle(placement)
            return placement.given[0][1]
        return None


def _writes(placement: Placement) -> list[Op]:
    writes, _ = writes_for(placement.changes)
    return [*placement.lead(), *writes]


_OUT = frozenset({AgentStatus.OFFLINE, AgentStatus.DEGRADED})
# Task events that move an agent's load.
_LOAD = frozenset({"task.assigned", *(t for t in _ROOM if t.startswith("task."))})
# Events after which a task is no longer waiting for an agent.
_SETTLED = frozenset({"task.assigned", "task.cancelled"})


def _ready(task: Task, now: datetime) -> bool:
    return task.status is TaskStatus.PENDING and (task.not_before is None or task.not_before <= now)


def _makes_assignable(event: Event) -> bool:
    data = event.data
    if event.type == "task.created":
        return data.get("status") == TaskStatus.PENDING.value
    if event.type == "task.rejected":
        return not data.get("final")
    if event.type == "task.escalated":
        return data.get("to") is not None
    # task.retrying: at once for a manual retry; after a backoff, `consider` finds the
    # task not ready yet and the sweeper offers it when the backoff ends.
    if event.type == "task.updated":
        return "priority" in data
    return True
