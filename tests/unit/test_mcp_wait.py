"""check_task's wait (`_wait_for_change`) over a fake broker and a fake clock: it waits its
whole `wait_s` across several long-polls, answers on a change of status (not on mere
progress), and stops at once when the broker cuts a long-poll short (shutting down)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatchd.client.models import Event, EventPage, Task
from dispatchd.mcp import server
from tests.agent.helpers import task_json


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """Answers long-polls from a script: each entry is (seconds the poll takes, events'
    statuses); a status given changes the task as the event arrives."""

    def __init__(self, clock: Clock, script: list[tuple[float | None, str | None]]) -> None:
        self.clock = clock
        self.script = script
        self.status = "running"
        self.polls: list[float] = []

    async def read_events(self, after: str | None, **kwargs: Any) -> EventPage:
        if after == "latest":
            return EventPage(events=[], next_cursor="10")
        wait_s = kwargs["wait_s"]
        assert kwargs["task"] == "t-1"
        self.polls.append(wait_s)
        took, status = self.script.pop(0) if self.script else (None, None)
        self.clock.now += wait_s if took is None else took
        if status is None:
            return EventPage(events=[], next_cursor=str(after))
        self.status = status
        event = Event(
            id="11",
            type="task.progress",
            task_id="t-1",
            agent_id="a",
            data={},
            created_at="2026-01-01T00:00:00Z",
        )
        return EventPage(events=[event], next_cursor="11")

    async def get_task(self, task_id: str) -> Task:
        # Unvalidated: the test needs only the id and the status of a task.
        return Task.model_construct(**task_json(id=task_id, status=self.status))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(server.anyio, "current_time", fake)
    return fake


async def test_a_long_wait_spans_several_polls(clock: Clock) -> None:
    broker = Broker(clock, [])
    before, after = await server._wait_for_change(broker, "t-1", 60)  # type: ignore[arg-type]
    assert broker.polls == [25.0, 25.0, 10.0]
    assert before.status == after.status == "running"


async def test_progress_does_not_end_the_wait_a_change_of_status_does(clock: Clock) -> None:
    broker = Broker(clock, [(1.0, "running"), (2.0, "completed")])
    before, after = await server._wait_for_change(broker, "t-1", 60)  # type: ignore[arg-type]
    assert (before.status, after.status) == ("running", "completed")
    assert len(broker.polls) == 2


async def test_a_poll_cut_short_by_a_stopping_broker_ends_the_wait(clock: Clock) -> None:
    broker = Broker(clock, [(0.1, None)])
    await server._wait_for_change(broker, "t-1", 60)  # type: ignore[arg-type]
    assert broker.polls == [25.0]


async def test_no_wait_and_finished_tasks_answer_at_once(clock: Clock) -> None:
    broker = Broker(clock, [])
    await server._wait_for_change(broker, "t-1", 0)  # type: ignore[arg-type]
    broker.status = "completed"
    await server._wait_for_change(broker, "t-1", 60)  # type: ignore[arg-type]
    assert broker.polls == []
