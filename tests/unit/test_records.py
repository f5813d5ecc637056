"""The records a transition builds (task, agent, attempt, event) are plain slotted
dataclasses at run time, for speed, and frozen to the type checker: mypy refuses an
assignment to one of their fields, and they compare and hash as frozen dataclasses do."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from mypy import api

from dispatchd.domain.costs import Cost
from dispatchd.domain.ids import isoformat, parse_iso
from dispatchd.domain.models import Agent, AgentStatus, Attempt, Event, Task
from tests.unit.test_writes import T0, new_task

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_type_checker_refuses_to_change_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = tmp_path / "change.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from dispatchd.domain.lifecycle import Change
            from dispatchd.domain.models import Agent, Attempt, Event, Task, TaskSpec
            from dispatchd.store.base import UpdateTask

            def change(task: Task, agent: Agent, attempt: Attempt, event: Event) -> None:
                task.title = "another"
                agent.status = agent.status
                attempt.error = "boom"
                event.type = "task.other"

            def more(spec: TaskSpec, step: Change, write: UpdateTask) -> None:
                spec.title = "another"
                step.task = step.task
                write.previous = write.previous
            """
        )
    )
    monkeypatch.setenv("MYPYPATH", str(SRC))
    out, _, status = api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), "--no-incremental", str(snippet)]
    )
    assert status == 1, out
    refused = [line for line in out.splitlines() if "is read-only" in line]
    assert [line.split(":")[1] for line in refused] == ["7", "8", "9", "10", "13", "14", "15"], out


def test_records_compare_and_hash_by_value() -> None:
    task = new_task()
    assert task == new_task() and task is not new_task()
    assert task != task.evolve(title="other")
    one = Attempt("t1", 1, "w", assigned_at=T0, cost=Cost(0.5, 1, 2))
    same = Attempt("t1", 1, "w", assigned_at=T0, cost=Cost(0.5, 1, 2))
    assert one == same and hash(one) == hash(same)
    assert len({one, same, one.evolve(number=2)}) == 2


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "2026-03-01T12:00:00.000000Z"),
        (datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "0005-01-02T03:04:05.000006Z"),
        # Another zone, even one whose offset is zero, is converted to UTC first.
        (
            datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2026-03-01T06:30:00.000000Z",
        ),
        (
            datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(0), "Z0")),
            "2026-03-01T12:00:00.000001Z",
        ),
    ],
)
def test_times_are_written_in_utc_at_fixed_width(moment: datetime, text: str) -> None:
    assert isoformat(moment) == text
    assert parse_iso(text) == moment


def test_evolve_changes_the_named_fields_and_refuses_unknown_ones() -> None:
    one = Attempt("t1", 1, "w", assigned_at=T0)
    later = one.evolve(started_at=T0 + timedelta(seconds=1), error="x")
    assert later == Attempt("t1", 1, "w", T0, T0 + timedelta(seconds=1), error="x")
    assert one.started_at is None  # the original is left as it was
    with pytest.raises(TypeError, match="Attempt has no field 'nope'"):
        one.evolve(nope=1)
    with pytest.raises(TypeError, match="Task has no field 'nope'"):
        new_task().evolve(nope=1)


@pytest.mark.parametrize("cls", [Task, Agent, Attempt, Event])
def test_evolve_copies_every_field_and_the_records_build_nothing_in_init(cls: type) -> None:
    # evolve copies fields without calling __init__: that is only the same object as
    # dataclasses.replace makes while __init__ does nothing but set each field.
    assert not hasattr(cls, "__post_init__")
    assert all(f.init for f in dataclasses.fields(cls))
    sample = {
        Task: new_task(),
        Agent: Agent("w", {"x": 1.0}, AgentStatus.READY, T0, T0),
        Attempt: Attempt("t1", 1, "w", assigned_at=T0),
        Event: Event(type="task.created", created_at=T0, task_id="t1"),
    }[cls]
    copied = sample.evolve()
    assert copied == dataclasses.replace(sample) and copied is not sample
    for f in dataclasses.fields(cls):
        assert getattr(copied, f.name) is getattr(sample, f.name), f.name
    marker = object()
    for f in dataclasses.fields(cls):
        changed = sample.evolve(**{f.name: marker})
        assert getattr(changed, f.name) is marker
        assert getattr(sample, f.name) is not marker
