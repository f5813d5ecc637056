"""The review gate's pure parts (docs/review.md): the review task a completion opens, the
verdict a review task carries, the records and preference a verdict leaves, review tasks
that never fail for their reviewer, routing that keeps work from its excluded agent and
offers it first to its preferred one, and the Aegis convention read from any output."""

from __future__ import annotations

from typing import Any

import pytest

from dispatchd.domain import lifecycle, review, scoring
from dispatchd.domain.models import (
    ReviewerKind,
    TaskKind,
    TaskStatus,
    Verdict,
)
from dispatchd.errors import ValidationFailed
from dispatchd.runner.review import ReviewVerdict, as_verdict, parse_aegis
from tests.unit.test_lifecycle import NOW, POLICY
from tests.unit.test_lifecycle import make_task as lifecycle_task
from tests.unit.test_scoring import make_agent, make_task

S = TaskStatus


def in_review(**fields: Any) -> Any:
    base = {
        "review": True,
        "reviewer": "rev",
        "reviewer_kind": ReviewerKind.CAPABILITY,
        "assignee": "w1",
        "prompt": "Sort the list",
        "result": {"sorted": [1, 2]},
        "summary": "sorted it",
        "owner": "team-a",
        "scope": "room-1",
    }
    base.update(fields)
    return lifecycle_task(S.REVIEW, **base)


def test_a_capability_review_task_carries_the_work_and_keeps_it_from_the_worker() -> None:
    task = in_review(context={"feedback": "earlier notes"}, review_cycles=1)
    born = review.open_review(task, "r-1", NOW)
    made = born.task
    assert (made.id, made.status, made.kind, made.review_of) == (
        "r-1",
        S.PENDING,
        TaskKind.REVIEW,
        task.id,
    )
    assert made.capabilities == ("rev",) and made.assigned_to is None
    assert made.excluded_agent == "w1"
    assert (made.owner, made.scope, made.priority) == ("team-a", None, task.priority)
    work = made.context["review"]
    assert work == {
        "task_id": task.id,
        "cycle": 2,
        "title": task.title,
        "prompt": "Sort the list",
        "result": {"sorted": [1, 2]},
        "summary": "sorted it",
        "worker": "w1",
        "previous_feedback": "earlier notes",
    }
    assert "VERDICT: APPROVED" in made.prompt and "earlier notes" in made.prompt
    assert '"sorted"' in made.prompt
    assert born.event.type == "task.created"
    assert born.event.data == {
        "status": "pending",
        "kind": "review",
        "review_of": task.id,
        "cycle": 2,
    }


def test_an_agent_review_task_is_named_for_the_reviewer() -> None:
    made = review.open_review(in_review(reviewer_kind=ReviewerKind.AGENT), "r-1", NOW).task
    assert made.assigned_to == "rev" and made.capabilities == ()


def test_a_long_result_is_cut_in_the_prompt_but_whole_in_the_context() -> None:
    result = "x" * (review.PROMPT_RESULT_LIMIT * 2)
    made = review.open_review(in_review(result=result), "r-1", NOW).task
    assert len(made.prompt) < review.PROMPT_RESULT_LIMIT + 2000
    assert made.context["review"]["result"] == result


def test_only_a_task_with_a_reviewer_opens_a_review_task() -> None:
    assert review.routed(in_review())
    assert not review.routed(in_review(reviewer=None, reviewer_kind=None))


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"verdict": "approved"}, (Verdict.APPROVED, None)),
        ({"verdict": "REJECTED", "feedback": "no"}, (Verdict.REJECTED, "no")),
    ],
)
def test_a_review_task_result_is_a_verdict(result: Any, expected: Any) -> None:
    assert review.verdict_of(result) == expected


@pytest.mark.parametrize(
    "result",
    [
        None,
        "approved",
        [],
        {"verdict": "maybe"},
        {"verdict": 1},
        {"verdict": "approved", "feedback": 2},
    ],
)
def test_anything_else_is_refused(result: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        review.verdict_of(result)
    assert caught.value.code == "invalid_verdict"


def test_verdicts_are_recorded_and_a_rejection_prefers_the_worker() -> None:
    task = in_review(review_cycles=1)
    rejected = lifecycle.reject(
        task, NOW, POLICY, reviewer="rev-1", feedback="again", review_task_id="r-2"
    )
    assert rejected.task.preferred_agent == "w1"
    assert rejected.review is not None
    assert (rejected.review.cycle, rejected.review.verdict, rejected.review.review_task_id) == (
        2,
        Verdict.REJECTED,
        "r-2",
    )
    assert rejected.event.data["cycle"] == 2 and rejected.event.data["worker"] == "w1"
    approved = lifecycle.approve(task, NOW, reviewer="admin", feedback=None)
    assert approved.review is not None and approved.review.review_task_id is None
    assert approved.review.verdict is Verdict.APPROVED and approved.review.cycle == 2
    # The preference is spent on the next assignment.
    assigned = lifecycle.assign(rejected.task, "w2", NOW)
    assert assigned.task.preferred_agent is None


@pytest.mark.parametrize("retryable", [True, False])
def test_a_review_task_never_fails_for_its_reviewer(retryable: bool) -> None:
    task = lifecycle_task(
        S.RUNNING, kind=TaskKind.REVIEW, review_of="t-1", attempt=7, max_attempts=3, assignee="rev"
    )
    failed = lifecycle.fail(task, NOW, POLICY, error="no verdict", retryable=retryable, jitter=0.5)
    assert failed.task.status is S.PENDING and failed.event.type == "task.retrying"
    timed_out = lifecycle.time_out(task, NOW, POLICY, jitter=0.5)
    assert timed_out.task.status is S.PENDING
    lost = lifecycle.requeue(task.evolve(requeues=50), NOW, POLICY, reason="lease lost")
    assert lost.task.status is S.PENDING
    # An ordinary task in the same place fails for good.
    plain = task.evolve(kind=TaskKind.TASK, review_of=None)
    assert (
        lifecycle.fail(plain, NOW, POLICY, error="x", retryable=retryable, jitter=0.5).task.status
        is S.FAILED
    )


def test_routing_keeps_a_task_from_its_excluded_agent() -> None:
    task = make_task(excluded_agent="a1", review_of="t-1")
    why = scoring.exclusion(task, make_agent("a1"), default_limit=3, owner_filter=True)
    assert why is not None and why.reason is scoring.Exclusion.EXCLUDED
    named = make_task(excluded_agent="a1", assigned_to="a1")
    assert scoring.exclusion(named, make_agent("a1"), default_limit=3, owner_filter=True)
    assert scoring.best(task, [make_agent("a1")], default_limit=3, owner_filter=True) is None


def test_routing_offers_a_task_first_to_its_preferred_agent() -> None:
    idle = make_agent("a1")
    busy = make_agent("a2", active=2)
    task = make_task()
    assert scoring.best(task, [idle, busy], default_limit=3, owner_filter=True).agent_id == "a1"  # type: ignore[union-attr]
    preferring = make_task(preferred_agent="a2")
    chosen = scoring.best(preferring, [idle, busy], default_limit=3, owner_filter=True)
    assert chosen is not None and chosen.agent_id == "a2"
    ranked = scoring.rank(preferring, [idle, busy], default_limit=3, owner_filter=True)
    assert [c.agent_id for c in ranked.candidates] == ["a2", "a1"]
    # A preferred agent that cannot take it now is passed over.
    full = make_agent("a2", active=3)
    assert (
        scoring.best(preferring, [idle, full], default_limit=3, owner_filter=True).agent_id == "a1"
    )  # type: ignore[union-attr]


# --- the Aegis convention -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VERDICT: APPROVED", ReviewVerdict(True, None)),
        ("All good.\nVERDICT: APPROVED\nNOTES: nice work", ReviewVerdict(True, "nice work")),
        (
            "**VERDICT: REJECTED**\nNOTES: handle empty lists\nand sort stably",
            ReviewVerdict(False, "handle empty lists\nand sort stably"),
        ),
        ("NOTES: missing tests\n\nVERDICT: rejected", ReviewVerdict(False, "missing tests")),
        ("## Verdict: **Approved**", ReviewVerdict(True, None)),
        ("VERDICT: REJECTED\nVERDICT: APPROVED", ReviewVerdict(True, None)),
    ],
)
def test_the_aegis_convention(text: str, expected: ReviewVerdict) -> None:
    assert parse_aegis(text) == expected


@pytest.mark.parametrize(
    "text", ["", "Looks fine to me", "NOTES: only notes", "the verdict: approved", "VERDICT: MAYBE"]
)
def test_an_output_without_a_verdict_line_is_none(text: str) -> None:
    assert parse_aegis(text) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ReviewVerdict.reject("x"), ReviewVerdict(False, "x")),
        (True, ReviewVerdict(True)),
        (("approved", "fine"), ReviewVerdict(True, "fine")),
        ((False, None), ReviewVerdict(False)),
        ({"verdict": "rejected", "feedback": "y"}, ReviewVerdict(False, "y")),
        ("VERDICT: APPROVED\nNOTES: ok", ReviewVerdict(True, "ok")),
        ("approved", ReviewVerdict(True)),
        (None, None),
        (("maybe", "x"), None),
        ({"verdict": "approved", "feedback": 3}, None),
        (42, None),
    ],
)
def test_a_review_handler_answer(value: Any, expected: ReviewVerdict | None) -> None:
    assert as_verdict(value) == expected


def test_a_verdict_as_the_review_task_result() -> None:
    assert ReviewVerdict.approve("ok").as_result() == {"verdict": "approved", "feedback": "ok"}
    assert ReviewVerdict.reject().as_result() == {"verdict": "rejected", "feedback": None}
