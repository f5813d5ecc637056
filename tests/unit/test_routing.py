"""Model routing (SPEC §3): tiers from the task's text and priority, agent and requester
overrides, the default model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.domain.routing import COMPLEX_SIGNALS, ROUTINE_SIGNALS, route, tier_of

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TIERS = {"complex": "opus", "routine": "haiku"}
DEFAULT = "sonnet"

COMPLEX = ["debug", "diagnose", "architect", "security audit", "incident", "refactor", "migration"]
ROUTINE = [
    "status check",
    "format",
    "rename",
    "ping",
    "summarize",
    "translate",
    "simple",
    "minor",
]
LOW_OR_MEDIUM = [Priority.LOW, Priority.MEDIUM]


def make_task(title: str = "do the thing", prompt: str = "", **fields: Any) -> Task:
    base: dict[str, Any] = {
        "id": "t1",
        "title": title,
        "prompt": prompt,
        "status": TaskStatus.PENDING,
        "priority": Priority.MEDIUM,
        "capabilities": (),
        "requester": "alice",
        "created_at": T0,
        "updated_at": T0,
    }
    base.update(fields)
    return Task(**base)


def make_agent(**fields: Any) -> Agent:
    base: dict[str, Any] = {
        "id": "w1",
        "capabilities": {},
        "status": AgentStatus.READY,
        "created_at": T0,
        "updated_at": T0,
    }
    base.update(fields)
    return Agent(**base)


def model_of(task: Task, agent: Agent | None = None) -> str | None:
    return route(task, agent, TIERS, DEFAULT).model


def test_the_signal_lists_are_the_specs() -> None:
    assert set(COMPLEX_SIGNALS) == set(COMPLEX)
    assert set(ROUTINE_SIGNALS) == set(ROUTINE)


# --- complex tier -----------------------------------------------------------------------


@pytest.mark.parametrize("signal", COMPLEX)
@pytest.mark.parametrize("priority", list(Priority))
def test_each_complex_signal_in_the_title_routes_to_the_complex_tier(
    signal: str, priority: Priority
) -> None:
    task = make_task(f"please {signal} the payments service", priority=priority)
    chosen = route(task, make_agent(), TIERS, DEFAULT)
    assert (chosen.model, chosen.tier) == ("opus", "complex")


@pytest.mark.parametrize("signal", COMPLEX)
def test_each_complex_signal_in_the_prompt_counts_too(signal: str) -> None:
    task = make_task("payments", f"First:\n{signal.upper()} it.", priority=Priority.LOW)
    tier, reason = tier_of(task)
    assert tier == "complex"
    assert signal in reason


@pytest.mark.parametrize("title", ["tidy up", "summarize the log", "ping the host"])
def test_every_critical_task_is_complex(title: str) -> None:
    task = make_task(title, priority=Priority.CRITICAL)
    chosen = route(task, None, TIERS, DEFAULT)
    assert (chosen.model, chosen.tier) == ("opus", "complex")
    assert "critical" in chosen.reason


def test_a_complex_signal_wins_over_a_routine_one() -> None:
    task = make_task("format the output, then debug the parser", priority=Priority.LOW)
    assert tier_of(task)[0] == "complex"


# --- routine tier -----------------------------------------------------------------------


@pytest.mark.parametrize("signal", ROUTINE)
@pytest.mark.parametrize("priority", LOW_OR_MEDIUM)
def test_each_routine_signal_at_low_or_medium_priority_is_routine(
    signal: str, priority: Priority
) -> None:
    task = make_task(f"{signal} for the docs site", priority=priority)
    chosen = route(task, make_agent(), TIERS, DEFAULT)
    assert (chosen.model, chosen.tier) == ("haiku", "routine")
    assert signal in chosen.reason and priority.value in chosen.reason


@pytest.mark.parametrize("signal", ROUTINE)
def test_a_routine_signal_at_high_priority_gets_the_default(signal: str) -> None:
    task = make_task(f"{signal} for the docs site", priority=Priority.HIGH)
    chosen = route(task, make_agent(), TIERS, DEFAULT)
    assert (chosen.model, chosen.tier) == (DEFAULT, None)


def test_a_multi_word_signal_needs_all_its_words() -> None:
    assert tier_of(make_task("check the status page", priority=Priority.LOW))[0] is None
    assert tier_of(make_task("a status  check", priority=Priority.LOW))[0] == "routine"
    assert tier_of(make_task("a status\ncheck", priority=Priority.LOW))[0] == "routine"
    assert tier_of(make_task("security review", priority=Priority.LOW))[0] is None
    assert tier_of(make_task("Security Audit of login", priority=Priority.LOW))[0] == "complex"


# --- word starts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        ("debugging the flaky test", "complex"),
        ("schema migrations for v2", "complex"),
        ("refactoring the store", "complex"),
        ("Incidents of last week", "complex"),
        ("formatting the README", "routine"),
        ("renamed variables", "routine"),
        ("summarized notes", "routine"),
    ],
)
def test_words_that_start_with_a_signal_count(text: str, tier: str) -> None:
    assert tier_of(make_task(text, priority=Priority.LOW))[0] == tier


@pytest.mark.parametrize(
    "text",
    [
        "gather the information",  # contains "format", not at a word start
        "reformat nothing",
        "update the mapping",  # "ping" inside a word
        "stamping tool",
        "a predebug hook",
        "the admigration tool",
        "unsimplified",
    ],
)
def test_a_signal_inside_a_word_does_not_count(text: str) -> None:
    chosen = route(make_task(text, priority=Priority.LOW), make_agent(), TIERS, DEFAULT)
    assert (chosen.model, chosen.tier) == (DEFAULT, None)
    assert chosen.reason == "no signal"


# --- overrides and defaults -------------------------------------------------------------


def test_an_agents_dispatch_model_overrides_the_tier() -> None:
    agent = make_agent(dispatch_model="local-llama")
    for task in (
        make_task("debug it", priority=Priority.CRITICAL),
        make_task("ping", priority=Priority.LOW),
        make_task("nothing special"),
    ):
        chosen = route(task, agent, TIERS, DEFAULT)
        assert (chosen.model, chosen.tier) == ("local-llama", None)
        assert "w1" in chosen.reason


def test_a_model_the_requester_named_is_kept() -> None:
    task = make_task("debug it", priority=Priority.CRITICAL, model="gpt-x")
    for agent in (None, make_agent(), make_agent(dispatch_model="local-llama")):
        chosen = route(task, agent, TIERS, DEFAULT)
        assert (chosen.model, chosen.tier) == ("gpt-x", None)


def test_no_signal_falls_back_to_the_default_model() -> None:
    for priority in (Priority.LOW, Priority.MEDIUM, Priority.HIGH):
        chosen = route(make_task("write the report", priority=priority), None, TIERS, DEFAULT)
        assert (chosen.model, chosen.tier) == (DEFAULT, None)
    assert route(make_task("write the report"), None, TIERS, None).model is None


def test_a_tier_without_a_model_falls_back_to_the_default() -> None:
    chosen = route(make_task("debug it"), None, {"routine": "haiku"}, DEFAULT)
    assert (chosen.model, chosen.tier) == (DEFAULT, None)
    assert "complex" in chosen.reason


def test_tier_names_map_to_the_configured_models() -> None:
    tiers = {"complex": "big-model", "routine": "small-model"}
    assert route(make_task("debug it"), None, tiers, None).model == "big-model"
    assert route(make_task("ping it", priority=Priority.LOW), None, tiers, None).model == (
        "small-model"
    )
