"""The Directory's ranked lists choose exactly what scoring every agent would choose.

`Directory.best` reads the head of a per-tag ranking for one-tag and no-tag tasks; these
properties compare it with `scoring.best` over all agents, for random fleets, tasks and
assignment histories.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.domain.scoring import best
from dispatchd.engine.directory import Directory
from dispatchd.store.base import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ("code", "docs", "ops")
OWNERS = (None, "team-a", "team-b")
ROOMS = (None, "infra", "research")
LIMIT = 3

agents_st = st.lists(
    st.builds(
        lambda n, caps, status, owner, limit, active, idle, drained, room: Agent(
            id=f"agent-{n:03d}",
            capabilities=caps,
            status=status,
            created_at=T0,
            updated_at=T0,
            owner=owner,
            max_concurrent=limit,
            drained=drained,
            room=room,
            active=active,
            last_assigned_at=None if idle is None else T0 + timedelta(seconds=idle),
        ),
        n=st.integers(0, 999),
        # Few distinct weights, so that ties (and the tie-breaks) are common.
        caps=st.dictionaries(st.sampled_from(TAGS), st.sampled_from([0.0, 0.3, 0.5, 1.0, 0.9])),
        status=st.sampled_from(list(AgentStatus)),
        owner=st.sampled_from(OWNERS),
        limit=st.one_of(st.none(), st.integers(1, 4)),
        active=st.integers(0, 4),
        idle=st.one_of(st.none(), st.integers(0, 5)),
        drained=st.booleans(),
        room=st.sampled_from(ROOMS),
    ),
    max_size=40,
    unique_by=lambda a: a.id,
)

tasks_st = st.builds(
    lambda caps, priority, owner, scope: Task(
        id="task-1",
        title="t",
        prompt="p",
        status=TaskStatus.PENDING,
        priority=priority,
        capabilities=tuple(caps),
        requester="r",
        created_at=T0,
        updated_at=T0,
        owner=owner,
        scope=scope,
    ),
    caps=st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
    priority=st.sampled_from(list(Priority)),
    owner=st.sampled_from(OWNERS),
    scope=st.sampled_from(ROOMS),
)


def directory_of(agents: list[Agent]) -> Directory:
    directory = Directory(cast(Store, None), default_limit=LIMIT)
    for agent in agents:
        directory.put(agent)
    return directory


def choose(directory: Directory, task: Task, **kw: Any) -> str | None:
    found = directory.best(task, default_limit=LIMIT, **kw)
    return found.agent_id if found else None


def reference(agents: list[Agent], task: Task, *, owner_filter: bool, skip: set[str]) -> str | None:
    pool = [a for a in agents if a.id not in skip]
    found = best(task, pool, default_limit=LIMIT, owner_filter=owner_filter)
    return found.agent_id if found else None


@settings(max_examples=300, deadline=None)
@given(agents=agents_st, task=tasks_st, owner_filter=st.booleans(), data=st.data())
def test_best_is_the_best_of_every_agent(
    agents: list[Agent], task: Task, owner_filter: bool, data: st.DataObject
) -> None:
    skip = set(data.draw(st.lists(st.sampled_from([a.id for a in agents] or ["x"]), max_size=3)))
    directory = directory_of(agents)
    got = choose(directory, task, owner_filter=owner_filter, skip=skip)
    assert got == reference(agents, task, owner_filter=owner_filter, skip=skip)


@settings(max_examples=150, deadline=None)
@given(agents=agents_st, task=tasks_st, owner_filter=st.booleans(), steps=st.integers(1, 12))
def test_best_follows_assignments_updates_and_removals(
    agents: list[Agent], task: Task, owner_filter: bool, steps: int
) -> None:
    """Assign repeatedly to whoever is best, change and drop agents: the ranked lists stay
    in step with the agents as they are now."""
    directory = directory_of(agents)
    now = T0 + timedelta(minutes=1)
    for step in range(steps):
        current = list(directory.agents.values())
        got = choose(directory, task, owner_filter=owner_filter, skip=set())
        assert got == reference(current, task, owner_filter=owner_filter, skip=set())
        if got is None:
            break
        now += timedelta(seconds=1)
        directory.note_assigned(got, now)
        if step % 3 == 1:
            # An agent's row comes back from the store with its load dropped.
            freed = directory.agents[got].evolve(active=0)
            directory.put(freed)
        if step % 4 == 2:
            directory.drop(got)
        if step % 5 == 3:
            # Agents move to another room (or leave theirs).
            for agent in list(directory.agents.values())[:2]:
                directory.put(agent.evolve(room=ROOMS[(ROOMS.index(agent.room) + 1) % 3]))


def test_an_agent_that_gains_room_is_ranked_again() -> None:
    full = Agent(
        id="a1",
        capabilities={"code": 1.0},
        status=AgentStatus.READY,
        created_at=T0,
        updated_at=T0,
        max_concurrent=1,
        active=1,
    )
    task = Task(
        id="t",
        title="t",
        prompt="p",
        status=TaskStatus.PENDING,
        priority=Priority.MEDIUM,
        capabilities=("code",),
        requester="r",
        created_at=T0,
        updated_at=T0,
    )
    directory = directory_of([full])
    assert choose(directory, task, owner_filter=True, skip=set()) is None
    directory.put(full.evolve(active=0))
    assert choose(directory, task, owner_filter=True, skip=set()) == "a1"
    directory.put(full.evolve(active=0, drained=True))
    assert choose(directory, task, owner_filter=True, skip=set()) is None
