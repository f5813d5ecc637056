"""Task operations: reads, and the actions requesters and workers take (creation is in
`creation`, which the service fronts)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatchd.domain import lifecycle, review
from dispatchd.domain.access import (
    Caller,
    already_ended,
    already_started,
    require_holder,
    require_requester_or_admin,
)
from dispatchd.domain.costs import CostReport
from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import (
    AttemptOutcome,
    Comment,
    Event,
    Priority,
    ReviewerKind,
    Task,
    TaskDetail,
    TaskKind,
    TaskSpec,
    TaskStatus,
)
from dispatchd.engine.budgets import DailyBudgets
from dispatchd.engine.creation import Created, TaskCreation
from dispatchd.engine.rules import Rules
from dispatchd.engine.transitions import MAX_TRIES, commit_changes, transact
from dispatchd.errors import (
    ConcurrentUpdate,
    Conflict,
    DispatchError,
    Forbidden,
    NotFound,
)
from dispatchd.store.base import (
    AppendComment,
    AppendEvent,
    Op,
    Page,
    Store,
    TaskFilter,
)

Step = tuple[Change, Task | None]


@dataclass(frozen=True, slots=True)
class Completion:
    task_id: str
    result: Any = None
    summary: str | None = None
    attempt: int | None = None
    cost: CostReport | None = None


class TaskService:
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
        # The task as this process last wrote it, if remembered (`transact`'s `known`);
        # set by the runtime.
        self.known: Callable[[str], Task | None] | None = None
        self._random = random.SystemRandom()
        self.creation = TaskCreation(
            store,
            policy,
            rules=self.rules,
            default_max_attempts=default_max_attempts,
            budgets=budgets,
        )

    async def _transact(
        self, task_id: str, compute: Callable[[Task], Awaitable[list[Step]]]
    ) -> Task:
        return await transact(
            self.store,
            task_id,
            compute,
            escalate_to=self.rules.escalate_to,
            policy=self.policy,
            known=self.known,
        )

    # --- creation (engine/creation.py) ---------------------------------------------------

    async def create(self, spec: TaskSpec, caller: Caller, guard: Sequence[Op] = ()) -> Created:
        return await self.creation.create(spec, caller, guard)

    async def create_batch(self, specs: Sequence[TaskSpec], caller: Caller) -> list[Task]:
        """Create every task in one transaction: all of them or none."""
        return await self.creation.create_batch(specs, caller)

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
        if task.assignee == caller.agent_id:
            # The holder's check needs no past attempts (only the number it sent).
            require_holder(task, caller, (), attempt)
            return
        past = await self.store.attempts(task.id)
        require_holder(task, caller, past, attempt)

    async def _repeat(
        self,
        task: Task,
        caller: Caller,
        attempt: int | None,
        outcome: AttemptOutcome,
        **same: Any,
    ) -> bool:
        """Whether the caller's attempt already ended the task this way (a retried call)."""
        past = await self.store.attempts(task.id)
        return already_ended(task, caller, past, attempt, outcome, **same)

    async def start(self, task_id: str, caller: Caller, *, attempt: int | None = None) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            if already_started(task, caller, attempt):
                return []  # a repeat: answered with the task, as the first call was
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
        cost: CostReport | None = None,
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            now = utcnow()
            steps: list[Step] = []
            if task.status is TaskStatus.ASSIGNED:
                # Reporting progress is proof of work: an assigned task starts implicitly.
                started = lifecycle.start(task, now, self.policy)
                steps.append((started, task))
                task = started.task
            step = lifecycle.progress(task, now, self.policy, message=message, percent=percent)
            steps.append((lifecycle.charged(step, task, cost, now), task))
            return steps

        return await self._transact(task_id, compute)

    async def complete(
        self,
        task_id: str,
        caller: Caller,
        *,
        result: Any,
        summary: str | None,
        attempt: int | None = None,
        cost: CostReport | None = None,
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            try:
                await self._as_holder(task, caller, attempt)
                return self._completion(task, utcnow(), result, summary, cost)
            except Conflict:
                done = AttemptOutcome.COMPLETED
                if await self._repeat(task, caller, attempt, done, result=result, summary=summary):
                    return []
                raise

        return await self._transact(task_id, compute)

    async def complete_many(
        self, items: Sequence[Completion], caller: Caller
    ) -> list[Task | DispatchError]:
        """Complete several held tasks in one transaction; an item the caller may not
        complete (not its task, a stale attempt, a wrong state) gets its own error and the
        others go ahead. The answer follows the order of `items`.

        A task named again is a repeat, as a retried call is: the same completion answers
        as its first mention does; another one gets its own `duplicate_task` error."""
        firsts: dict[str, Completion] = {}
        for item in items:
            firsts.setdefault(item.task_id, item)
        answers = await self._complete_each(list(firsts.values()), caller)
        return [
            answers[item.task_id]
            if item == firsts[item.task_id]
            else Conflict(
                f"task {item.task_id} appears earlier in this batch with another completion",
                code="duplicate_task",
                task_id=item.task_id,
            )
            for item in items
        ]

    async def _complete_each(
        self, items: Sequence[Completion], caller: Caller
    ) -> dict[str, Task | DispatchError]:
        """`complete_many` for items that name distinct tasks, answers by task id.

        As `transact` does for one task, the first try starts from the tasks as this
        process last wrote them (`known`), reading only the others; an error or a repeat
        decided on a copy, or a copy behind its row, is decided again from a fresh read."""
        ids = [item.task_id for item in items]
        copies = self._copies(ids)
        for _ in range(MAX_TRIES):
            if copies:
                rest = [i for i in ids if i not in copies]
                read = await self.store.get_tasks(rest) if rest else []
                found = {**copies, **{t.id: t for t in read}}
            else:
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
                    mine = self._completion(task, now, item.result, item.summary, item.cost)
                except Conflict as exc:
                    same = {"result": item.result, "summary": item.summary}
                    completed = AttemptOutcome.COMPLETED
                    repeat = await self._repeat(task, caller, item.attempt, completed, **same)
                    answers[item.task_id] = task if repeat else exc
                    continue
                except DispatchError as exc:
                    answers[item.task_id] = exc
                    continue
                steps.extend(mine)
            if copies and any(i in copies for i in answers):
                copies = {}  # decided on a copy: decide again on the rows
                continue
            if not steps:
                return answers
            try:
                done = await commit_changes(
                    self.store, steps, escalate_to=self.rules.escalate_to, policy=self.policy
                )
            except ConcurrentUpdate:
                copies = {}
                continue
            return {i: answers[i] if i in answers else done.tasks[i] for i in ids}
        raise ConcurrentUpdate("these tasks are changing too fast; try again")

    def _copies(self, ids: Sequence[str]) -> dict[str, Task]:
        """The tasks of `ids` this process last wrote, where it knows them."""
        if self.known is None:
            return {}
        return {i: task for i in ids if (task := self.known(i)) is not None}

    def _completion(
        self,
        task: Task,
        now: datetime,
        result: Any,
        summary: str | None,
        cost: CostReport | None = None,
    ) -> list[Step]:
        if task.kind is TaskKind.REVIEW:
            # The verdict is checked before anything is written; `followups` applies it.
            review.verdict_of(result)
        steps: list[Step] = []
        if task.status is TaskStatus.ASSIGNED:
            started = lifecycle.start(task, now, self.policy)
            steps.append((started, task))
            task = started.task
        done = lifecycle.complete(task, now, result=result, summary=summary)
        steps.append((lifecycle.charged(done, task, cost, now), task))
        return steps

    async def fail(
        self,
        task_id: str,
        caller: Caller,
        *,
        error: str,
        retryable: bool = True,
        attempt: int | None = None,
        cost: CostReport | None = None,
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            now = utcnow()
            try:
                await self._as_holder(task, caller, attempt)
                change = lifecycle.fail(
                    task,
                    now,
                    self.policy,
                    error=error,
                    retryable=retryable,
                    jitter=self._random.random(),
                )
            except Conflict:
                if await self._repeat(task, caller, attempt, AttemptOutcome.FAILED, error=error):
                    return []
                raise
            return [(lifecycle.charged(change, task, cost, now), task)]

        return await self._transact(task_id, compute)

    async def request_input(
        self, task_id: str, caller: Caller, *, question: str, attempt: int | None = None
    ) -> Task:
        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            await self._as_holder(task, caller, attempt)
            return [(lifecycle.request_input(task, utcnow(), self.policy, question=question), task)]

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
        """A verdict posted on the task itself, by its reviewer or an admin; its open
        review task, if any, is cancelled in the same commit (`followups`)."""

        async def compute(task: Task) -> list[tuple[Change, Task | None]]:
            if not caller.is_admin:
                await self._as_reviewer(task, caller)
            now = utcnow()
            if approved:
                change = lifecycle.approve(task, now, reviewer=caller.agent_id, feedback=feedback)
            else:
                change = lifecycle.reject(
                    task, now, self.policy, reviewer=caller.agent_id, feedback=feedback
                )
            return [(change, task)]

        return await self._transact(task_id, compute)

    async def _as_reviewer(self, task: Task, caller: Caller) -> None:
        if task.assignee == caller.agent_id:
            raise Forbidden(
                "an agent may not review its own work", code="self_review", task_id=task.id
            )
        if task.reviewer is None:
            return
        if task.reviewer_kind is ReviewerKind.CAPABILITY:
            allowed = task.reviewer in await self._capabilities_of(caller.agent_id)
        elif task.reviewer_kind is ReviewerKind.AGENT:
            allowed = task.reviewer == caller.agent_id
        else:  # written before reviewers had a kind: either
            allowed = task.reviewer in (
                caller.agent_id,
                *(await self._capabilities_of(caller.agent_id)),
            )
        if not allowed:
            raise Forbidden(
                f"task {task.id} is to be reviewed by {task.reviewer}",
                code="not_reviewer",
                task_id=task.id,
            )

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
