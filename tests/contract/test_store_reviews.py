"""The review gate's storage (docs/review.md), on every engine: verdicts recorded with their
transition and listed in a task's detail, a task's open review tasks, the review task
filter, and a task kept from its excluded agent by the claim queries."""

from __future__ import annotations

from datetime import timedelta

from dispatchd.domain.models import (
    Review,
    Task,
    TaskKind,
    TaskStatus,
    Verdict,
)
from dispatchd.errors import ConcurrentUpdate
from dispatchd.store.base import (
    AppendReview,
    ClaimView,
    InsertAgent,
    Op,
    Store,
    TaskFilter,
    UpdateTask,
)
from tests.contract.test_store import T0, US, insert, make_agent, make_task, task_ids
from tests.contract.test_store_engine import query

S = TaskStatus


def review_of(task: Task, number: int, verdict: Verdict, **changes: object) -> Review:
    fields: dict[str, object] = {
        "task_id": task.id,
        "cycle": number,
        "reviewer": "aegis-ü",
        "verdict": verdict,
        "feedback": f"feedback {number} ✓",
        "created_at": T0 + number * US,
        "review_task_id": f"review-{number}",
    }
    fields.update(changes)
    return Review(**fields)  # type: ignore[arg-type]


async def test_reviews_are_recorded_in_order_and_listed_in_the_detail(store: Store) -> None:
    task, other = make_task(status=S.REVIEW), make_task()
    await insert(store, task, other)
    first = review_of(task, 1, Verdict.REJECTED)
    second = review_of(task, 2, Verdict.APPROVED, feedback=None, review_task_id=None)
    await store.commit([AppendReview(first)])
    await store.commit([AppendReview(second), AppendReview(review_of(other, 1, Verdict.APPROVED))])
    assert await store.reviews(task.id) == [first, second]
    detail = await store.task_detail(task.id)
    assert detail is not None and detail.reviews == (first, second)
    assert await store.reviews("nobody") == []
    bare = await store.task_detail(make_task().id)
    assert bare is None


async def test_a_review_is_written_with_its_transition_or_not_at_all(store: Store) -> None:
    task = make_task(status=S.REVIEW)
    await insert(store, task)
    stale = task.evolve(status=S.COMPLETED, version=task.version + 5)
    ops: list[Op] = [
        AppendReview(review_of(task, 1, Verdict.APPROVED)),
        UpdateTask(stale, task.status),
    ]
    try:
        await store.commit(ops)
    except ConcurrentUpdate:
        pass
    else:  # pragma: no cover - the stale update must fail the commit
        raise AssertionError("a stale update committed")
    assert await store.reviews(task.id) == []


async def test_open_reviews_are_the_unfinished_review_tasks_of_a_task(store: Store) -> None:
    task = make_task(status=S.REVIEW)
    pending = make_task(kind=TaskKind.REVIEW, review_of=task.id, created_at=T0)
    running = make_task(
        kind=TaskKind.REVIEW, review_of=task.id, status=S.RUNNING, assignee="rev", created_at=T0
    )
    done = make_task(kind=TaskKind.REVIEW, review_of=task.id, status=S.COMPLETED)
    cancelled = make_task(kind=TaskKind.REVIEW, review_of=task.id, status=S.CANCELLED)
    elsewhere = make_task(kind=TaskKind.REVIEW, review_of="another")
    await insert(store, task, pending, running, done, cancelled, elsewhere)
    found = await store.open_reviews(task.id)
    assert sorted(t.id for t in found) == sorted([pending.id, running.id])
    assert all(t.kind is TaskKind.REVIEW and t.review_of == task.id for t in found)
    assert await store.open_reviews(pending.id) == []
    every = {pending.id, running.id, done.id, cancelled.id}
    assert await task_ids(store, TaskFilter(review_of=task.id)) == every


async def test_a_task_is_never_claimable_by_its_excluded_agent(store: Store) -> None:
    await store.commit([InsertAgent(make_agent("me")), InsertAgent(make_agent("you"))])
    kept = make_task(excluded_agent="me", created_at=T0 - timedelta(seconds=1))
    named = make_task(excluded_agent="me", assigned_to="me")
    free = make_task(excluded_agent="you")
    await insert(store, kept, named, free)
    assert [t.id for t in await store.claimable(query("me"))] == [free.id]
    assert [t.id for t in await store.claimable(query("you"))] == [kept.id]
    seen: list[ClaimView] = []

    def plan(view: ClaimView) -> list[Op]:
        seen.append(view)
        return []

    await store.claim(query("me"), plan)
    assert [t.id for t in seen[0].candidates] == [free.id]
