"""Choosing agents for tasks from the in-memory Directory, and the writes that hand them over.

Both the creation of a task and the assigner use it, so that a task created while a
capable agent has room is assigned in its creation's own commit. When the chosen agent has
a claim long-polling (`Waiters`), the task is also started in that commit and given to the
claim, which then answers without a transaction of its own: create → running is one commit.

The choice is a hint, as everywhere: each hand-over reserves the agent's slot in the commit
(`TakeSlot`), so a stale directory costs a retry, never a task given twice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import Agent, AgentStatus, Task, TaskStatus
from dispatchd.engine.directory import Directory
from dispatchd.engine.rules import Rules, hand_over
from dispatchd.engine.waiters import Waiter, Waiters
from dispatchd.engine.wake import Waker
from dispatchd.store.base import TakeSlot


@dataclass(slots=True)
class Placement:
    """The hand-overs chosen for a group of tasks, to be committed together."""

    # One slot reservation per agent, for all the tasks it gets here.
    slots: dict[str, TakeSlot] = field(default_factory=dict)
    # The assignments (and starts), each with the task it was computed from.
    changes: list[tuple[Change, Task]] = field(default_factory=list)
    # Each chosen agent with the task as it will be stored (assigned, or running).
    given: list[tuple[Agent, Task]] = field(default_factory=list)
    # The waiting claims taken, with the tasks started for them.
    claims: dict[str, tuple[Waiter, list[Task]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.given)

    def lead(self) -> list[TakeSlot]:
        """The slot reservations, to commit before the task writes, in agent id order (two
        commits that hand out several tasks never wait on each other's agent rows)."""
        return [self.slots[agent_id] for agent_id in sorted(self.slots)]

    def task_ids(self) -> list[str]:
        return [task.id for _, task in self.given]


def queue_key(task: Task) -> tuple[int, int, datetime, datetime, str]:
    """The order in which waiting tasks are served (the claim query's order)."""
    due = task.due_at or task.created_at
    return (-task.priority.rank, task.due_at is None, due, task.created_at, task.id)


class Placer:
    def __init__(
        self,
        directory: Directory,
        waiters: Waiters,
        waker: Waker,
        rules: Rules,
        policy: Policy,
    ) -> None:
        self.directory = directory
        self.waiters = waiters
        self.waker = waker
        self.rules = rules
        self.policy = policy
        # Whether the directory is up to the event log; set while push assignment runs
        # (without it, new tasks are left for the assigner, as without one they wait).
        self.caught_up: Callable[[], bool] | None = None

    def plan(
        self, tasks: Iterable[Task], now: datetime, *, skip: Collection[str] = ()
    ) -> Placement:
        """Choose for each task (pending), in queue order, its best agent with room;
        a task nobody can take now is left out, and so are the agents in `skip`. The
        choices are counted in the directory at once, so later tasks see the slots earlier
        ones took."""
        placement = Placement()
        for task in sorted(tasks, key=queue_key):
            choice = self.directory.best(
                task,
                default_limit=self.rules.default_limit,
                owner_filter=self.rules.owner_filter,
                skip=set(skip),
            )
            if choice is None:
                continue
            agent = self.directory.agents[choice.agent_id]
            waiter = self._claim_for(placement, agent, task)
            handover = hand_over(
                task, agent, now, self.rules, self.policy, start=waiter is not None
            )
            slot = handover.ops[0]
            assert isinstance(slot, TakeSlot)
            held = placement.slots.get(agent.id)
            placement.slots[agent.id] = (
                slot
                if held is None
                else TakeSlot(slot.agent_id, slot.limit, slot.at, slot.check_status, held.count + 1)
            )
            placement.changes.extend(handover.changes)
            placement.given.append((agent, handover.task))
            if waiter is not None:
                placement.claims[agent.id][1].append(handover.task)
            self.directory.note_assigned(agent.id, now, task.id)
        return placement

    def _claim_for(self, placement: Placement, agent: Agent, task: Task) -> Waiter | None:
        """A claim of `agent` waiting now that can take `task` too, if any."""
        taken = placement.claims.get(agent.id)
        if taken is None:
            waiter = self.waiters.take(agent.id, [task])
            if waiter is None:
                return None
            taken = placement.claims[agent.id] = (waiter, [])
        waiter, started = taken
        if len(started) >= waiter.max_tasks or not waiter.accepts(task):
            return None
        # The claim's own cap on the tasks its agent holds; `active` counts the tasks
        # placed so far. (A claim taken but given nothing is released by `settle`.)
        if waiter.max_capacity is not None and agent.active >= waiter.max_capacity:
            return None
        return waiter

    def settle(self, placement: Placement, stored: Mapping[str, Task] | None = None) -> None:
        """The placement is committed (`stored`: the tasks as that commit wrote them, when
        it wrote more than the placement): answer the claims taken, wake the other
        agents."""
        now = stored or {}
        for waiter, started in placement.claims.values():
            if started:
                waiter.deliver([now.get(t.id, t) for t in started])
            else:
                waiter.release()
        for agent, task in placement.given:
            if task.status is TaskStatus.ASSIGNED:
                self.handed(agent, task)

    def note_named(self, tasks: Iterable[Task]) -> None:
        """Count tasks about to be assigned by name (`assigned_to`), before their commit:
        the assigner may act on the commit's `task.assigned` before the committer resumes,
        and must then find the task counted already, not count it a second time."""
        for task in tasks:
            if task.assignee is not None:
                self.directory.note_assigned(task.assignee, task.updated_at, task.id)

    def named(self, task: Task) -> None:
        """`task`, committed, was assigned by name: wake its agent."""
        if task.status is not TaskStatus.ASSIGNED or task.assignee is None:
            return
        agent = self.directory.agents.get(task.assignee)
        if agent is None:
            self.waiters.wake(task.assignee)
            return
        self.handed(agent, task)

    def handed(self, agent: Agent, task: Task) -> None:
        """`task` was assigned to `agent` (not started): its claims look again, and a
        sleeping agent is woken."""
        self.waiters.wake(agent.id)
        if agent.status is AgentStatus.SLEEPING:
            self.waker.wake(agent, task)

    def undo(self, placement: Placement, named: Iterable[Task] = ()) -> set[str]:
        """The placement (and the tasks assigned by name beside it) was not committed: the
        claims taken look for work themselves, and the tasks counted for the chosen agents
        are taken off their counts. The agents, whose copies may be stale (the commit may
        have failed on one): the assigner reads them again (`refresh`, or `mark_stale`
        from outside it)."""
        for waiter, _ in placement.claims.values():
            waiter.release()
        return self.directory.unnote([*placement.task_ids(), *(t.id for t in named)])
