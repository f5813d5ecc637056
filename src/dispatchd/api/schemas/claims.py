"""What a worker sends and gets back: claims, and its reports on the task it holds
(start, progress, completion, failure, a question)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from dispatchd.api.schemas.common import (
    Flag,
    Id,
    ItemError,
    Number,
    Request,
    Short,
    Tag,
    whole_number,
)
from dispatchd.api.schemas.costs import CostIn
from dispatchd.api.schemas.tasks import TaskOut

Attempt = Annotated[int, Field(ge=1, le=2**31 - 1, strict=True), BeforeValidator(whole_number)]
MaxTasks = Annotated[int, Field(ge=1, le=100, strict=True), BeforeValidator(whole_number)]


class AttemptFence(Request):
    attempt: Attempt | None = Field(
        None,
        description="The attempt the worker is on; a stale one is refused with 409",
    )


class StartBody(AttemptFence):
    pass


class ProgressBody(AttemptFence):
    message: Short | None = None
    percent: Number | None = Field(None, ge=0, le=100)
    cost: CostIn | None = Field(
        None, description="The attempt's running cost so far (docs/costs.md)"
    )


class CompleteBody(AttemptFence):
    result: Any = None
    summary: Short | None = None
    cost: CostIn | None = Field(
        None, description="The attempt's running cost so far (docs/costs.md)"
    )


class CompleteItem(CompleteBody):
    task_id: Id


class CompleteBatch(Request):
    items: list[CompleteItem] = Field(min_length=1, max_length=500)


class FailBody(AttemptFence):
    error: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
    retryable: Flag = True
    cost: CostIn | None = Field(
        None, description="The attempt's running cost so far (docs/costs.md)"
    )


class InputRequestBody(AttemptFence):
    question: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class CompleteItemOut(BaseModel):
    task_id: str
    ok: bool
    task: TaskOut | None = None
    error: ItemError | None = None


class CompleteBatchOut(BaseModel):
    items: list[CompleteItemOut]


class ClaimBody(Request):
    max_tasks: MaxTasks = 1
    wait_s: Number = Field(0, ge=0, le=60)
    # Claim on behalf of another agent (admin only); by default the caller claims.
    agent_id: Id | None = None
    capabilities: list[Tag] | None = Field(
        None,
        max_length=32,
        description="Take pending tasks for these of the agent's tags only (its tasks "
        "already assigned to it come regardless)",
    )


class ClaimOut(BaseModel):
    tasks: list[TaskOut]
    reason: Literal["at_capacity", "no_tasks_available", "draining", "degraded"] | None


class QueueOut(BaseModel):
    task: TaskOut | None
    reason: Literal["at_capacity", "no_tasks_available", "draining", "degraded"] | None
