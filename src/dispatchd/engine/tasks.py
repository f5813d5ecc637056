"""Task operations: creation, reads, and the actions requesters and workers take."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dispatchd.domain import lifecycle
from dispatchd.domain.access import (
    Caller,
    require_holder,
    require_requester_or_admin,
)
from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import (
    Agent,
    Comment,
    Event,
    Priority,
    Task,
    TaskDetail,
    TaskStatus,
)
from dispatchd.engine.rules import Rules, hand_over
from dispatchd.engine.transitions import MAX_TRIES, commit_changes, transact
from dispatchd.errors import (
    AgentUnavailable,
    ConcurrentUpdate,
    DispatchError,
    DuplicateKey,
    Forbidden,
    NotFound,
    ValidationFailed,
)
from dispatchd.store.base import (
    AppendComment,
    AppendEvent,
    Op,
    Page,
    Store,
    TaskFilter,
    TouchTask,
)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a requester asks for; see SPEC §4 for each field."""

    title: str
    prompt: str = ""
    capabilities: Sequence[str] = ()
    priority: Priority = Priority.MEDIUM
    owner: str | None = None
    scope: str | None = None
    assigned_to: str | None = None
    depends_on: Sequence[str] = ()
    run_at: datetime | None = None
    due_at: datetime | None = None
    timeout_s: int | None = None
    max_attempts: int | None = None
    review: bool = False
    reviewer: str | None = None
    escalate_to: str | None = None
    model: str | None = None
    labels: Sequence[str] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


Step = tuple[Change, Task | None]


@dataclass(slots=True)
class Births:
    steps: list[Step] = field(default_factory=list)
    touches: list[Op] = field(default_factory=list)
    slots: list[Op] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Completion:
    task_id: str
    result: Any = None
    summary: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Created:
    task: Task
    created: bool


class TaskService:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        rules: Rules | None = None,
        default_max_attempts: int = 3,
    ) -> None:
        self.store = store
        self.policy = policy
        self.rules = rules or Rules()
        self.default_max_attempts = default_max_attempts
        self._random = random.SystemRandom()
        # Told of each task handed to an agent named at creation (to wake it).
        self.handed: Callable[[str, Task], None] | None = None

    async def _transact(
        self, task_id: str, compute: Callable[[Task], Awaitable[list[Step]]]
    ) -> Task:
        return await transact(self.store, task_id, compute, escalate_to=self.rules.escalate_to)

    # --- creation -----------------------------------------------------------------------

    async def create(self, spec: TaskSpec, caller: Caller) -> Created:
        if spec.idempotency_key is not None:
            existing = await self.store.find_by_idempotency_key(
                caller.agent_id, spec.idempotency_key
            )
            if existing is not None:
                return Created(existing, created=False)
        try:
            tasks = await self._commit_births([spec], caller)
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
        return await self._commit_births(specs, caller)

    async def _commit_births(self, specs: Sequence[TaskSpec], caller: Caller) -> list[Task]:
        """Create the tasks; a parent that moved meanwhile makes the whole batch recompute.

        Each unfinished parent is touched (its version bumped) in the same commit, so a
        parent finishing at the same moment either sees the new child or makes this
        commit fail and retry: no child is left blocked on a parent that already ended.
        """
        ids = [new_id() for _ in specs]
        manual = True
        for _ in range(MAX_TRIES):
            births = await self._births(specs, ids, caller, manual=manual)
            try:
                await commit_changes(self.store, births.steps, births.touches, lead=births.slots)
            except AgentUnavailable:
                # The named agent filled up or went away meanwhile: the tasks stay
                # pending with `assigned_to` kept, to start when it has room.
                manual = False
                continue
            except ConcurrentUpdate:
                continue
            latest: dict[str, Task] = {}
            for change, _ in births.steps:
                latest[change.task.id] = change.task
            if self.handed is not None:
                for task in latest.values():
                    if task.status is TaskStatus.ASSIGNED and task.assignee is not None:
                        self.handed(task.assignee, task)
            return list(latest.values())
        raise ConcurrentUpdate("the tasks' dependencies are changing too fast; try again")

    async def _births(
        self, specs: Sequence[TaskSpec], ids: Sequence[str], caller: Caller, *, manual: bool
    ) -> Births:
        now = utcnow()
        parent_ids = {pid for spec in specs for pid in spec.depends_on}
        parents = {t.id: t for t in await self.store.get_tasks(sorted(parent_ids))}
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
        named: dict[str, Agent | None] = {}
        for spec, task_id in zip(specs, ids, strict=True):
            task = self._new_task(spec, task_id, caller, now)
            deps = [parents[pid] for pid in spec.depends_on]
            waiting = any(p.status is not TaskStatus.COMPLETED for p in deps)
            deferred = spec.run_at is not None and spec.run_at > now
            born = lifecycle.create(task, now, blocked=waiting or deferred)
            steps.append((born, None))
            dead = next((p for p in deps if p.status in _DEAD), None)
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
            if manual and spec.assigned_to is not None and born.task.status is TaskStatus.PENDING:
                # Manual assignment skips scoring, not drain or capacity (SPEC §3.6): the
                # slot is reserved in the commit, which fails if the agent has no room.
                if spec.assigned_to not in named:
                    named[spec.assigned_to] = await self.store.get_agent(spec.assigned_to)
                agent = named[spec.assigned_to]
                if agent is not None:
                    handover = hand_over(
                        born.task, agent, now, self.rules, self.policy, start=False
                    )
                    births.slots.append(handover.ops[0])
                    steps.extend(handover.changes)
        return births

    def _new_task(self, spec: TaskSpec, task_id: str, caller: Caller, now: datetime) -> Task:
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
            review=spec.review,
            reviewer=spec.reviewer,
            escalate_to=spec.escalate_to,
            model=spec.model,
            labels=tuple(dict.fromkeys(spec.labels)),
            idempotency_key=spec.idempotency_key,
        )

    # --- reads --------------------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        return task

    async def detail(self, task_id: str) -> TaskDetail:
        detail = await self.store.task_detail(task_id)
        if detail is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        return detail

    async def page(
        self, flt: TaskFilter, *, limit: int, cursor: str | None, descending: bool = True
    ) -> Page[Task]:
        return await self.store.list_tasks(flt, limit=limit, cursor=cursor, descending=descending)

    async def events(self, task_id: str) -> list[Event]:
        await self.get(task_id)
        return await self.store.events_for_task(task_id)

    # --- worker actions -----------------------------------------------------------------

    async def _as_holder(self, task: Task, caller: Caller, attempt: int | None) -> None:
        if task.assignee == caller.agent_id and attempt is None:
            return
        past = await self.store.attempts(task.id)
        require_holder(task, caller, past, attempt)

    async def start(self, task_id: str, caller: Caller, *, attempt: int | None = None) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            return [(lifecycle.start(task, utcnow(), self.policy), task)]

        return await self._transact(task_id, compute)

    async def progress(
        self,
        task_id: str,
        caller: Caller,
        *,
        message: str | None,
        percent: float | None,
        attempt: int | None = None,
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            now = utcnow()
            if task.status is TaskStatus.ASSIGNED:
                # Reporting progress is proof of work: an assigned task starts implicitly.
                started = lifecycle.start(task, now, self.policy)
                step = lifecycle.progress(
                    started.task, now, self.policy, message=message, percent=percent
                )
                return [(started, task), (step, started.task)]
            return [
                (lifecycle.progress(task, now, self.policy, message=message, percent=percent), task)
            ]

        return await self._transact(task_id, compute)

    async def complete(
        self,
        task_id: str,
        caller: Caller,
        *,
        result: Any,
        summary: str | None,
        attempt: int | None = None,
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            return self._completion(task, utcnow(), result, summary)

        return await self._transact(task_id, compute)

    async def complete_many(
        self, items: Sequence[Completion], caller: Caller
    ) -> list[Task | DispatchError]:
        """Complete several held tasks in one transaction; an item the caller may not
        complete (not its task, a stale attempt, a wrong state) gets its own error and the
        others go ahead. The answer follows the order of `items`."""
        ids = [item.task_id for item in items]
        if len(set(ids)) != len(ids):
            raise ValidationFailed("a task appears twice in the batch", code="duplicate_task")
        for _ in range(MAX_TRIES):
            found = {t.id: t for t in await self.store.get_tasks(ids)}
            steps: list[Step] = []
            answers: dict[str, Task | DispatchError] = {}
            now = utcnow()
            for item in items:
                task = found.get(item.task_id)
                if task is None:
                    answers[item.task_id] = NotFound(
                        f"no task {item.task_id}", task_id=item.task_id
                    )
                    continue
                try:
                    await self._as_holder(task, caller, item.attempt)
                    mine = self._completion(task, now, item.result, item.summary)
                except DispatchError as exc:
                    answers[item.task_id] = exc
                    continue
                steps.extend(mine)
            if not steps:
                return [answers[i] for i in ids]
            try:
                done = await commit_changes(self.store, steps, escalate_to=self.rules.escalate_to)
            except ConcurrentUpdate:
                continue
            return [answers[i] if i in answers else done.tasks[i] for i in ids]
        raise ConcurrentUpdate("these tasks are changing too fast; try again")

    def _completion(
        self, task: Task, now: datetime, result: Any, summary: str | None
    ) -> list[Step]:
        steps: list[Step] = []
        if task.status is TaskStatus.ASSIGNED:
            started = lifecycle.start(task, now, self.policy)
            steps.append((started, task))
            task = started.task
        steps.append((lifecycle.complete(task, now, result=result, summary=summary), task))
        return steps

    async def fail(
        self,
        task_id: str,
        caller: Caller,
        *,
        error: str,
        retryable: bool = True,
        attempt: int | None = None,
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            change = lifecycle.fail(
                task,
                utcnow(),
                self.policy,
                error=error,
                retryable=retryable,
                jitter=self._random.random(),
            )
            return [(change, task)]

        return await self._transact(task_id, compute)

    async def request_input(
        self, task_id: str, caller: Caller, *, question: str, attempt: int | None = None
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            return [(lifecycle.request_input(task, utcnow(), question=question), task)]

        return await self._transact(task_id, compute)

    async def provide_input(self, task_id: str, caller: Caller, *, answer: str) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            require_requester_or_admin(task, caller, "answer")
            change = lifecycle.provide_input(
                task, utcnow(), self.policy, answer=answer, by=caller.agent_id
            )
            return [(change, task)]

        return await self._transact(task_id, compute)

    async def review(
        self, task_id: str, caller: Caller, *, approved: bool, feedback: str | None
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            if not caller.is_admin:
                if task.assignee == caller.agent_id:
                    raise Forbidden(
                        "an agent may not review its own work", code="self_review", task_id=task.id
                    )
                if task.reviewer is not None and task.reviewer not in (
                    caller.agent_id,
                    *(await self._capabilities_of(caller.agent_id)),
                ):
                    raise Forbidden(
                        f"task {task.id} is to be reviewed by {task.reviewer}",
                        code="not_reviewer",
                        task_id=task.id,
                    )
            now = utcnow()
            if approved:
                change = lifecycle.approve(task, now, reviewer=caller.agent_id, feedback=feedback)
            else:
                change = lifecycle.reject(
                    task, now, self.policy, reviewer=caller.agent_id, feedback=feedback
                )
            return [(change, task)]

        return await self._transact(task_id, compute)

    async def _capabilities_of(self, agent_id: str) -> tuple[str, ...]:
        agent = await self.store.get_agent(agent_id)
        return tuple(agent.capabilities) if agent else ()

    # --- requester actions --------------------------------------------------------------

    async def retry(self, task_id: str, caller: Caller) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            require_requester_or_admin(task, caller, "retry")
            return [(lifecycle.retry(task, utcnow(), by=caller.agent_id), task)]

        return await self._transact(task_id, compute)

    async def patch(
        self,
        task_id: str,
        caller: Caller,
        *,
        context: Mapping[str, Any] | None = None,
        priority: Priority | None = None,
        cancel: bool = False,
        reason: str | None = None,
    ) -> Task:
        """Edit context/priority and/or cancel, all in one transaction: all of it or nothing."""

        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            assignee_context_only = (
                context is not None
                and priority is None
                and not cancel
                and caller.agent_id == task.assignee
            )
            if not assignee_context_only:
                require_requester_or_admin(task, caller, "cancel" if cancel else "change")
            steps: list[tuple[Change, Task | None]] = []
            now = utcnow()
            if context is not None or priority is not None:
                edit = lifecycle.update(
                    task, now, by=caller.agent_id, context_patch=context, priority=priority
                )
                steps.append((edit, task))
                task = edit.task
            if cancel:
                steps.append((lifecycle.cancel(task, now, by=caller.agent_id, reason=reason), task))
            return steps

        return await self._transact(task_id, compute)

    async def cancel(self, task_id: str, caller: Caller, *, reason: str | None = None) -> Task:
        return await self.patch(task_id, caller, cancel=True, reason=reason)

    async def comment(self, task_id: str, caller: Caller, *, body: str) -> Comment:
        task = await self.get(task_id)
        now = utcnow()
        comment = Comment(task_id=task.id, author=caller.agent_id, body=body, created_at=now)
        event = Event(
            type="task.commented",
            created_at=now,
            task_id=task.id,
            agent_id=caller.agent_id,
            data={"body": body[:500]},
        )
        await self.store.commit([AppendComment(comment), AppendEvent(event)])
        return comment


_DEAD = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT})


def _with_inputs(context: Mapping[str, Any], parents: Sequence[Task]) -> dict[str, Any]:
    merged = dict(context)
    merged["inputs"] = {p.id: p.result for p in parents}
    return merged
