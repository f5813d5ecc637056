"""The records a transition builds (task, agent, attempt, event) are plain slotted
dataclasses at run time, for speed, and frozen to the type checker: mypy refuses an
assignment to one of their fields, and they compare and hash as frozen dataclasses do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

from dispatchd.domain.costs import Cost
from dispatchd.domain.models import Attempt
from tests.unit.test_writes import T0, new_task

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_type_checker_refuses_to_change_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = tmp_path / "change.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from dispatchd.domain.models import Agent, Attempt, Event, Task

            def change(task: Task, agent: Agent, attempt: Attempt, event: Event) -> None:
                task.title = "another"
                agent.status = agent.status
                attempt.error = "boom"
                event.type = "task.other"
            """
        )
    )
    monkeypatch.setenv("MYPYPATH", str(SRC))
    out, _, status = api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), "--no-incremental", str(snippet)]
    )
    assert status == 1, out
    refused = [line for line in out.splitlines() if "is read-only" in line]
    assert [line.split(":")[1] for line in refused] == ["5", "6", "7", "8"], out


def test_records_compare_and_hash_by_value() -> None:
    task = new_task()
    assert task == new_task() and task is not new_task()
    assert task != task.evolve(title="other")
    one = Attempt("t1", 1, "w", assigned_at=T0, cost=Cost(0.5, 1, 2))
    same = Attempt("t1", 1, "w", assigned_at=T0, cost=Cost(0.5, 1, 2))
    assert one == same and hash(one) == hash(same)
    assert len({one, same, one.evolve(number=2)}) == 2
