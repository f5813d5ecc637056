"""Task calls of the async client (`/api/v1/tasks`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Literal, TypedDict, Unpack
from urllib.parse import quote

from dispatchd.api.schemas.claims import CompleteBatchOut
from dispatchd.api.schemas.events import EventList
from dispatchd.api.schemas.tasks import TaskBatchOut
from dispatchd.client._http import HttpBase, compact, pages
from dispatchd.client.models import (
    Claim,
    Comment,
    CompleteItemOut,
    Event,
    ExplainOut,
    Page,
    Priority,
    QueueOut,
    Task,
    TaskDetail,
    TaskStatus,
)

TASKS = "/api/v1/tasks"


def task_path(task_id: str, action: str = "") -> str:
    path = f"{TASKS}/{quote(task_id, safe='')}"
    return f"{path}/{action}" if action else path


def _when(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _csv(values: str | Iterable[str] | None) -> str | None:
    """One value or several as the comma-separated text of a query parameter."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    joined = ",".join(v.value if isinstance(v, Enum) else v for v in values)
    return joined or None


class TaskFilters(TypedDict, total=False):
    """The filters of a task listing."""

    status: TaskStatus | str | Iterable[TaskStatus | str] | None
    priority: Priority | str | Iterable[Priority | str] | None
    requester: str | None
    assignee: str | None
    scope: str | None
    capability: str | None
    owner: str | None
    label: str | None
    # The review tasks of this task (docs/review.md).
    review_of: str | None


class TasksApi(HttpBase):
    async def create_task(
        self,
        title: str,
        *,
        prompt: str = "",
        capabilities: Sequence[str] = (),
        priority: Priority | str | None = None,
        owner: str | None = None,
        scope: str | None = None,
        assigned_to: str | None = None,
        depends_on: Sequence[str] = (),
        run_at: datetime | str | None = None,
        due_at: datetime | str | None = None,
        timeout_s: int | None = None,
        input_timeout_s: int | None = None,
        max_attempts: int | None = None,
        review: bool | None = None,
        reviewer: str | Mapping[str, str] | None = None,
        escalate_to: str | None = None,
        model: str | None = None,
        labels: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_cost_usd: float | None = None,
    ) -> Task:
        """Create a task. An `Idempotency-Key` is always sent (a new one when not given),
        so the call is retried safely and a repeat answers with the task already made.
        `reviewer` (with `review=True`) is an agent id or `{"capability": "review"}`;
        `max_cost_usd` is its budget (docs/costs.md)."""
        body = compact(
            {
                "title": title,
                "prompt": prompt,
                "capabilities": list(capabilities),
                "priority": priority,
                "owner": owner,
                "scope": scope,
                "assigned_to": assigned_to,
                "depends_on": list(depends_on),
                "run_at": _when(run_at),
                "due_at": _when(due_at),
                "timeout_s": timeout_s,
                "input_timeout_s": input_timeout_s,
                "max_attempts": max_attempts,
                "review": review,
                "reviewer": dict(reviewer) if isinstance(reviewer, Mapping) else reviewer,
                "escalate_to": escalate_to,
                "model": model,
                "labels": list(labels),
                "context": dict(context) if context is not None else None,
                "max_cost_usd": max_cost_usd,
            }
        )
        key = idempotency_key or str(uuid.uuid4())
        return await self.call(Task, "POST", TASKS, json=body, headers={"Idempotency-Key": key})

    async def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[Task]:
        """Create many tasks in one transaction; each item has the fields of `create_task`."""
        body = {"tasks": [_task_body(t) for t in tasks]}
        return (await self.call(TaskBatchOut, "POST", f"{TASKS}/batch", json=body)).items

    async def complete_tasks(self, items: Sequence[Mapping[str, Any]]) -> list[CompleteItemOut]:
        """Complete many held tasks at once. Each item is `{"task_id", "result",
        "summary", "attempt", "cost"}` and answers for itself (`ok`, and `task` or
        `error`)."""
        body = {"items": [compact(i) for i in items]}
        return (
            await self.call(CompleteBatchOut, "POST", f"{TASKS}/batch/complete", json=body)
        ).items

    async def list_tasks(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Literal["asc", "desc"] = "desc",
        **filters: Unpack[TaskFilters],
    ) -> Page[Task]:
        """One page of tasks matching every filter given (`status` and `priority` take
        one value or several)."""
        params: dict[str, Any] = {**filters, "limit": limit, "cursor": cursor, "order": order}
        params["status"] = _csv(filters.get("status"))
        params["priority"] = _csv(filters.get("priority"))
        return await self.call(Page[Task], "GET", TASKS, params=params)

    async def iter_tasks(
        self,
        *,
        limit: int = 50,
        order: Literal["asc", "desc"] = "desc",
        **filters: Unpack[TaskFilters],
    ) -> AsyncGenerator[Task, None]:
        """Every task matching the filters, page after page (`limit` per page)."""
        async for task in pages(
            lambda cursor: self.list_tasks(limit=limit, cursor=cursor, order=order, **filters)
        ):
            yield task

    async def get_task(self, task_id: str) -> TaskDetail:
        """The task with its attempts, progress log and comments."""
        return await self.call(TaskDetail, "GET", task_path(task_id))

    async def explain_task(self, task_id: str) -> ExplainOut:
        """Why the task went where it went, or why it waits."""
        return await self.call(ExplainOut, "GET", task_path(task_id, "explain"))

    async def task_events(self, task_id: str) -> list[Event]:
        """The task's events, oldest first."""
        return (await self.call(EventList, "GET", task_path(task_id, "events"))).events

    async def update_task(
        self,
        task_id: str,
        *,
        context: Mapping[str, Any] | None = None,
        priority: Priority | str | None = None,
    ) -> Task:
        """Merge `context` into the task's (RFC 7386: a None value removes the key) and/or
        change its priority."""
        body = compact(
            {"context": dict(context) if context is not None else None, "priority": priority}
        )
        return await self.call(Task, "PATCH", task_path(task_id), json=body)

    async def cancel_task(self, task_id: str, reason: str | None = None) -> Task:
        """Cancel the task (its requester or an admin)."""
        body = compact({"status": "cancelled", "reason": reason})
        return await self.call(Task, "PATCH", task_path(task_id), json=body)

    async def claim(
        self,
        max_tasks: int = 1,
        wait_s: float = 0.0,
        *,
        capabilities: Sequence[str] | None = None,
        agent_id: str | None = None,
    ) -> Claim:
        """Take up to `max_tasks` tasks, already started; with `wait_s`, an empty claim
        waits that long for work. `capabilities` narrows the pending tasks taken to
        some of the agent's tags; `agent_id` claims for another agent (admin)."""
        body = compact(
            {
                "max_tasks": max_tasks,
                "wait_s": wait_s,
                "capabilities": list(capabilities) if capabilities is not None else None,
                "agent_id": agent_id,
            }
        )
        admin = agent_id is not None and agent_id != self.agent_id
        return await self.call(
            Claim, "POST", f"{TASKS}/claim", json=body, admin=admin, wait_s=wait_s
        )

    async def claim_one(
        self, agent_id: str | None = None, *, max_capacity: int | None = None
    ) -> QueueOut:
        """Claim one task the way Mission Control's queue does: `task`, or the `reason`
        none came back."""
        params = {"agent": agent_id, "max_capacity": max_capacity}
        admin = agent_id is not None and agent_id != self.agent_id
        return await self.call(QueueOut, "GET", f"{TASKS}/queue", params=params, admin=admin)

    async def start_task(self, task_id: str, *, attempt: int | None = None) -> Task:
        """Start an assigned task (claimed tasks are already running)."""
        body = compact({"attempt": attempt})
        return await self.call(Task, "POST", task_path(task_id, "start"), json=body)

    async def report_progress(
        self,
        task_id: str,
        message: str | None = None,
        percent: float | None = None,
        *,
        attempt: int | None = None,
        cost: Cost | None = None,
    ) -> Task:
        """Report progress on a held task; it also renews the task's lease. `cost` is the
        attempt's running total so far: `{"usd", "input_tokens", "output_tokens"}`, each
        optional (docs/costs.md)."""
        body = compact(
            {"message": message, "percent": percent, "attempt": attempt, "cost": _cost(cost)}
        )
        return await self.call(Task, "POST", task_path(task_id, "progress"), json=body)

    async def complete_task(
        self,
        task_id: str,
        result: Any = None,
        summary: str | None = None,
        *,
        attempt: int | None = None,
        cost: Cost | None = None,
    ) -> Task:
        """Finish a held task with its result, and the attempt's final `cost`."""
        body = compact(
            {"result": result, "summary": summary, "attempt": attempt, "cost": _cost(cost)}
        )
        return await self.call(Task, "POST", task_path(task_id, "complete"), json=body)

    async def fail_task(
        self,
        task_id: str,
        error: str,
        *,
        retryable: bool = True,
        attempt: int | None = None,
        cost: Cost | None = None,
    ) -> Task:
        """Fail a held task; a retryable failure is tried again while attempts remain.
        `cost` is what the attempt cost."""
        body = compact(
            {"error": error, "retryable": retryable, "attempt": attempt, "cost": _cost(cost)}
        )
        return await self.call(Task, "POST", task_path(task_id, "fail"), json=body)

    async def request_input(
        self, task_id: str, question: str, *, attempt: int | None = None
    ) -> Task:
        """Ask the requester a question; the task waits for the answer."""
        body = compact({"question": question, "attempt": attempt})
        return await self.call(Task, "POST", task_path(task_id, "input-request"), json=body)

    async def provide_input(self, task_id: str, answer: str) -> Task:
        """Answer a task's question."""
        return await self.call(Task, "POST", task_path(task_id, "input"), json={"answer": answer})

    async def add_comment(self, task_id: str, body: str) -> Comment:
        """Comment on a task."""
        return await self.call(Comment, "POST", task_path(task_id, "comments"), json={"body": body})

    async def review_task(
        self,
        task_id: str,
        verdict: Literal["approved", "rejected"],
        feedback: str | None = None,
    ) -> Task:
        """Approve or reject a task waiting for review."""
        body = compact({"verdict": verdict, "feedback": feedback})
        return await self.call(Task, "POST", task_path(task_id, "review"), json=body)

    async def retry_task(self, task_id: str) -> Task:
        """Put a failed or cancelled task back in the queue."""
        return await self.call(Task, "POST", task_path(task_id, "retry"))


# What an attempt cost: {"usd": 0.12, "input_tokens": 3000, "output_tokens": 800}.
Cost = Mapping[str, float | int]


def _cost(cost: Cost | None) -> dict[str, Any] | None:
    return compact(cost) if cost is not None else None


def _task_body(task: Mapping[str, Any]) -> dict[str, Any]:
    body = compact(task)
    for key in ("run_at", "due_at"):
        if isinstance(body.get(key), datetime):
            body[key] = body[key].isoformat()
    return body
