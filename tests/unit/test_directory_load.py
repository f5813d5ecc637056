"""The Directory's load counts against the events that move them, when a re-read of an
agent and a commit of its events overlap: a count may be off by one in the direction the
store's slot check or the next re-read corrects, never stuck at full for a freed agent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

from dispatchd.domain.models import Agent, AgentStatus, Event
from dispatchd.engine.directory import Directory
from dispatchd.store.base import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def agent(active: int) -> Agent:
    return Agent(
        id="a1",
        capabilities={"code": 1.0},
        status=AgentStatus.READY,
        created_at=T0,
        updated_at=T0,
        max_concurrent=1,
        active=active,
    )


class Rows:
    """A store whose agent row is `row`, read while `during` runs (a commit told to the
    event feed while the read is under way)."""

    def __init__(self, row: Agent, during: list[int]) -> None:
        self.row = row
        self.during = during
        self.log_head = 10

    async def get_agents(self, ids: Sequence[str]) -> list[Agent]:
        row = self.row
        for event_id in self.during:
            self.log_head = event_id
        return [row]

    async def all_agents(self) -> list[Agent]:
        return await self.get_agents([self.row.id])


def directory_over(rows: Rows) -> Directory:
    directory = Directory(cast(Store, rows), default_limit=3)
    directory.position = lambda: rows.log_head
    return directory


def completed(event_id: int) -> Event:
    return Event("task.completed", T0, task_id="t1", agent_id="a1", id=event_id)


async def test_a_completion_committed_while_the_agent_is_read_again_frees_it() -> None:
    # The row read still holds the task; its completion (event 11) commits and reaches the
    # feed before the read returns.
    rows = Rows(agent(active=1), during=[11])
    directory = directory_over(rows)
    await directory.refresh(["a1"])
    assert directory.apply_load(completed(11))
    assert directory.agents["a1"].active == 0


async def test_a_completion_committed_while_all_agents_are_loaded_frees_it() -> None:
    rows = Rows(agent(active=1), during=[11])
    directory = directory_over(rows)
    await directory.load()
    assert directory.apply_load(completed(11))
    assert directory.agents["a1"].active == 0


async def test_an_event_already_in_the_row_read_is_not_counted_again() -> None:
    rows = Rows(agent(active=0), during=[])
    rows.log_head = 11  # the completion (event 11) is in the row
    directory = directory_over(rows)
    await directory.refresh(["a1"])
    assert directory.apply_load(completed(11))
    assert directory.agents["a1"].active == 0


async def test_an_assignment_counted_twice_asks_for_a_re_read_at_the_limit() -> None:
    # The row read already holds the assignment committed during the read: counting its
    # event again fills the agent, so the directory answers that it must be read again.
    rows = Rows(agent(active=1), during=[11])
    directory = directory_over(rows)
    await directory.refresh(["a1"])
    assigned = Event("task.assigned", T0, task_id="t1", agent_id="a1", id=11)
    assert not directory.apply_load(assigned)


def test_an_assignment_not_committed_comes_off_the_count() -> None:
    directory = Directory(cast(Store, None), default_limit=3)
    directory.put(agent(active=0))
    directory.note_assigned("a1", T0, "t1")
    assert directory.agents["a1"].active == 1
    assert directory.unnote(["t1", "never-noted"]) == {"a1"}
    assert directory.agents["a1"].active == 0
    # Its event, should one come, is counted as any other.
    assert not directory.apply_load(Event("task.assigned", T0, task_id="t1", agent_id="a1", id=5))
    assert directory.agents["a1"].active == 1


def test_an_agent_read_since_the_note_keeps_the_row_as_its_count() -> None:
    directory = Directory(cast(Store, None), default_limit=3)
    directory.put(agent(active=0))
    directory.note_assigned("a1", T0, "t1")
    directory.put(agent(active=0))  # read again meanwhile: the row lacks the task
    directory.unnote(["t1"])
    assert directory.agents["a1"].active == 0


def test_an_agent_marked_stale_wakes_whoever_reads_it_again() -> None:
    directory = Directory(cast(Store, None), default_limit=3)
    woken: list[bool] = []
    directory.on_stale = lambda: woken.append(True)
    directory.mark_stale([])
    assert woken == []
    directory.mark_stale(["a1", "a2"])
    assert woken == [True]
    assert directory.take_stale() == {"a1", "a2"}
    assert directory.take_stale() == set()
