"""Choosing an agent for a task (SPEC §3), as pure functions: exclusions, scores, ties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatchd.domain import scoring
from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.domain.scoring import Exclusion, best, capability_match, exclusion, rank

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LIMIT = 3


def make_task(**fields: Any) -> Task:
    base: dict[str, Any] = {
        "id": "t1",
        "title": "title",
        "prompt": "",
        "status": TaskStatus.PENDING,
        "priority": Priority.MEDIUM,
        "capabilities": ("code",),
        "requester": "alice",
        "created_at": T0,
        "updated_at": T0,
    }
    base.update(fields)
    return Task(**base)


def make_agent(agent_id: str = "a1", capabilities: Any = ("code",), **fields: Any) -> Agent:
    caps = dict.fromkeys(capabilities, 1.0) if isinstance(capabilities, tuple) else capabilities
    base: dict[str, Any] = {
        "id": agent_id,
        "capabilities": caps,
        "status": AgentStatus.READY,
        "created_at": T0,
        "updated_at": T0,
    }
    base.update(fields)
    return Agent(**base)


def why(task: Task, agent: Agent, *, owner_filter: bool = True) -> Exclusion | None:
    found = exclusion(task, agent, default_limit=LIMIT, owner_filter=owner_filter)
    return found.reason if found else None


def ranking(task: Task, agents: list[Agent], *, owner_filter: bool = True) -> scoring.Ranking:
    return rank(task, agents, default_limit=LIMIT, owner_filter=owner_filter)


# --- exclusions -------------------------------------------------------------------------


def test_a_task_of_a_room_goes_only_to_its_agents() -> None:
    task = make_task(scope="infra")
    assert why(task, make_agent(room="infra")) is None
    assert why(task, make_agent(room="research")) is Exclusion.NOT_IN_ROOM
    assert why(task, make_agent()) is Exclusion.NOT_IN_ROOM
    # Capabilities still filter inside the room.
    assert why(task, make_agent(room="infra", capabilities=("docs",))) is (
        Exclusion.MISSING_CAPABILITY
    )
    # Naming an agent outside the room does not take the task out of it.
    named = make_task(scope="infra", assigned_to="a1")
    assert why(named, make_agent(room="research")) is Exclusion.NOT_IN_ROOM
    assert why(named, make_agent(room="infra", capabilities=())) is None
    # A task of no room goes to agents in rooms as to any other.
    assert why(make_task(), make_agent(room="infra")) is None
    found = exclusion(task, make_agent(room="research"), default_limit=LIMIT, owner_filter=True)
    assert found is not None and "infra" in found.detail


def test_an_able_ready_agent_is_not_excluded() -> None:
    assert exclusion(make_task(), make_agent(), default_limit=LIMIT, owner_filter=True) is None


def test_a_task_named_for_another_agent_excludes_the_rest() -> None:
    found = exclusion(
        make_task(assigned_to="a2"), make_agent("a1"), default_limit=LIMIT, owner_filter=True
    )
    assert found is not None
    assert found.reason is Exclusion.NOT_NAMED
    assert found.agent_id == "a1"
    assert "a2" in found.detail


def test_the_named_agent_is_not_excluded_for_being_named() -> None:
    assert why(make_task(assigned_to="a1"), make_agent("a1")) is None


def test_missing_capability_names_the_missing_tags() -> None:
    task = make_task(capabilities=("code", "rust", "sql"))
    found = exclusion(
        task, make_agent(capabilities=("code",)), default_limit=LIMIT, owner_filter=True
    )
    assert found is not None
    assert found.reason is Exclusion.MISSING_CAPABILITY
    assert "rust" in found.detail and "sql" in found.detail
    assert "code" not in found.detail


def test_capabilities_must_all_be_held_but_extra_ones_do_not_matter() -> None:
    task = make_task(capabilities=("code", "rust"))
    assert why(task, make_agent(capabilities=("rust",))) is Exclusion.MISSING_CAPABILITY
    assert why(task, make_agent(capabilities=("code", "rust", "go"))) is None


def test_a_task_without_required_capabilities_fits_any_agent() -> None:
    assert why(make_task(capabilities=()), make_agent(capabilities=())) is None


@pytest.mark.parametrize("agent_owner", ["bob", None])
def test_owner_mismatch_when_the_filter_is_on(agent_owner: str | None) -> None:
    task = make_task(owner="carol")
    agent = make_agent(owner=agent_owner)
    assert why(task, agent, owner_filter=True) is Exclusion.OWNER_MISMATCH
    assert why(task, agent, owner_filter=False) is None


def test_same_owner_or_an_ownerless_task_passes_the_owner_filter() -> None:
    assert why(make_task(owner="carol"), make_agent(owner="carol")) is None
    assert why(make_task(owner=None), make_agent(owner="carol")) is None


def test_a_drained_agent_is_excluded() -> None:
    assert why(make_task(), make_agent(drained=True)) is Exclusion.DRAINING


def test_an_offline_agent_is_excluded() -> None:
    assert why(make_task(), make_agent(status=AgentStatus.OFFLINE)) is Exclusion.OFFLINE


def test_a_degraded_agent_is_excluded() -> None:
    assert why(make_task(), make_agent(status=AgentStatus.DEGRADED)) is Exclusion.DEGRADED


def test_at_capacity_against_its_own_limit() -> None:
    agent = make_agent(max_concurrent=2, active=2)
    found = exclusion(make_task(), agent, default_limit=LIMIT, owner_filter=True)
    assert found is not None
    assert found.reason is Exclusion.AT_CAPACITY
    assert "2 of 2" in found.detail
    assert why(make_task(), make_agent(max_concurrent=2, active=1)) is None


def test_at_capacity_against_the_default_limit_when_the_agent_sets_none() -> None:
    assert why(make_task(), make_agent(active=LIMIT - 1)) is None
    assert why(make_task(), make_agent(active=LIMIT)) is Exclusion.AT_CAPACITY
    # The agent's own limit wins over the default, in both directions.
    assert why(make_task(), make_agent(max_concurrent=LIMIT + 2, active=LIMIT)) is None
    assert why(make_task(), make_agent(max_concurrent=1, active=1)) is Exclusion.AT_CAPACITY


def test_the_first_failing_check_is_the_reason_given() -> None:
    everything_wrong = make_agent(
        "a1",
        capabilities=("other",),
        owner="bob",
        drained=True,
        status=AgentStatus.OFFLINE,
        active=LIMIT,
    )
    task = make_task(owner="carol")
    assert why(task.evolve(assigned_to="a2"), everything_wrong) is Exclusion.NOT_NAMED
    assert why(task, everything_wrong) is Exclusion.MISSING_CAPABILITY
    agent = everything_wrong.evolve(capabilities={"code": 1.0})
    assert why(task, agent) is Exclusion.OWNER_MISMATCH
    agent = agent.evolve(owner="carol")
    assert why(task, agent) is Exclusion.DRAINING
    agent = agent.evolve(drained=False)
    assert why(task, agent) is Exclusion.OFFLINE
    agent = agent.evolve(status=AgentStatus.DEGRADED)
    assert why(task, agent) is Exclusion.DEGRADED
    agent = agent.evolve(status=AgentStatus.READY)
    assert why(task, agent) is Exclusion.AT_CAPACITY
    assert why(task, agent.evolve(active=0)) is None


# --- capability match -------------------------------------------------------------------


def test_capability_match_is_the_mean_of_the_weights_for_the_required_tags() -> None:
    agent = make_agent(capabilities={"code": 0.5, "rust": 1.0, "go": 0.1})
    assert capability_match(agent, ["code", "rust"]) == pytest.approx(0.75)
    assert capability_match(agent, ["code"]) == pytest.approx(0.5)
    assert capability_match(agent, ["go", "code", "rust"]) == pytest.approx(1.6 / 3)


def test_unweighted_tags_count_as_a_full_match() -> None:
    # Tags given as a plain list arrive as weight 1.0; a missing weight counts as 1.0 too.
    assert capability_match(make_agent(capabilities=("code", "rust")), ["code", "rust"]) == 1.0
    agent = make_agent(capabilities={"code": None, "rust": 0.5})  # type: ignore[dict-item]
    assert capability_match(agent, ["code", "rust"]) == pytest.approx(0.75)


def test_no_required_tags_is_a_full_match() -> None:
    assert capability_match(make_agent(capabilities={"code": 0.2}), []) == 1.0


def test_the_candidate_carries_its_capability_match_into_the_score() -> None:
    task = make_task(capabilities=("code", "rust"), priority=Priority.LOW)
    found = scoring.candidate(
        task, make_agent(capabilities={"code": 0.4, "rust": 0.8}), default_limit=LIMIT
    )
    assert found.capability_match == pytest.approx(0.6)
    assert found.score == pytest.approx(0.6)


# --- availability and priority ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "multiplier"),
    [(AgentStatus.READY, 1.0), (AgentStatus.SLEEPING, 0.8), (AgentStatus.BUSY, 0.5)],
)
def test_availability_multiplies_the_score(status: AgentStatus, multiplier: float) -> None:
    task = make_task(priority=Priority.LOW)
    found = scoring.candidate(
        task, make_agent(capabilities={"code": 0.5}, status=status), default_limit=LIMIT
    )
    assert found.availability == multiplier
    assert found.score == pytest.approx(0.5 * multiplier)


def test_a_degraded_agent_never_becomes_a_candidate() -> None:
    result = ranking(make_task(), [make_agent("a1", status=AgentStatus.DEGRADED)])
    assert result.candidates == []
    assert result.best is None
    assert [(e.agent_id, e.reason) for e in result.excluded] == [("a1", Exclusion.DEGRADED)]


def test_ready_beats_sleeping_beats_busy() -> None:
    agents = [
        make_agent("busy", status=AgentStatus.BUSY),
        make_agent("sleeping", status=AgentStatus.SLEEPING),
        make_agent("ready", status=AgentStatus.READY),
    ]
    assert [c.agent_id for c in ranking(make_task(), agents).candidates] == [
        "ready",
        "sleeping",
        "busy",
    ]


@pytest.mark.parametrize(
    ("priority", "weight"),
    [
        (Priority.LOW, 1.0),
        (Priority.MEDIUM, 2.0),
        (Priority.HIGH, 3.0),
        (Priority.CRITICAL, 4.0),
    ],
)
def test_priority_weight_scales_the_score(priority: Priority, weight: float) -> None:
    agent = make_agent(capabilities={"code": 0.5}, status=AgentStatus.SLEEPING)
    found = scoring.candidate(make_task(priority=priority), agent, default_limit=LIMIT)
    assert found.score == pytest.approx(0.5 * 0.8 * weight)


def test_priority_weight_does_not_change_which_agent_wins() -> None:
    agents = [
        make_agent("strong", capabilities={"code": 0.9}, status=AgentStatus.BUSY),
        make_agent("weak", capabilities={"code": 0.3}),
        make_agent("mid", capabilities={"code": 0.6}, status=AgentStatus.SLEEPING),
    ]
    orders = {
        tuple(c.agent_id for c in ranking(make_task(priority=p), agents).candidates)
        for p in Priority
    }
    assert orders == {("mid", "strong", "weak")}


def test_weighted_match_and_availability_combine() -> None:
    # 0.9 * 0.5 = 0.45 (busy expert) loses to 0.6 * 1.0 (ready generalist).
    agents = [
        make_agent("expert", capabilities={"code": 0.9}, status=AgentStatus.BUSY),
        make_agent("generalist", capabilities={"code": 0.6}),
    ]
    result = ranking(make_task(priority=Priority.LOW), agents)
    assert [(c.agent_id, round(c.score, 6)) for c in result.candidates] == [
        ("generalist", 0.6),
        ("expert", 0.45),
    ]


# --- ties -------------------------------------------------------------------------------


def test_equal_scores_go_to_the_lower_load() -> None:
    agents = [
        make_agent("a", active=2, last_assigned_at=None),
        make_agent("b", active=1, last_assigned_at=T0),
    ]
    assert ranking(make_task(), agents).best.agent_id == "b"  # type: ignore[union-attr]


def test_equal_scores_and_loads_go_to_the_agent_idle_longest() -> None:
    agents = [
        make_agent("a", last_assigned_at=T0 + timedelta(minutes=2)),
        make_agent("b", last_assigned_at=T0),
        make_agent("c", last_assigned_at=T0 + timedelta(minutes=1)),
    ]
    assert [c.agent_id for c in ranking(make_task(), agents).candidates] == ["b", "c", "a"]


def test_never_assigned_counts_as_idle_longest() -> None:
    agents = [
        make_agent("a", last_assigned_at=datetime(1971, 1, 1, tzinfo=UTC)),
        make_agent("z", last_assigned_at=None),
    ]
    assert [c.agent_id for c in ranking(make_task(), agents).candidates] == ["z", "a"]


def test_full_ties_go_to_the_smaller_id() -> None:
    agents = [make_agent(i) for i in ("c", "a", "b")]
    assert [c.agent_id for c in ranking(make_task(), agents).candidates] == ["a", "b", "c"]
    stamped = [make_agent(i, last_assigned_at=T0) for i in ("c", "a", "b")]
    assert [c.agent_id for c in ranking(make_task(), stamped).candidates] == ["a", "b", "c"]


def test_a_higher_score_wins_over_every_tie_break() -> None:
    agents = [
        make_agent("a", capabilities={"code": 0.5}, active=0, last_assigned_at=None),
        make_agent("b", capabilities={"code": 0.6}, active=2, last_assigned_at=T0),
    ]
    assert ranking(make_task(), agents).best.agent_id == "b"  # type: ignore[union-attr]


# --- rank and best ----------------------------------------------------------------------


def test_rank_lists_every_agent_once_candidates_best_first_then_the_excluded() -> None:
    task = make_task(capabilities=("code",), owner="carol")
    agents = [
        make_agent("z-full", owner="carol", max_concurrent=1, active=1),
        make_agent("y-sleepy", owner="carol", status=AgentStatus.SLEEPING),
        make_agent("x-nocode", capabilities=("docs",), owner="carol"),
        make_agent("w-ready", owner="carol"),
        make_agent("v-bob", owner="bob"),
        make_agent("u-off", owner="carol", status=AgentStatus.OFFLINE),
        make_agent("t-drained", owner="carol", drained=True),
        make_agent("s-degraded", owner="carol", status=AgentStatus.DEGRADED),
        make_agent("r-nocode", capabilities=(), owner="carol"),
        make_agent("q-busy", owner="carol", status=AgentStatus.BUSY, active=1),
    ]
    result = ranking(task, agents)
    assert [c.agent_id for c in result.candidates] == ["w-ready", "y-sleepy", "q-busy"]
    assert result.best is result.candidates[0]
    assert [(e.agent_id, e.reason.value) for e in result.excluded] == [
        ("r-nocode", "missing_capability"),
        ("x-nocode", "missing_capability"),
        ("v-bob", "owner_mismatch"),
        ("t-drained", "draining"),
        ("u-off", "offline"),
        ("s-degraded", "degraded"),
        ("z-full", "at_capacity"),
    ]
    busy = result.candidates[2]
    assert (busy.load, busy.limit, busy.availability) == (1, LIMIT, 0.5)


def test_rank_of_nobody_has_no_best() -> None:
    result = ranking(make_task(), [])
    assert result.candidates == [] and result.excluded == [] and result.best is None
    assert best(make_task(), [], default_limit=LIMIT, owner_filter=True) is None


def test_rank_with_the_owner_filter_off_keeps_other_owners() -> None:
    agents = [make_agent("a", owner="bob"), make_agent("b", owner=None)]
    result = ranking(make_task(owner="carol"), agents, owner_filter=False)
    assert [c.agent_id for c in result.candidates] == ["a", "b"]
    assert result.excluded == []


TAGS = ["code", "rust", "sql"]

weights = st.one_of(st.just(1.0), st.floats(min_value=0.05, max_value=1.0))
times = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=5).map(lambda m: T0 + timedelta(minutes=m)),
)


@st.composite
def agents_strategy(draw: st.DrawFn) -> list[Agent]:
    ids = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8))
    return [
        make_agent(
            agent_id,
            capabilities=draw(st.dictionaries(st.sampled_from(TAGS), weights, max_size=3)),
            status=draw(st.sampled_from(list(AgentStatus))),
            owner=draw(st.sampled_from([None, "carol", "bob"])),
            drained=draw(st.booleans()),
            max_concurrent=draw(st.one_of(st.none(), st.integers(1, 4))),
            active=draw(st.integers(0, 4)),
            last_assigned_at=draw(times),
        )
        for agent_id in ids
    ]


tasks_strategy = st.builds(
    make_task,
    capabilities=st.lists(st.sampled_from(TAGS), unique=True, max_size=3).map(tuple),
    priority=st.sampled_from(list(Priority)),
    owner=st.sampled_from([None, "carol", "bob"]),
    assigned_to=st.sampled_from([None, "a", "b", "nobody"]),
)


@given(task=tasks_strategy, agents=agents_strategy(), owner_filter=st.booleans())
def test_best_agrees_with_rank(task: Task, agents: list[Agent], owner_filter: bool) -> None:
    result = rank(task, agents, default_limit=LIMIT, owner_filter=owner_filter)
    assert best(task, agents, default_limit=LIMIT, owner_filter=owner_filter) == result.best
    # Every agent appears exactly once, and the ranking is by score, then the tie-breaks.
    seen = [c.agent_id for c in result.candidates] + [e.agent_id for e in result.excluded]
    assert sorted(seen) == sorted(a.id for a in agents)
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(c.score > 0 for c in result.candidates)
    for c in result.candidates:
        assert (
            why(task, next(a for a in agents if a.id == c.agent_id), owner_filter=owner_filter)
            is None
        )
