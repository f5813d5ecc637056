"""Statements that run on every deadline sweep must not grow with the queue: on SQLite,
without statistics, the planner prefers the equality on `status` and would walk every
pending or blocked task to find the few whose backoff or run_at falls in the window."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from dispatchd.store.queries import Queries
from dispatchd.store.sqlite import SQLITE, SQLiteStore


@pytest.fixture
async def database(tmp_path: Path) -> Path:
    store = SQLiteStore(tmp_path / "plans.sqlite")
    await store.open()
    await store.migrate()
    await store.close()
    return tmp_path / "plans.sqlite"


def plan(database: Path, sql: str) -> list[str]:
    params = dict.fromkeys(re.findall(r":(\w+)", sql))
    conn = sqlite3.connect(database)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("due_ready", "tasks_not_before"),
        ("due_run_at", "tasks_run_at"),
        # By status these would read every running (or assigned) task on each sweep.
        ("due_timed_out", "tasks_deadline"),
        ("due_lease_lost", "tasks_lease"),
        ("due_not_started", "tasks_lease"),
    ],
)
def test_a_sweep_reads_through_the_time_index(database: Path, name: str, index: str) -> None:
    steps = plan(database, getattr(Queries(SQLITE), name))
    assert any(f"USING INDEX {index}" in step for step in steps), steps
    assert not any("tasks_status" in step for step in steps), steps


def test_the_next_deadline_reads_only_time_indexes(database: Path) -> None:
    steps = plan(database, Queries(SQLITE).next_deadline)
    on_tasks = [step for step in steps if re.search(r"\bSEARCH tasks\b|\bSCAN tasks\b", step)]
    assert len(on_tasks) == 4, steps
    assert not any("tasks_status" in step or "SCAN" in step for step in on_tasks), steps


def test_stats_read_recent_finished_tasks_through_their_time_index(database: Path) -> None:
    # /stats reads the tasks finished in the last 15 minutes: by the status index it would
    # read (and sort) every finished task the database keeps, growing with its age.
    steps = plan(database, Queries(SQLITE).stats_finished)
    assert any("USING INDEX tasks_finished" in step for step in steps), steps
    assert not any("tasks_status" in step or "TEMP B-TREE" in step for step in steps), steps


def test_stats_count_the_unfinished_tasks_without_walking_the_finished(database: Path) -> None:
    steps = plan(database, Queries(SQLITE).stats_open)
    assert any("SEARCH tasks USING INDEX tasks_status (status=?)" in step for step in steps), steps
    assert not any(step.startswith("SCAN tasks") for step in steps), steps


def test_the_pruner_finds_the_oldest_finished_tasks_by_their_time_index(database: Path) -> None:
    # By status it would read and sort every finished task kept, on each pass.
    steps = plan(database, Queries(SQLITE).finished_tasks)
    assert any("USING INDEX tasks_finished" in step for step in steps), steps
    assert not any("tasks_status" in step or "TEMP B-TREE" in step for step in steps), steps


def test_room_history_reads_the_rooms_events_only(database: Path) -> None:
    # Newest first, down the room's own entries: never the whole event log, whose size is
    # that of everything ever done in every room.
    steps = plan(database, Queries(SQLITE).room_events)
    assert steps == ["SEARCH events USING INDEX events_room (room=?)"], steps


def test_an_event_finds_its_room_by_its_tasks_key(database: Path) -> None:
    steps = plan(database, Queries(SQLITE).insert_event)
    assert any("SEARCH tasks USING PRIMARY KEY (id=?)" in step for step in steps), steps
    assert not any("SCAN" in step for step in steps), steps


def test_a_rooms_last_finished_task_is_one_step_down_its_index(database: Path) -> None:
    # One index probe per room asked for, already in finishing order: not every task the
    # room ever finished, read and sorted.
    steps = plan(database, Queries(SQLITE).room_last_finished)
    on_tasks = [step for step in steps if re.search(r"\b(SEARCH|SCAN) (tasks|t)\b", step)]
    assert on_tasks, steps
    assert all("USING INDEX tasks_room_finished (scope=?" in step for step in on_tasks), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps


def test_a_rooms_activity_is_read_down_its_indexes(database: Path) -> None:
    # Its last change one step down `tasks_room_updated`, its waiting tasks counted in
    # `tasks_scope_status`: not every task the room ever had, read and grouped.
    steps = plan(database, Queries(SQLITE).room_counts)
    on_tasks = [step for step in steps if re.search(r"\b(SEARCH|SCAN) (tasks|t)\b", step)]
    assert len(on_tasks) == 2, steps
    assert any("tasks_room_updated (scope=?)" in step for step in on_tasks), steps
    assert any("tasks_scope_status (scope=? AND status=?)" in step for step in on_tasks), steps
    assert not any("SCAN" in step or "TEMP B-TREE" in step for step in on_tasks), steps
