"""The task lifecycle as pure functions: the table, each action, backoff, merge patch, access."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatchd.domain import lifecycle
from dispatchd.domain.access import Caller, require_holder, require_requester_or_admin
from dispatchd.domain.lifecycle import RULES, Action, Change, Policy, allowed_edges, backoff
from dispatchd.domain.models import Attempt, AttemptOutcome, Priority, Task, TaskStatus
from dispatchd.errors import Forbidden, InvalidTransition, StaleAttempt

S = TaskStatus
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
POLICY = Policy(
    lease=timedelta(seconds=60),
    default_timeout=timedelta(seconds=300),
    backoff_base=timedelta(seconds=2),
    backoff_cap=timedelta(seconds=100),
    max_lost_requeues=5,
    max_review_cycles=3,
)


def make_task(status: TaskStatus = S.PENDING, **fields: Any) -> Task:
    base: dict[str, Any] = {
        "id": "t1",
        "title": "title",
        "prompt": "prompt",
        "status": status,
        "priority": Priority.MEDIUM,
        "capabilities": ("code",),
        "requester": "alice",
        "created_at": T0,
        "updated_at": T0,
        "max_attempts": 3,
        "version": 7,
    }
    if status in (S.ASSIGNED, S.RUNNING, S.WAITING_INPUT, S.REVIEW):
        base.update(assignee="w1", attempt=1)
    if status is S.WAITING_INPUT:
        base["question"] = "which branch?"
    base.update(fields)
    return Task(**base)


# --- (a) the table is SPEC §2 ---------------------------------------------------------

# Written from the diagram and text of SPEC §2, not from RULES. Readings:
# * failure and timeout with attempts left go straight back to pending (with a backoff);
#   the last one ends in failed / timed_out. The assignee may fail its task in any state it
#   holds (assigned, running, waiting_input), and a deadline can pass in any of them.
# * a lost agent (no start in time, no heartbeat, deregistered) requeues a held task to
#   pending; after `max_lost_requeues` the task fails.
# * progress keeps a running task running (it renews the lease).
EXPECTED_EDGES = {
    # create ─► blocked ─(deps done / run_at reached)─► pending; a dead dependency fails it
    (S.BLOCKED, S.PENDING),
    (S.BLOCKED, S.FAILED),
    # pending ─► assigned ─► running ─► completed
    (S.PENDING, S.ASSIGNED),
    (S.ASSIGNED, S.RUNNING),
    (S.RUNNING, S.RUNNING),
    (S.RUNNING, S.COMPLETED),
    # review ─► completed (approved) / pending (rejected) / failed (after max cycles)
    (S.RUNNING, S.REVIEW),
    (S.REVIEW, S.COMPLETED),
    (S.REVIEW, S.PENDING),
    (S.REVIEW, S.FAILED),
    # waiting_input ─► running (answer arrives)
    (S.RUNNING, S.WAITING_INPUT),
    (S.WAITING_INPUT, S.RUNNING),
    # failed / timed out / lost, from every held state
    (S.ASSIGNED, S.FAILED),
    (S.ASSIGNED, S.TIMED_OUT),
    (S.ASSIGNED, S.PENDING),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.PENDING),
    (S.WAITING_INPUT, S.FAILED),
    (S.WAITING_INPUT, S.TIMED_OUT),
    (S.WAITING_INPUT, S.PENDING),
    # manual retry of a finished task (SPEC §4 /retry)
    (S.FAILED, S.PENDING),
    (S.TIMED_OUT, S.PENDING),
    (S.CANCELLED, S.PENDING),
    # pending | blocked | assigned | running | waiting_input | review ─► cancelled
    (S.PENDING, S.CANCELLED),
    (S.BLOCKED, S.CANCELLED),
    (S.ASSIGNED, S.CANCELLED),
    (S.RUNNING, S.CANCELLED),
    (S.WAITING_INPUT, S.CANCELLED),
    (S.REVIEW, S.CANCELLED),
}


def test_table_matches_spec() -> None:
    edges = allowed_edges()
    assert edges - EXPECTED_EDGES == set(), "edges the spec does not draw"
    assert EXPECTED_EDGES - edges == set(), "edges of the spec the table lacks"


def test_terminal_states_leave_only_by_retry_or_escalation() -> None:
    terminal = {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED}
    assert {s for s in S if s.terminal} == terminal
    for action, rule in RULES.items():
        if action in (Action.RETRY, Action.ESCALATE, Action.UPDATE):
            continue
        assert not rule.sources & terminal, action
    assert RULES[Action.RETRY].targets == {S.PENDING}
    # Escalation gives a failure (never a completion or a cancellation) one more attempt.
    assert RULES[Action.ESCALATE].sources == {S.FAILED, S.TIMED_OUT}
    assert RULES[Action.ESCALATE].targets == {S.PENDING}
    assert not any(src is S.COMPLETED for src, _ in allowed_edges())


def test_nothing_enters_blocked_but_creation() -> None:
    assert not any(dst is S.BLOCKED for _, dst in allowed_edges())
    assert RULES[Action.CREATE].targets == {S.PENDING, S.BLOCKED}
    assert RULES[Action.CREATE].sources == frozenset()


# --- (b) every action refuses every state outside its sources --------------------------

ACTIONS: dict[Action, Callable[[Task], Change]] = {
    Action.UNBLOCK: lambda t: lifecycle.unblock(t, NOW),
    Action.ASSIGN: lambda t: lifecycle.assign(t, "w2", NOW),
    Action.START: lambda t: lifecycle.start(t, NOW, POLICY),
    Action.PROGRESS: lambda t: lifecycle.progress(t, NOW, POLICY, message="m", percent=1.0),
    Action.REQUEST_INPUT: lambda t: lifecycle.request_input(t, NOW, POLICY, question="q"),
    Action.PROVIDE_INPUT: lambda t: lifecycle.provide_input(t, NOW, POLICY, answer="a", by="x"),
    Action.COMPLETE: lambda t: lifecycle.complete(t, NOW, result=1, summary=None),
    Action.APPROVE: lambda t: lifecycle.approve(t, NOW, reviewer="r", feedback=None),
    Action.REJECT: lambda t: lifecycle.reject(t, NOW, POLICY, reviewer="r", feedback="no"),
    Action.FAIL: lambda t: lifecycle.fail(t, NOW, POLICY, error="e", retryable=True, jitter=0.5),
    Action.TIME_OUT: lambda t: lifecycle.time_out(t, NOW, POLICY, jitter=0.5),
    Action.REQUEUE: lambda t: lifecycle.requeue(t, NOW, POLICY, reason="lost"),
    Action.CANCEL: lambda t: lifecycle.cancel(t, NOW, by="alice", reason=None),
    Action.RETRY: lambda t: lifecycle.retry(t, NOW, by="alice"),
    Action.DEPENDENCY_FAILED: lambda t: lifecycle.dependency_failed(
        t, NOW, parent="p", reason="failed"
    ),
    Action.ESCALATE: lambda t: lifecycle.escalate(t, NOW, capability="senior"),
    Action.UPDATE: lambda t: lifecycle.update(t, NOW, by="alice", context_patch={"k": 1}),
}


def test_every_action_has_a_function() -> None:
    assert set(ACTIONS) == set(Action) - {Action.CREATE}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_action_refuses_states_outside_its_sources(action: Action) -> None:
    sources = RULES[action].sources
    for status in S:
        task = make_task(status)
        if status in sources:
            change = ACTIONS[action](task)
            assert change.task.status in RULES[action].targets
            assert change.task.version == task.version + 1
            assert change.task.updated_at == NOW
            assert change.event.task_id == task.id
            continue
        with pytest.raises(InvalidTransition) as info:
            ACTIONS[action](task)
        assert info.value.status == 409
        assert info.value.details["current_state"] == status.value
        assert info.value.details["task_id"] == task.id
        assert status.value in info.value.message


# --- (c) each action ------------------------------------------------------------------


@pytest.mark.parametrize(("blocked", "status"), [(False, S.PENDING), (True, S.BLOCKED)])
def test_create(blocked: bool, status: TaskStatus) -> None:
    change = lifecycle.create(make_task(S.RUNNING, attempt=4, version=9), NOW, blocked=blocked)
    assert change.task.status is status
    assert (change.task.attempt, change.task.version) == (0, 1)
    assert change.task.created_at == change.task.updated_at == NOW
    assert change.event.type == "task.created"
    assert change.event.agent_id == "alice"


def test_unblock_hands_over_inputs() -> None:
    task = make_task(S.BLOCKED, context={"keep": 1})
    change = lifecycle.unblock(task, NOW, inputs={"p1": {"r": 2}})
    assert change.task.status is S.PENDING
    assert change.task.context == {"keep": 1, "inputs": {"p1": {"r": 2}}}
    assert change.event.type == "task.unblocked"


def test_dependency_failed_names_the_parent() -> None:
    change = lifecycle.dependency_failed(make_task(S.BLOCKED), NOW, parent="p9", reason="cancelled")
    assert change.task.status is S.FAILED
    assert change.task.error is not None and "p9" in change.task.error
    assert change.task.finished_at == NOW
    assert change.event.type == "task.failed"


def test_assign_counts_attempts_and_creates_a_record() -> None:
    task = make_task(S.PENDING, not_before=T0, question="old")
    change = lifecycle.assign(task, "w2", NOW, model="opus")
    assert change.task.status is S.ASSIGNED
    assert change.task.assignee == "w2"
    assert change.task.attempt == 1
    assert change.task.not_before is None and change.task.question is None
    assert change.task.model == "opus"
    assert change.new_attempt == Attempt(task_id="t1", number=1, agent_id="w2", assigned_at=NOW)
    assert change.event.type == "task.assigned"
    assert change.event.agent_id == "w2"
    assert change.event.data["attempt"] == 1
    again = lifecycle.assign(make_task(S.PENDING, attempt=2), "w3", NOW)
    assert again.task.attempt == 3
    assert again.new_attempt is not None and again.new_attempt.number == 3


def test_start_sets_lease_and_deadline() -> None:
    change = lifecycle.start(make_task(S.ASSIGNED, timeout_s=30), NOW, POLICY)
    assert change.task.status is S.RUNNING
    assert change.task.started_at == NOW
    assert change.task.lease_expires_at == NOW + POLICY.lease
    assert change.task.deadline_at == NOW + timedelta(seconds=30)
    assert change.attempt_patch == lifecycle.AttemptPatch(change.task.id, 1, started_at=NOW)
    assert change.event.type == "task.started"
    default = lifecycle.start(make_task(S.ASSIGNED), NOW, POLICY)
    assert default.task.deadline_at == NOW + POLICY.default_timeout


def test_progress_renews_the_lease_and_logs() -> None:
    task = make_task(S.RUNNING, progress_message="earlier", lease_expires_at=T0)
    change = lifecycle.progress(task, NOW, POLICY, message=None, percent=40.0)
    assert change.task.status is S.RUNNING
    assert change.task.lease_expires_at == NOW + POLICY.lease
    assert change.task.progress_message == "earlier"
    assert change.task.progress_percent == 40.0
    assert change.progress is not None
    assert (change.progress.attempt, change.progress.agent_id) == (1, "w1")
    assert change.event.type == "task.progress"


def test_question_and_answer() -> None:
    asked = lifecycle.request_input(make_task(S.RUNNING), NOW, POLICY, question="which?")
    assert asked.task.status is S.WAITING_INPUT
    assert asked.task.question == "which?"
    assert asked.event.type == "task.waiting_input"
    answered = lifecycle.provide_input(asked.task, NOW, POLICY, answer="main", by="alice")
    assert answered.task.status is S.RUNNING
    assert answered.task.question is None
    assert answered.task.context["answers"] == [
        {"question": "which?", "answer": "main", "by": "alice"}
    ]
    assert answered.event.type == "task.input_received"


def test_a_question_sets_the_run_time_and_lease_aside_until_the_answer() -> None:
    running = make_task(
        S.RUNNING, deadline_at=NOW + timedelta(seconds=90), lease_expires_at=NOW + POLICY.lease
    )
    asked = lifecycle.request_input(running, NOW, POLICY, question="which?")
    assert asked.task.run_left_ms == 90_000
    assert asked.task.deadline_at is None  # no input timeout: it waits for ever
    assert asked.task.lease_expires_at is None
    later = NOW + timedelta(hours=3)
    answered = lifecycle.provide_input(asked.task, later, POLICY, answer="main", by="alice")
    # The 90 s left when it asked count on from the answer, not from the question.
    assert answered.task.deadline_at == later + timedelta(seconds=90)
    assert answered.task.lease_expires_at == later + POLICY.lease
    assert answered.task.run_left_ms is None


def test_an_input_timeout_is_the_only_deadline_of_a_waiting_task() -> None:
    running = make_task(S.RUNNING, deadline_at=NOW + timedelta(seconds=5), input_timeout_s=30)
    asked = lifecycle.request_input(running, NOW, POLICY, question="which?")
    assert asked.task.deadline_at == NOW + timedelta(seconds=30)
    assert asked.event.data["answer_by"] is not None
    configured = replace(POLICY, input_timeout=timedelta(seconds=7))
    by_default = lifecycle.request_input(make_task(S.RUNNING), NOW, configured, question="q")
    assert by_default.task.deadline_at == NOW + timedelta(seconds=7)
    failed = lifecycle.input_timed_out(asked.task, NOW + timedelta(seconds=30), POLICY)
    assert failed.task.status is S.FAILED
    assert failed.task.error is not None and failed.task.error.startswith("input_timeout")
    assert failed.task.run_left_ms is None and failed.task.deadline_at is None
    assert failed.event.type == "task.failed"
    assert failed.event.data["code"] == "input_timeout"
    assert failed.event.data["final"] is True


def test_complete_without_review_finishes_the_attempt() -> None:
    change = lifecycle.complete(make_task(S.RUNNING), NOW, result={"ok": 1}, summary="done")
    assert change.task.status is S.COMPLETED
    assert change.task.result == {"ok": 1}
    assert change.task.finished_at == NOW
    assert change.task.lease_expires_at is None
    assert change.event.type == "task.completed"
    assert change.attempt_patch == lifecycle.AttemptPatch(
        change.task.id, 1, ended_at=NOW, outcome=AttemptOutcome.COMPLETED
    )


def test_complete_with_review_waits_for_the_verdict() -> None:
    change = lifecycle.complete(make_task(S.RUNNING, review=True), NOW, result=1, summary=None)
    assert change.task.status is S.REVIEW
    assert change.task.finished_at is None
    assert change.event.type == "task.review_requested"
    approved = lifecycle.approve(change.task, NOW, reviewer="r", feedback="good")
    assert approved.task.status is S.COMPLETED
    assert approved.task.finished_at == NOW
    assert approved.event.type == "task.approved"


def test_reject_returns_to_pending_until_the_last_cycle() -> None:
    task = make_task(S.REVIEW, review=True)
    for cycle in range(1, POLICY.max_review_cycles):
        change = lifecycle.reject(task, NOW, POLICY, reviewer="r", feedback=f"fix {cycle}")
        assert change.task.status is S.PENDING, cycle
        assert change.task.review_cycles == cycle
        assert change.task.assignee is None
        assert change.task.context["feedback"] == f"fix {cycle}"
        # The extra attempt a rejection costs is not taken from the budget.
        assert change.task.max_attempts == task.max_attempts + 1
        assert change.event.type == "task.rejected"
        assert change.event.data["final"] is False
        task = change.task.evolve(status=S.REVIEW, assignee="w1", attempt=task.attempt + 1)
    last = lifecycle.reject(task, NOW, POLICY, reviewer="r", feedback="still wrong")
    assert last.task.status is S.FAILED
    assert last.task.review_cycles == POLICY.max_review_cycles
    assert last.task.error is not None and "still wrong" in last.task.error
    assert last.event.type == "task.rejected"
    assert last.event.data["final"] is True


@pytest.mark.parametrize("held", [S.ASSIGNED, S.RUNNING, S.WAITING_INPUT])
def test_fail_with_attempts_left_backs_off(held: TaskStatus) -> None:
    task = make_task(held, attempt=2, max_attempts=3, lease_expires_at=NOW)
    change = lifecycle.fail(task, NOW, POLICY, error="boom", retryable=True, jitter=0.25)
    assert change.task.status is S.PENDING
    assert change.task.assignee is None
    assert change.task.attempt == 2
    assert change.task.not_before == NOW + backoff(2, POLICY, 0.25)
    assert change.task.not_before > NOW
    assert change.task.lease_expires_at is None
    assert change.task.error == "boom"
    assert change.event.type == "task.retrying"
    assert change.event.data["reason"] == "failed"
    assert change.attempt_patch == lifecycle.AttemptPatch(
        change.task.id, 2, ended_at=NOW, outcome=AttemptOutcome.FAILED, error="boom"
    )


def test_fail_on_the_last_attempt_is_final() -> None:
    task = make_task(S.RUNNING, attempt=3, max_attempts=3)
    change = lifecycle.fail(task, NOW, POLICY, error="boom", retryable=True, jitter=0.5)
    assert change.task.status is S.FAILED
    assert change.task.finished_at == NOW
    assert change.task.not_before is None
    assert change.event.type == "task.failed"
    assert change.event.data["final"] is True
    assert change.attempt_patch is not None
    assert change.attempt_patch.outcome is AttemptOutcome.FAILED


def test_fail_not_retryable_is_final_at_once() -> None:
    task = make_task(S.RUNNING, attempt=1, max_attempts=5)
    change = lifecycle.fail(task, NOW, POLICY, error="bad input", retryable=False, jitter=0.5)
    assert change.task.status is S.FAILED
    assert change.event.type == "task.failed"


def test_time_out_retries_then_times_out() -> None:
    early = lifecycle.time_out(make_task(S.RUNNING, attempt=1, timeout_s=9), NOW, POLICY, jitter=0)
    assert early.task.status is S.PENDING
    assert early.task.not_before == NOW + backoff(1, POLICY, 0)
    assert early.event.type == "task.retrying"
    assert early.event.data["reason"] == "timed_out"
    assert early.task.error == "timed out after 9s"
    assert early.attempt_patch is not None
    assert early.attempt_patch.outcome is AttemptOutcome.TIMED_OUT
    last = lifecycle.time_out(make_task(S.RUNNING, attempt=3), NOW, POLICY, jitter=0)
    assert last.task.status is S.TIMED_OUT
    assert last.task.finished_at == NOW
    assert last.event.type == "task.timed_out"


def test_requeue_until_max_lost_requeues_then_fail() -> None:
    task = make_task(S.RUNNING)
    for n in range(1, POLICY.max_lost_requeues):
        change = lifecycle.requeue(task, NOW, POLICY, reason="lost")
        assert change.task.status is S.PENDING, n
        assert change.task.requeues == n
        assert change.task.assignee is None
        # A lost attempt does not spend the budget.
        assert change.task.max_attempts == task.max_attempts + 1
        assert change.event.type == "task.requeued"
        assert change.attempt_patch is not None
        assert change.attempt_patch.outcome is AttemptOutcome.LOST
        task = change.task.evolve(status=S.RUNNING, assignee="w1", attempt=task.attempt + 1)
    final = lifecycle.requeue(task, NOW, POLICY, reason="lost again")
    assert final.task.status is S.FAILED
    assert final.task.requeues == POLICY.max_lost_requeues
    assert final.event.type == "task.failed"


@pytest.mark.parametrize("held", [S.ASSIGNED, S.RUNNING, S.WAITING_INPUT])
def test_cancel_ends_the_held_attempt(held: TaskStatus) -> None:
    change = lifecycle.cancel(make_task(held), NOW, by="alice", reason="enough")
    assert change.task.status is S.CANCELLED
    assert change.task.finished_at == NOW
    assert change.event.type == "task.cancelled"
    assert change.event.data["previous"] == held.value
    assert change.attempt_patch == lifecycle.AttemptPatch(
        change.task.id, 1, ended_at=NOW, outcome=AttemptOutcome.CANCELLED, error="enough"
    )


@pytest.mark.parametrize("attempt", [0, 2])
def test_cancel_of_an_unheld_task_touches_no_attempt(attempt: int) -> None:
    change = lifecycle.cancel(make_task(S.PENDING, attempt=attempt), NOW, by="alice", reason=None)
    assert change.task.status is S.CANCELLED
    assert change.attempt_patch is None


@pytest.mark.parametrize(
    ("status", "attempt", "max_attempts", "expected_max"),
    [
        (S.FAILED, 3, 3, 4),
        (S.TIMED_OUT, 5, 3, 6),
        (S.CANCELLED, 0, 3, 3),
        (S.FAILED, 1, 3, 3),
    ],
)
def test_retry_leaves_at_least_one_attempt(
    status: TaskStatus, attempt: int, max_attempts: int, expected_max: int
) -> None:
    task = make_task(
        status, attempt=attempt, max_attempts=max_attempts, assignee="w1", finished_at=T0
    )
    change = lifecycle.retry(task, NOW, by="alice")
    assert change.task.status is S.PENDING
    assert change.task.max_attempts == expected_max
    assert change.task.max_attempts > change.task.attempt
    assert change.task.attempt == attempt
    assert change.task.assignee is None
    assert change.task.finished_at is None
    assert change.event.type == "task.retrying"
    assert change.event.data["reason"] == "manual"


@pytest.mark.parametrize("status", sorted(s for s in S if s.terminal))
def test_update_refuses_priority_of_a_terminal_task(status: TaskStatus) -> None:
    task = make_task(status)
    with pytest.raises(InvalidTransition) as info:
        lifecycle.update(task, NOW, by="alice", priority=Priority.HIGH)
    assert info.value.details["current_state"] == status.value
    merged = lifecycle.update(task, NOW, by="alice", context_patch={"note": "x"})
    assert merged.task.status is status
    assert merged.task.context == {"note": "x"}


def test_update_merges_context_and_changes_priority() -> None:
    task = make_task(S.RUNNING, context={"a": {"b": 1, "c": 2}, "d": 3})
    change = lifecycle.update(
        task, NOW, by="alice", context_patch={"a": {"c": None}, "e": 4}, priority=Priority.HIGH
    )
    assert change.task.status is S.RUNNING
    assert change.task.context == {"a": {"b": 1}, "d": 3, "e": 4}
    assert change.task.priority is Priority.HIGH
    assert change.task.version == task.version + 1
    assert change.event.type == "task.updated"
    assert change.event.data == {"context": ["a", "e"], "priority": "high"}
    assert task.context == {"a": {"b": 1, "c": 2}, "d": 3}


# --- (d) backoff ----------------------------------------------------------------------

policies = st.builds(
    Policy,
    backoff_base=st.integers(0, 10_000).map(lambda ms: timedelta(milliseconds=ms)),
    backoff_cap=st.integers(0, 10_000_000).map(lambda ms: timedelta(milliseconds=ms)),
)
jitters = st.floats(0, 1, exclude_max=True)
ONE_US = timedelta(microseconds=1)


def capped_exponential_us(attempt: int, policy: Policy) -> int:
    """base * 2**(attempt-1), capped, in whole microseconds (ints do not overflow)."""
    base_us = policy.backoff_base // ONE_US
    return min(base_us * 2 ** (attempt - 1), policy.backoff_cap // ONE_US)


@given(attempt=st.integers(1, 200), policy=policies, jitter=jitters)
def test_backoff_within_half_and_full_of_the_capped_exponential(
    attempt: int, policy: Policy, jitter: float
) -> None:
    full = capped_exponential_us(attempt, policy)
    delay_us = backoff(attempt, policy, jitter) / ONE_US
    # timedelta rounds to the microsecond.
    assert full / 2 - 1 <= delay_us <= full
    assert backoff(attempt, policy, jitter) <= policy.backoff_cap


@given(attempt=st.integers(1, 200), policy=policies, jitter=jitters)
def test_backoff_doubles_until_the_cap(attempt: int, policy: Policy, jitter: float) -> None:
    this, following = backoff(attempt, policy, jitter), backoff(attempt + 1, policy, jitter)
    assert following >= this
    if capped_exponential_us(attempt + 1, policy) < policy.backoff_cap // ONE_US:
        assert abs(following - 2 * this) <= 2 * ONE_US
    else:
        assert following == backoff(attempt + 100, policy, jitter)


@given(attempt=st.integers(1, 20), low=jitters, high=jitters)
def test_backoff_grows_with_jitter(attempt: int, low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert backoff(attempt, POLICY, low) <= backoff(attempt, POLICY, high)


def test_backoff_does_not_overflow_on_late_attempts() -> None:
    # max_attempts may be 100 (and requeues add more): the delay stays at the cap.
    assert backoff(100, POLICY, 0) == POLICY.backoff_cap / 2
    assert backoff(10_000, Policy(backoff_cap=timedelta(days=1)), 0.5) == timedelta(hours=18)


def test_backoff_examples() -> None:
    assert [backoff(n, POLICY, 0).total_seconds() for n in range(1, 9)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        50,
        50,
    ]
    assert backoff(1, POLICY, 0.5) == timedelta(seconds=1.5)
    assert backoff(40, POLICY, 0.999).total_seconds() == pytest.approx(99.95)
    assert backoff(0, POLICY, 0) == backoff(1, POLICY, 0)


# --- (e) merge patch ------------------------------------------------------------------

# RFC 7386, Appendix A.
RFC7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC7386_EXAMPLES)
def test_merge_patch_rfc7386_appendix(target: Any, patch: Any, expected: Any) -> None:
    before = copy.deepcopy(target)
    assert lifecycle.merge_patch(target, patch) == expected
    assert target == before


def test_merge_patch_rfc7386_section_3_example() -> None:
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert lifecycle.merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=12,
)


@given(target=json_values, patch=json_values)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = lifecycle.merge_patch(target, patch)
    assert lifecycle.merge_patch(once, patch) == once


# --- (f) access -----------------------------------------------------------------------


def attempt_of(agent: str, number: int) -> Attempt:
    return Attempt(task_id="t1", number=number, agent_id=agent, assigned_at=T0)


def test_the_holder_may_act() -> None:
    task = make_task(S.RUNNING, assignee="w1", attempt=2)
    past = [attempt_of("w0", 1), attempt_of("w1", 2)]
    require_holder(task, Caller("w1"), past)
    require_holder(task, Caller("w1"), past, attempt=2)


def test_the_attempt_fence_refuses_an_older_attempt_of_the_same_agent() -> None:
    task = make_task(S.RUNNING, assignee="w1", attempt=3)
    past = [attempt_of("w1", 1), attempt_of("w2", 2), attempt_of("w1", 3)]
    with pytest.raises(StaleAttempt) as info:
        require_holder(task, Caller("w1"), past, attempt=1)
    assert info.value.status == 409
    assert info.value.details["current_attempt"] == 3


def test_a_previous_holder_is_stale() -> None:
    task = make_task(S.RUNNING, assignee="w2", attempt=2)
    with pytest.raises(StaleAttempt) as info:
        require_holder(task, Caller("w1"), [attempt_of("w1", 1), attempt_of("w2", 2)])
    assert info.value.details["assignee"] == "w2"
    requeued = make_task(S.PENDING, assignee=None, attempt=1)
    with pytest.raises(StaleAttempt):
        require_holder(requeued, Caller("w1"), [attempt_of("w1", 1)])


def test_a_stranger_is_forbidden() -> None:
    task = make_task(S.RUNNING, assignee="w1")
    with pytest.raises(Forbidden) as info:
        require_holder(task, Caller("mallory"), [attempt_of("w1", 1)])
    assert info.value.status == 403
    assert info.value.code == "not_assignee"
    # Admin rights do not make an admin the holder.
    with pytest.raises(Forbidden):
        require_holder(task, Caller("root", is_admin=True), [attempt_of("w1", 1)])


def test_requester_or_admin_may_cancel() -> None:
    task = make_task(S.RUNNING)
    require_requester_or_admin(task, Caller("alice"), "cancel")
    require_requester_or_admin(task, Caller("root", is_admin=True), "cancel")
    for caller in (Caller("w1"), Caller("mallory")):
        with pytest.raises(Forbidden) as info:
            require_requester_or_admin(task, caller, "cancel")
        assert info.value.code == "not_requester"
