"""Task creation: one task or a batch, with its dependencies, in one commit.

A task that is pending from the start is handed to its best agent in the same commit when
the directory knows one with room (and started, when that agent has a claim waiting; see
`placement`), so the usual create → assign → claim takes one transaction instead of three.
A task named for an agent (`assigned_to`) reserves that agent's slot the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from dispatchd.domain import lifecycle
from dispatchd.domain.access import Caller
from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import Agent, ReviewerKind, Task, TaskSpec, TaskStatus
from dispatchd.engine.budgets import DailyBudgets
from dispatchd.engine.placement import Placement, Placer
from dispatchd.engine.rules import Rules, hand_over
from dispatchd.engine.transitions import MAX_TRIES, commit_changes
from dispatchd.errors import AgentUnavailable, ConcurrentUpdate, DuplicateKey, ValidationFailed
from dispatchd.store.base import Op, Store, TakeSlot, TouchTask


@dataclass(frozen=True, slots=True)
class Created:
    task: Task
    created: bool


Step = tuple[Change, Task | None]


@dataclass(slots=True)
class Births:
    steps: list[Step] = field(default_factory=list)
    touches: list[Op] = field(default_factory=list)
    # Slots of the agents named by `assigned_to`.
    slots: list[TakeSlot] = field(default_factory=list)
    # The tasks handed to them, as they will be stored (assigned).
    named: list[Task] = field(default_factory=list)
    # Tasks pending from the start and named for nobody: for the placer.
    open: list[Task] = field(default_factory=list)


class TaskCreation:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        rules: Rules | None = None,
        default_max_attempts: int = 3,
        budgets: DailyBudgets | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.rules = rules or Rules()
        self.default_max_attempts = default_max_attempts
        self.budgets = budgets or DailyBudgets()
        # Chooses agents for new tasks; None (no background assignment): they wait.
        self.placer: Placer | None = None

    async def create(self, spec: TaskSpec, caller: Caller, guard: Sequence[Op] = ()) -> Created:
        """`guard`: writes that must hold in the creation's commit (a room that must still
        exist), which fails with theirs otherwise."""
        if spec.idempotency_key is not None:
            existing = await self.store.find_by_idempotency_key(
                caller.agent_id, spec.idempotency_key
            )
            if existing is not None:
                return Created(existing, created=False)
        await self.budgets.check(self.store, caller.agent_id, utcnow())
        try:
            tasks = await self._commit_births([spec], caller, guard)
        except DuplicateKey as exc:
            if exc.details.get("field") != "idempotency_key" or spec.idempotency_key is None:
                raise
            existing = await self.store.find_by_idempotency_key(
                caller.agent_id, spec.idempotency_key
            )
            if existing is None:  # pragma: no cover - the key exists, so the task does
                raise
            return Created(existing, created=False)
        return Created(tasks[0], created=True)

    async def create_batch(self, specs: Sequence[TaskSpec], caller: Caller) -> list[Task]:
        """Create every task in one transaction: all of them or none."""
        keys = [s.idempotency_key for s in specs if s.idempotency_key is not None]
        if len(set(keys)) != len(keys):
            raise ValidationFailed(
                "idempotency keys repeat within the batch", code="duplicate_idempotency_key"
            )
        await self.budgets.check(self.store, caller.agent_id, utcnow())
        return await self._commit_births(specs, caller)

    async def create_with(
        self, spec: TaskSpec, caller: Caller, task_id: str, first: Sequence[Op], extra: Sequence[Op]
    ) -> Task:
        """Create one task with id `task_id` and, in the same commit, the writes `first`
        (before any other: a schedule's fire record) and `extra` (after: its event and the
        schedule itself). Any of them failing writes nothing."""
        return (await self._commit_births([spec], caller, ids=[task_id], first=first, extra=extra))[
            0
        ]

    async def _commit_births(
        self,
        specs: Sequence[TaskSpec],
        caller: Caller,
        guard: Sequence[Op] = (),
        *,
        ids: Sequence[str] | None = None,
        first: Sequence[Op] = (),
        extra: Sequence[Op] = (),
    ) -> list[Task]:
        """Create the tasks; a parent that moved meanwhile makes the whole batch recompute.

        Each unfinished parent is touched (its version bumped) in the same commit, so a
        parent finishing at the same moment either sees the new child or makes this
        commit fail and retry: no child is left blocked on a parent that already ended.
        """
        ids = list(ids) if ids is not None else [new_id() for _ in specs]
        manual = placing = True
        for _ in range(MAX_TRIES):
            births = await self._births(specs, ids, caller, manual=manual)
            placement = self._place(births) if placing else Placement()
            slots = one_per_agent([*births.slots, *placement.lead()])
            if self.placer is not None:
                self.placer.note_named(births.named)
            try:
                done = await commit_changes(
                    self.store,
                    [*births.steps, *placement.changes],
                    [*guard, *births.touches, *extra],
                    lead=[*first, *slots],
                )
            except AgentUnavailable:
                # A chosen or named agent filled up or went away meanwhile: the tasks stay
                # pending (with `assigned_to` kept) for the assigner, which re-reads it.
                self._undo(placement, births)
                manual = placing = False
                continue
            except ConcurrentUpdate:
                self._undo(placement, births)
                continue
            except BaseException:
                self._undo(placement, births)
                raise
            if self.placer is not None:
                self.placer.settle(placement, done.tasks)
                for task in births.named:
                    self.placer.named(done.tasks[task.id])
            return [done.tasks[task_id] for task_id in ids]
        raise ConcurrentUpdate("the tasks' dependencies are changing too fast; try again")

    def _place(self, births: Births) -> Placement:
        placer = self.placer
        if placer is None or placer.caught_up is None or not births.open:
            return Placement()
        if not placer.caught_up():
            # Events the assigner has not acted on yet may change the choice (an agent
            # registered or freed a moment ago): the tasks go to it, in order, as before.
            return Placement()
        # An agent named in the batch is left out: its slot is reserved apart.
        named = {slot.agent_id for slot in births.slots}
        return placer.plan(births.open, births.steps[0][0].task.created_at, skip=named)

    def _undo(self, placement: Placement, births: Births) -> None:
        if self.placer is not None:
            self.placer.directory.mark_stale(self.placer.undo(placement, births.named))

    async def _births(
        self, specs: Sequence[TaskSpec], ids: Sequence[str], caller: Caller, *, manual: bool
    ) -> Births:
        now = utcnow()
        parent_ids = {pid for spec in specs for pid in spec.depends_on}
        parents = (
            {t.id: t for t in await self.store.get_tasks(sorted(parent_ids))} if parent_ids else {}
        )
        missing = sorted(parent_ids - parents.keys())
        if missing:
            raise ValidationFailed(
                f"depends_on names unknown tasks: {', '.join(missing)}",
                code="unknown_dependency",
                missing=missing,
            )
        births = Births(
            touches=[TouchTask(p.id, p.version) for p in parents.values() if not p.status.terminal]
        )
        steps = births.steps
        # The agents the batch names, read at once (manual assignment reserves their slots).
        wanted = sorted({s.assigned_to for s in specs if s.assigned_to is not None})
        named: dict[str, Agent] = (
            {a.id: a for a in await self.store.get_agents(wanted)} if manual and wanted else {}
        )
        for spec, task_id in zip(specs, ids, strict=True):
            task = self._new_task(spec, task_id, caller, now)
            deps = [parents[pid] for pid in spec.depends_on] if spec.depends_on else []
            waiting = bool(deps) and any(p.status is not TaskStatus.COMPLETED for p in deps)
            deferred = spec.run_at is not None and spec.run_at > now
            born = lifecycle.create(task, now, blocked=waiting or deferred)
            steps.append((born, None))
            dead = next((p for p in deps if p.status in _DEAD), None) if deps else None
            if dead is not None:
                steps.append(
                    (
                        lifecycle.dependency_failed(
                            born.task, now, parent=dead.id, reason=dead.status.value
                        ),
                        born.task,
                    )
                )
                continue
            if deps and not waiting and not deferred:
                # Parents done already: the task is pending from the start, with their results.
                pending = born.task.evolve(context=_with_inputs(born.task.context, deps))
                born = lifecycle.Change(pending, born.event)
                steps[-1] = (born, None)
            if born.task.status is not TaskStatus.PENDING:
                continue
            if spec.assigned_to is None:
                births.open.append(born.task)
            elif manual:
                # Manual assignment skips scoring, not drain or capacity (SPEC §3.6): the
                # slot is reserved in the commit, which fails if the agent has no room.
                agent = named.get(spec.assigned_to)
                # Outside the task's room it may not have the task: it waits (explain says).
                if agent is not None and spec.scope in (None, agent.room):
                    handover = hand_over(
                        born.task, agent, now, self.rules, self.policy, start=False
                    )
                    slot = handover.ops[0]
                    assert isinstance(slot, TakeSlot)
                    births.slots.append(slot)
                    births.named.append(handover.task)
                    steps.extend(handover.changes)
        return births

    def _new_task(self, spec: TaskSpec, task_id: str, caller: Caller, now: datetime) -> Task:
        kind = _check_reviewer(spec)
        return Task(
            id=task_id,
            title=spec.title,
            prompt=spec.prompt,
            status=TaskStatus.PENDING,
            priority=spec.priority,
            capabilities=tuple(dict.fromkeys(spec.capabilities)),
            requester=caller.agent_id,
            created_at=now,
            updated_at=now,
            owner=spec.owner,
            scope=spec.scope,
            assigned_to=spec.assigned_to,
            max_attempts=spec.max_attempts or self.default_max_attempts,
            context=dict(spec.context),
            depends_on=tuple(dict.fromkeys(spec.depends_on)),
            run_at=spec.run_at,
            due_at=spec.due_at,
            timeout_s=spec.timeout_s,
            input_timeout_s=spec.input_timeout_s,
            review=spec.review,
            reviewer=spec.reviewer,
            reviewer_kind=kind,
            # A reviewer named by id never gets the work it is to review.
            excluded_agent=spec.reviewer if kind is ReviewerKind.AGENT else None,
            escalate_to=spec.escalate_to,
            model=spec.model,
            labels=tuple(dict.fromkeys(spec.labels)),
            idempotency_key=spec.idempotency_key,
            schedule_id=spec.schedule_id,
            max_cost_usd=spec.max_cost_usd,
        )


_DEAD = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT})


def one_per_agent(slots: Sequence[TakeSlot]) -> list[TakeSlot]:
    """The reservations as one per agent, in agent id order. Two for the same agent would
    each be checked against its load before either, so a batch naming an agent twice (or
    naming it and placing work with it) could give it more tasks than it has room for."""
    merged: dict[str, TakeSlot] = {}
    for slot in slots:
        had = merged.get(slot.agent_id)
        merged[slot.agent_id] = (
            slot
            if had is None
            else replace(
                had,
                count=had.count + slot.count,
                limit=min(had.limit, slot.limit),
                check_status=had.check_status or slot.check_status,
            )
        )
    return [merged[agent_id] for agent_id in sorted(merged)]


def _check_reviewer(spec: TaskSpec) -> ReviewerKind | None:
    """What the spec's reviewer names. An agent id unknown today is accepted: agents come
    and go, and the review task waits for it as a task named for it does."""
    if spec.reviewer is None:
        return None
    if not spec.review:
        raise ValidationFailed(
            "reviewer needs review: true", code="reviewer_without_review", field="reviewer"
        )
    kind = spec.reviewer_kind or ReviewerKind.AGENT
    if kind is ReviewerKind.AGENT and spec.reviewer == spec.assigned_to:
        raise ValidationFailed(
            "the reviewer cannot be the agent the task is assigned to",
            code="reviewer_is_assignee",
            field="reviewer",
        )
    return kind


def _with_inputs(context: Mapping[str, Any], parents: Sequence[Task]) -> dict[str, Any]:
    merged = dict(context)
    merged["inputs"] = {p.id: p.result for p in parents}
    return merged
