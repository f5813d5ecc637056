"""`task wait` (`cli.tasks.follow`) shows each state the task's events passed through,
even when the task has moved on by the time it is read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dispatchd.api.schemas.tasks import TaskDetailOut
from dispatchd.cli.tasks import follow
from dispatchd.client.models import Event, EventPage, Task, TaskStatus
from dispatchd.domain.models import TaskDetail
from dispatchd.domain.models import TaskStatus as S
from tests.contract.test_store import make_task

TASK = make_task()


def detail(status: S) -> TaskDetailOut:
    return TaskDetailOut.of_detail(TaskDetail(replace(TASK, status=status), (), (), ()))


def event(k: int, kind: str) -> Event:
    return Event(id=str(k), type=kind, task_id=TASK.id, agent_id="w", data={}, created_at="")


class Scripted:
    """A client whose reads of the task and of its events follow a script."""

    def __init__(self, reads: list[S], pages: list[list[str]]) -> None:
        self.reads = reads
        self.pages = pages

    def read_events(self, cursor: str, **_: Any) -> EventPage:
        if cursor == "latest":
            return EventPage(events=[], next_cursor="0")
        kinds = self.pages.pop(0) if self.pages else []  # then nothing more happens
        return EventPage(events=[event(k, t) for k, t in enumerate(kinds)], next_cursor="1")

    def get_task(self, task_id: str) -> TaskDetailOut:
        assert task_id == TASK.id
        return detail(self.reads.pop(0))


def test_a_review_approved_before_the_read_is_still_shown() -> None:
    client = Scripted(
        reads=[S.ASSIGNED, S.COMPLETED],
        pages=[["task.started", "task.progress", "task.review_requested", "task.completed"]],
    )
    seen: list[Task] = []
    done = follow(client, TASK.id, seen.append)  # type: ignore[arg-type]
    assert done.status == TaskStatus.COMPLETED
    assert [t.status for t in seen] == ["assigned", "running", "review", "completed"]


def test_a_state_the_read_shows_is_not_shown_twice() -> None:
    client = Scripted(
        reads=[S.PENDING, S.RUNNING, S.COMPLETED],
        pages=[["task.assigned", "task.started"], ["task.progress", "task.completed"]],
    )
    seen: list[Task] = []
    follow(client, TASK.id, seen.append)  # type: ignore[arg-type]
    assert [t.status for t in seen] == ["pending", "assigned", "running", "completed"]


def test_a_task_that_ended_before_its_events_were_read_shows_the_states_on_its_way() -> None:
    """The read after a progress report finds the task completed: the review it went
    through is in events not read yet, which are read before its end is shown."""
    client = Scripted(
        reads=[S.ASSIGNED, S.RUNNING, S.COMPLETED],
        pages=[
            ["task.started"],
            ["task.progress"],
            ["task.comment", "task.review_requested"],
            ["task.reviewed", "task.completed"],
        ],
    )
    seen: list[Task] = []
    done = follow(client, TASK.id, seen.append)  # type: ignore[arg-type]
    assert done.status == TaskStatus.COMPLETED
    assert [t.status for t in seen] == ["assigned", "running", "review", "completed"]
    assert client.pages == []
