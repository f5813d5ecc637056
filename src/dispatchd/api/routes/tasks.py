"""Task routes of API v1 (SPEC §4 Tasks)."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Header, Query, Response, status

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.params import PageCursor, enum_list
from dispatchd.api.schemas.claims import (
    ClaimBody,
    ClaimOut,
    CompleteBatch,
    CompleteBatchOut,
    CompleteBody,
    CompleteItemOut,
    FailBody,
    InputRequestBody,
    ProgressBody,
    QueueOut,
    StartBody,
)
from dispatchd.api.schemas.common import ErrorOut, ItemError, opt_isoformat
from dispatchd.api.schemas.costs import report_of
from dispatchd.api.schemas.events import EventList, EventOut
from dispatchd.api.schemas.explain import CandidateOut, ExcludedOut, ExplainOut, RouteOut
from dispatchd.api.schemas.tasks import (
    CommentBody,
    CommentOut,
    InputBody,
    ReviewBody,
    TaskBatch,
    TaskBatchOut,
    TaskCreate,
    TaskDetailOut,
    TaskList,
    TaskOut,
    TaskPatch,
)
from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import Priority, TaskStatus
from dispatchd.engine.explain import Explanation, explain
from dispatchd.engine.tasks import Completion
from dispatchd.errors import DispatchError, ValidationFailed
from dispatchd.store.base import TaskFilter

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 429)
}

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=ERRORS)

IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", max_length=200, min_length=1)
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses={200: {"model": TaskOut, "description": "An Idempotency-Key repeat"}},
)
async def create_task(
    body: TaskCreate,
    caller: CallerDep,
    rt: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskOut:
    created = await rt.tasks.create(body.spec(idempotency_key), caller)
    if not created.created:
        response.status_code = status.HTTP_200_OK
    return TaskOut.of(created.task)


@router.post("/batch", status_code=status.HTTP_201_CREATED, response_model=TaskBatchOut)
async def create_batch(body: TaskBatch, caller: CallerDep, rt: RuntimeDep) -> TaskBatchOut:
    tasks = await rt.tasks.create_batch([t.spec() for t in body.tasks], caller)
    return TaskBatchOut(items=[TaskOut.of(t) for t in tasks])


@router.post("/batch/complete", response_model=CompleteBatchOut)
async def complete_batch(
    body: CompleteBatch, caller: CallerDep, rt: RuntimeDep
) -> CompleteBatchOut:
    """Complete many held tasks in one transaction. Each item answers for itself: a task
    the caller may not complete gets its error (in the error form) and the rest go ahead."""
    items = [
        Completion(
            i.task_id, result=i.result, summary=i.summary, attempt=i.attempt, cost=report_of(i.cost)
        )
        for i in body.items
    ]
    answers = await rt.tasks.complete_many(items, caller)
    out = []
    for item, answer in zip(body.items, answers, strict=True):
        if isinstance(answer, DispatchError):
            error = ItemError(code=answer.code, message=answer.message, details=answer.details)
            out.append(CompleteItemOut(task_id=item.task_id, ok=False, error=error))
        else:
            out.append(CompleteItemOut(task_id=item.task_id, ok=True, task=TaskOut.of(answer)))
    return CompleteBatchOut(items=out)


E = TypeVar("E", TaskStatus, Priority)


def _split_enum(values: list[str] | None, kind: type[E], name: str) -> list[E]:
    out: list[E] = []
    for raw in values or []:
        for part in raw.split(","):
            # Spaces only, as the document's pattern says (`api/params.comma_list`).
            part = part.strip(" ")
            if not part:
                continue
            try:
                out.append(kind(part))
            except ValueError:
                allowed = ", ".join(v.value for v in kind)
                raise ValidationFailed(
                    f"{name}: {part!r} is not one of {allowed}", field=name, value=part
                ) from None
    return out


Filter = Annotated[str | None, Query(max_length=128)]


@router.get("", response_model=TaskList)
async def list_tasks(
    caller: CallerDep,
    rt: RuntimeDep,
    status_: Annotated[
        list[Annotated[str, enum_list(TaskStatus)]] | None, Query(alias="status", max_length=20)
    ] = None,
    priority: Annotated[
        list[Annotated[str, enum_list(Priority)]] | None, Query(max_length=10)
    ] = None,
    requester: Filter = None,
    assignee: Filter = None,
    scope: Filter = None,
    capability: Filter = None,
    owner: Filter = None,
    label: Filter = None,
    review_of: Filter = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: PageCursor = None,
    order: Literal["asc", "desc"] = "desc",
) -> TaskList:
    flt = TaskFilter(
        status=_split_enum(status_, TaskStatus, "status"),
        priority=_split_enum(priority, Priority, "priority"),
        requester=requester,
        assignee=assignee,
        scope=scope,
        capability=capability,
        owner=owner,
        label=label,
        review_of=review_of,
    )
    page = await rt.tasks.page(flt, limit=limit, cursor=cursor, descending=order == "desc")
    return TaskList(items=[TaskOut.of(t) for t in page.items], next_cursor=page.next_cursor)


Reason = Literal["at_capacity", "no_tasks_available", "draining", "degraded"]


@router.post("/claim", response_model=ClaimOut)
async def claim_tasks(caller: CallerDep, rt: RuntimeDep, body: ClaimBody | None = None) -> ClaimOut:
    """Atomically take the best tasks the agent can do: its own assigned ones first, then
    pending ones in queue order, up to its free slots. With `wait_s`, an empty claim
    waits for work (woken the moment some is assigned to it) before answering."""
    body = body or ClaimBody()
    claimed = await rt.claims.claim(
        body.agent_id or caller.agent_id,
        caller,
        max_tasks=body.max_tasks,
        wait_s=body.wait_s,
        capabilities=body.capabilities,
    )
    return ClaimOut(tasks=[TaskOut.of(t) for t in claimed.tasks], reason=_reason(claimed.reason))


@router.get("/queue", response_model=QueueOut)
async def queue_claim(
    caller: CallerDep,
    rt: RuntimeDep,
    agent: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    max_capacity: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> QueueOut:
    """Mission Control's claim of one task: `reason` says why none came back."""
    claimed = await rt.claims.claim(
        agent or caller.agent_id, caller, max_tasks=1, max_capacity=max_capacity
    )
    task = TaskOut.of(claimed.tasks[0]) if claimed.tasks else None
    return QueueOut(task=task, reason=_reason(claimed.reason))


def _reason(value: str | None) -> Reason | None:
    reasons: dict[str | None, Reason | None] = {
        None: None,
        "at_capacity": "at_capacity",
        "no_tasks_available": "no_tasks_available",
        "draining": "draining",
        "degraded": "degraded",
    }
    return reasons[value]


@router.get("/{task_id}/explain", response_model=ExplainOut)
async def explain_task(task_id: str, caller: CallerDep, rt: RuntimeDep) -> ExplainOut:
    """Why the task went where it went, or why it waits: every agent with its score or
    the reason it was left out, and the model routing."""
    return _explain_out(await explain(rt.store, rt.directory, rt.tasks.rules, task_id))


def _explain_out(e: Explanation) -> ExplainOut:
    t = e.task
    return ExplainOut(
        task_id=t.id,
        status=t.status,
        assignee=t.assignee,
        capabilities=list(t.capabilities),
        priority=t.priority,
        owner=t.owner,
        owner_filter=e.owner_filter,
        waiting=e.waiting,
        best=e.ranking.best.agent_id if e.ranking.best else None,
        candidates=[
            CandidateOut(
                agent_id=c.agent_id,
                score=round(c.score, 6),
                capability_match=round(c.capability_match, 6),
                availability=c.availability,
                load=c.load,
                limit=c.limit,
                last_assigned_at=opt_isoformat(c.last_assigned_at),
            )
            for c in e.ranking.candidates
        ],
        excluded=[
            ExcludedOut(agent_id=x.agent_id, reason=x.reason.value, detail=x.detail)
            for x in e.ranking.excluded
        ],
        model=RouteOut(model=e.route.model, tier=e.route.tier, reason=e.route.reason),
        at=isoformat(e.at),
    )


@router.get("/{task_id}", response_model=TaskDetailOut)
async def get_task(task_id: str, caller: CallerDep, rt: RuntimeDep) -> TaskDetailOut:
    return TaskDetailOut.of_detail(await rt.tasks.detail(task_id))


@router.get("/{task_id}/events", response_model=EventList)
async def task_events(task_id: str, caller: CallerDep, rt: RuntimeDep) -> EventList:
    events = await rt.tasks.events(task_id)
    cursor = str(events[-1].id) if events else "0"
    return EventList(events=[EventOut.of(e) for e in events], next_cursor=cursor)


@router.patch("/{task_id}", response_model=TaskOut)
async def patch_task(task_id: str, body: TaskPatch, caller: CallerDep, rt: RuntimeDep) -> TaskOut:
    if body.status is None and body.context is None and body.priority is None:
        raise ValidationFailed(
            "nothing to change: give status, context or priority", code="empty_patch"
        )
    task = await rt.tasks.patch(
        task_id,
        caller,
        context=body.context,
        priority=body.priority,
        cancel=body.status == "cancelled",
        reason=body.reason,
    )
    return TaskOut.of(task)


@router.post("/{task_id}/start", response_model=TaskOut)
async def start_task(
    task_id: str, caller: CallerDep, rt: RuntimeDep, body: StartBody | None = None
) -> TaskOut:
    attempt = body.attempt if body else None
    return TaskOut.of(await rt.tasks.start(task_id, caller, attempt=attempt))


@router.post("/{task_id}/progress", response_model=TaskOut)
async def report_progress(
    task_id: str, body: ProgressBody, caller: CallerDep, rt: RuntimeDep
) -> TaskOut:
    task = await rt.tasks.progress(
        task_id,
        caller,
        message=body.message,
        percent=body.percent,
        attempt=body.attempt,
        cost=report_of(body.cost),
    )
    return TaskOut.of(task)


@router.post("/{task_id}/complete", response_model=TaskOut)
async def complete_task(
    task_id: str, caller: CallerDep, rt: RuntimeDep, body: CompleteBody | None = None
) -> TaskOut:
    body = body or CompleteBody()
    task = await rt.tasks.complete(
        task_id,
        caller,
        result=body.result,
        summary=body.summary,
        attempt=body.attempt,
        cost=report_of(body.cost),
    )
    return TaskOut.of(task)


@router.post("/{task_id}/fail", response_model=TaskOut)
async def fail_task(task_id: str, body: FailBody, caller: CallerDep, rt: RuntimeDep) -> TaskOut:
    task = await rt.tasks.fail(
        task_id,
        caller,
        error=body.error,
        retryable=body.retryable,
        attempt=body.attempt,
        cost=report_of(body.cost),
    )
    return TaskOut.of(task)


@router.post("/{task_id}/input-request", response_model=TaskOut)
async def request_input(
    task_id: str, body: InputRequestBody, caller: CallerDep, rt: RuntimeDep
) -> TaskOut:
    task = await rt.tasks.request_input(
        task_id, caller, question=body.question, attempt=body.attempt
    )
    return TaskOut.of(task)


@router.post("/{task_id}/input", response_model=TaskOut)
async def provide_input(
    task_id: str, body: InputBody, caller: CallerDep, rt: RuntimeDep
) -> TaskOut:
    return TaskOut.of(await rt.tasks.provide_input(task_id, caller, answer=body.answer))


@router.post("/{task_id}/comments", status_code=status.HTTP_201_CREATED, response_model=CommentOut)
async def add_comment(
    task_id: str, body: CommentBody, caller: CallerDep, rt: RuntimeDep
) -> CommentOut:
    return CommentOut.of(await rt.tasks.comment(task_id, caller, body=body.body))


@router.post("/{task_id}/review", response_model=TaskOut)
async def review_task(task_id: str, body: ReviewBody, caller: CallerDep, rt: RuntimeDep) -> TaskOut:
    task = await rt.tasks.review(
        task_id, caller, approved=body.verdict == "approved", feedback=body.feedback
    )
    return TaskOut.of(task)


@router.post("/{task_id}/retry", response_model=TaskOut)
async def retry_task(task_id: str, caller: CallerDep, rt: RuntimeDep) -> TaskOut:
    return TaskOut.of(await rt.tasks.retry(task_id, caller))
