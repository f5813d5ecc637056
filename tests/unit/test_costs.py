"""Costs as pure rules (docs/costs.md): an attempt's running total only rises, a report
adds its excess once, a crossed budget ends the attempt for good, a daily budget resets at
the next UTC midnight; the settings and the Claude adapter's reading of the CLI's JSON."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatchd.client.models import Task as TaskOut
from dispatchd.config import ConfigError, load_settings
from dispatchd.domain import lifecycle
from dispatchd.domain.costs import (
    BUDGET_EXCEEDED,
    Cost,
    CostReport,
    next_reset,
    over_budget,
    raised,
)
from dispatchd.domain.lifecycle import Policy
from dispatchd.domain.models import AttemptOutcome, Priority, Task, TaskStatus
from dispatchd.runner.adapters import ClaudeCode, Invocation, cost_of
from dispatchd.runner.process import ProcessResult
from tests.agent.helpers import task_json

T0 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
POLICY = Policy()


def running(**changes: object) -> Task:
    task = Task(
        id="t1",
        title="t",
        prompt="",
        status=TaskStatus.PENDING,
        priority=Priority.MEDIUM,
        capabilities=(),
        requester="alice",
        created_at=T0,
        updated_at=T0,
    )
    assigned = lifecycle.assign(task, "w1", T0).task
    return lifecycle.start(assigned, T0, POLICY).task.evolve(**changes)


def test_a_report_raises_each_field_it_names_and_keeps_the_others() -> None:
    now = Cost(0.5, 100, 10)
    assert raised(now, None) == now
    assert raised(now, CostReport(usd=0.75)) == Cost(0.75, 100, 10)
    assert raised(now, CostReport(usd=0.1, input_tokens=50, output_tokens=20)) == Cost(0.5, 100, 20)


reports = st.lists(
    st.builds(
        CostReport,
        st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
        st.one_of(st.none(), st.integers(0, 10**9)),
        st.one_of(st.none(), st.integers(0, 10**9)),
    ),
    max_size=20,
)


@given(reports)
def test_what_reports_add_sums_to_the_attempts_final_total(sent: list[CostReport]) -> None:
    task = running()
    before = task
    for report in sent:
        step = lifecycle.progress(task, T0, POLICY, message=None, percent=None)
        task = lifecycle.charged(step, task, report, T0).task
    expected = Cost()
    for report in sent:
        expected = raised(expected, report)
    assert task.attempt_cost == expected
    assert task.cost.input_tokens - before.cost.input_tokens == expected.input_tokens
    assert task.cost.usd == pytest.approx(expected.usd)


def test_a_charge_goes_to_the_task_the_attempt_the_event_and_the_ledger() -> None:
    task = running(cost=Cost(1.0, 10, 1), attempt_cost=Cost(0.25, 5, 0))
    step = lifecycle.progress(task, T0, POLICY, message="m", percent=None)
    change = lifecycle.charged(step, task, CostReport(0.5, 5, 2), T0)
    assert change.task.cost == Cost(1.25, 10, 3)
    assert change.task.attempt_cost == Cost(0.5, 5, 2)
    assert change.attempt_patch is not None and change.attempt_patch.cost == Cost(0.5, 5, 2)
    assert change.attempt_patch.number == task.attempt
    assert change.event.data["cost"] == {"usd": 0.25, "input_tokens": 0, "output_tokens": 2}
    assert change.charge is not None
    assert (change.charge.requester, change.charge.agent) == ("alice", "w1")
    assert change.charge.day == date(2026, 3, 1)
    # A report that adds nothing changes nothing.
    same = lifecycle.charged(step, task, CostReport(0.25), T0)
    assert same is step


def test_crossing_the_budget_fails_the_task_for_good_and_keeps_what_it_reported() -> None:
    task = running(max_cost_usd=1.0, max_attempts=5)
    done = lifecycle.complete(task, T0, result={"r": 1}, summary="s")
    change = lifecycle.charged(done, task, CostReport(usd=1.01), T0)
    assert change.task.status is TaskStatus.FAILED
    assert change.task.error_code == BUDGET_EXCEEDED
    assert (change.task.result, change.task.summary) == ({"r": 1}, "s")
    assert change.task.lease_expires_at is None and change.task.deadline_at is None
    assert change.event.type == "task.failed" and change.event.data["final"] is True
    assert change.event.data["code"] == BUDGET_EXCEEDED
    assert change.attempt_patch is not None
    assert change.attempt_patch.outcome is AttemptOutcome.FAILED
    assert change.charge is not None and change.charge.cost.usd == 1.01
    # Exactly the budget is within it.
    fine = lifecycle.charged(done, task, CostReport(usd=1.0), T0)
    assert fine.task.status is TaskStatus.COMPLETED
    # A new error replaces the code.
    retried = lifecycle.retry(change.task, T0, by="alice").task
    again = lifecycle.assign(retried, "w1", T0).task
    assert again.attempt_cost == Cost() and again.cost.usd == 1.01
    failed = lifecycle.fail(
        lifecycle.start(again, T0, POLICY).task, T0, POLICY, error="x", retryable=False, jitter=0
    )
    assert failed.task.error_code is None


def test_a_final_failure_is_left_as_the_agent_reported_it() -> None:
    task = running(max_cost_usd=0.1)
    final = lifecycle.fail(task, T0, POLICY, error="gave up", retryable=False, jitter=0)
    change = lifecycle.charged(final, task, CostReport(usd=5), T0)
    assert change.task.error == "gave up" and change.task.error_code is None
    assert change.task.cost.usd == 5


def test_over_budget_and_the_daily_reset() -> None:
    assert not over_budget(Cost(5), None)
    assert not over_budget(Cost(1.0), 1.0)
    assert over_budget(Cost(1.000000001), 1.0)
    assert next_reset(T0) == datetime(2026, 3, 2, tzinfo=UTC)
    east = T0.astimezone(timezone(timedelta(hours=5)))  # already 2 March there
    assert next_reset(east) == datetime(2026, 3, 2, tzinfo=UTC)
    assert Cost(0.1) + Cost(0.2) == Cost(0.3)


def test_budget_settings_from_file_and_environment(tmp_path: Path) -> None:
    assert load_settings(env={}).budgets.requester_daily_usd is None
    s = load_settings(
        env={
            "DISPATCH_BUDGETS__REQUESTER_DAILY_USD": "12.5",
            "DISPATCH_BUDGETS__REQUESTERS": '{"ci-bot": 2, "ops": 0}',
        }
    )
    assert s.budgets.requester_daily_usd == 12.5
    assert s.budgets.requesters == {"ci-bot": 2.0, "ops": 0.0}
    path = tmp_path / "d.yaml"
    path.write_text("budgets:\n  requester_daily_usd: 3\n  requesters:\n    bob: 1.5\n")
    assert load_settings(path, env={}).budgets.requesters == {"bob": 1.5}
    for env in (
        {"DISPATCH_BUDGETS__REQUESTER_DAILY_USD": "-1"},
        {"DISPATCH_BUDGETS__REQUESTER_DAILY_USD": "lots"},
        {"DISPATCH_BUDGETS__REQUESTERS": "bob=1"},
        {"DISPATCH_BUDGETS__REQUESTERS": '{"bob": -1}'},
    ):
        with pytest.raises(ConfigError, match="budgets"):
            load_settings(env=env)


def test_claude_adapter_reads_the_cost_of_a_run_that_succeeded_or_failed(
    tmp_path: Path,
) -> None:
    message = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "done",
        "session_id": "s1",
        "total_cost_usd": 0.42,
        "usage": {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 9},
    }

    inv = Invocation(TaskOut.model_validate(task_json()), ["claude"], [], "p", tmp_path / "r")
    ok = ClaudeCode(host="h").outcome(
        inv, ProcessResult(0, json.dumps(message), "", False, False, False, 1.0)
    )
    assert ok.ok and ok.cost == {"usd": 0.42, "input_tokens": 1200, "output_tokens": 300}
    error = {**message, "subtype": "error_max_turns", "is_error": True}
    bad = ClaudeCode(host="h").outcome(
        inv, ProcessResult(1, json.dumps(error), "", False, False, False, 1.0)
    )
    assert not bad.ok and bad.cost == ok.cost
    assert cost_of({"total_cost_usd": "1", "usage": {"input_tokens": True}}) is None
    assert cost_of({"total_cost_usd": -1, "usage": {"output_tokens": 5}}) == {"output_tokens": 5}
