"""`writes_for`: a task that moves several times in one commit is written once, with the
same final row, attempt and events as writing each step would leave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatchd.domain import lifecycle
from dispatchd.domain.lifecycle import Policy
from dispatchd.domain.models import (
    Agent,
    AgentStatus,
    Attempt,
    AttemptOutcome,
    Event,
    Priority,
    Task,
    TaskStatus,
)
from dispatchd.engine.transitions import ops_for, writes_for
from dispatchd.store.base import (
    AppendEvent,
    InsertTask,
    Op,
    PatchAttempt,
    SaveAttempt,
    TakeSlot,
    UpdateAgent,
    UpdateTask,
)
from dispatchd.store.connector import Query, drive
from dispatchd.store.queries import Queries
from dispatchd.store.rows import POSTGRES, Codec, to_new_row, to_row
from dispatchd.store.sqlite import SQLITE
from dispatchd.store.writes import commit
from tests.contract.test_store import full_task

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy()


def new_task(task_id: str = "t1") -> Task:
    return Task(
        id=task_id,
        title="x",
        prompt="",
        priority=Priority.MEDIUM,
        capabilities=(),
        status=TaskStatus.PENDING,
        requester="r",
        created_at=T0,
        updated_at=T0,
    )


def test_created_assigned_and_started_is_one_insert_of_the_running_task() -> None:
    born = lifecycle.create(new_task(), T0, blocked=False)
    assigned = lifecycle.assign(born.task, "w", T0)
    started = lifecycle.start(assigned.task, T0, POLICY)
    steps = [(born, None), (assigned, born.task), (started, assigned.task)]
    ops, stored = writes_for(steps)
    task = stored["t1"]
    assert task.status is TaskStatus.RUNNING and task.assignee == "w" and task.version == 1
    assert [type(op) for op in ops] == [
        InsertTask,
        AppendEvent,
        SaveAttempt,
        AppendEvent,
        AppendEvent,
    ]
    assert ops[0] == InsertTask(task)
    saved = ops[2]
    assert isinstance(saved, SaveAttempt)
    assert saved.attempt.started_at == T0 and saved.attempt.agent_id == "w"
    events = [op.event.type for op in ops if isinstance(op, AppendEvent)]
    assert events == ["task.created", "task.assigned", "task.started"]
    # The row is the last step's, but for its version: one write.
    assert task == started.task.evolve(version=1)


def test_started_and_completed_from_assigned_is_one_versioned_update() -> None:
    assigned = lifecycle.assign(new_task().evolve(version=4), "w", T0).task
    later = T0 + timedelta(seconds=5)
    started = lifecycle.start(assigned, later, POLICY)
    done = lifecycle.complete(started.task, later, result={"ok": 1}, summary=None)
    ops, stored = writes_for([(started, assigned), (done, started.task)])
    task = stored["t1"]
    assert task.status is TaskStatus.COMPLETED and task.version == assigned.version + 1
    assert ops[0] == UpdateTask(task, TaskStatus.ASSIGNED, "w")
    patches = [op for op in ops if isinstance(op, PatchAttempt)]
    assert [p.started_at for p in patches] == [later, None]
    assert patches[1].outcome is AttemptOutcome.COMPLETED
    assert sum(isinstance(op, UpdateTask) for op in ops) == 1


def test_steps_that_do_not_chain_are_written_one_by_one() -> None:
    task = new_task().evolve(version=2)
    one = lifecycle.cancel(task, T0, by="r", reason=None)
    # A second change computed from the same (not the changed) task.
    two = lifecycle.cancel(task, T0, by="r", reason="again")
    ops, stored = writes_for([(one, task), (two, task)])
    assert ops == [*ops_for(one, task), *ops_for(two, task)]
    assert stored["t1"] is two.task


def test_single_steps_are_written_as_before() -> None:
    born = lifecycle.create(new_task("a"), T0, blocked=False)
    other = lifecycle.create(new_task("b"), T0, blocked=True)
    ops, stored = writes_for([(born, None), (other, None)])
    assert ops == [*ops_for(born, None), *ops_for(other, None)]
    assert stored == {"a": born.task, "b": other.task}


# --- the statements a commit sends ------------------------------------------------------


def statements_of(ops: list[Op]) -> list[tuple[str, str, int]]:
    """Drive the commit body with no database: each query's kind, its statement's first
    words, and how many rows it carries."""
    sent: list[tuple[str, str, int]] = []

    def run(query: Query) -> object:
        rows = len(query.params) if query.kind in ("many", "ids") else 1
        sent.append((query.kind, " ".join(query.sql.split()[:3]), rows))
        return list(range(rows)) if query.kind == "ids" else None

    drive(commit(Queries(SQLITE), ops), run)
    return sent


def test_a_claim_of_ten_is_one_run_of_updates_and_one_of_attempts() -> None:
    taken = [lifecycle.assign(new_task(f"t{i}"), "w", T0) for i in range(10)]
    started = [lifecycle.start(change.task, T0, POLICY) for change in taken]
    steps = [
        s
        for a, b in zip(taken, started, strict=True)
        for s in ((a, new_task(a.task.id)), (b, a.task))
    ]
    ops, _ = writes_for(steps)
    # The agent's load, the ten rows, their attempts, the counters, the twenty events.
    assert statements_of(ops) == [
        ("send", "UPDATE agents SET", 1),
        ("many", "UPDATE tasks SET", 10),
        ("many", "INSERT INTO attempts", 10),
        ("send", "INSERT INTO task_counts", 1),
        ("ids", "INSERT INTO events", 20),
    ]


def test_a_task_written_twice_in_one_commit_is_written_in_order() -> None:
    first = new_task().evolve(version=2)
    assigned = lifecycle.assign(first, "w", T0)
    other = lifecycle.assign(new_task("t2").evolve(version=2), "w", T0)
    # Steps that do not chain: each is written from the task it was computed from.
    again = lifecycle.start(assigned.task, T0, POLICY)
    ops = [
        UpdateTask(assigned.task, first.status, None, first),
        UpdateTask(other.task, TaskStatus.PENDING, None, new_task("t2").evolve(version=2)),
        UpdateTask(again.task, assigned.task.status, "w", assigned.task),
    ]
    sent = statements_of(ops)
    updates = [(kind, rows) for kind, sql, rows in sent if sql == "UPDATE tasks SET"]
    # The first two share a shape and go together; t1's second write comes after them.
    assert updates == [("many", 2), ("checked", 1)]


def _plain(row: dict[str, object]) -> dict[str, object]:
    return {k: getattr(v, "obj", v) for k, v in row.items()}  # PostgreSQL's Jsonb wrappers


@pytest.mark.parametrize("codec", [SQLITE.codec, POSTGRES], ids=["sqlite", "postgres"])
def test_an_insert_row_is_the_full_row_without_its_nulls(codec: Codec) -> None:
    # Falsy values that are not NULL (0, False, "", empty lists and maps) are written.
    sparse = new_task()
    dense = new_task("t2").evolve(
        owner="", attempt=0, review=False, context={}, labels=(), result=0, summary=""
    )
    attempt = Attempt("t1", 1, "w", assigned_at=T0)
    event = Event(type="task.created", created_at=T0, task_id="t1", data={})
    for record in (sparse, dense, full_task(), attempt, event):
        full = _plain(to_row(record, codec))
        new = _plain(to_new_row(record, codec))
        assert new == {k: v for k, v in full.items() if v is not None}
        assert list(new) == [k for k, v in full.items() if v is not None]  # one shape
    assert {"owner", "attempt", "review", "result", "summary"} <= set(to_new_row(dense, codec))


def agent_statements(ops: list[Op]) -> list[tuple[str, dict[str, object]]]:
    """The statements the commit of `ops` sends to the agents table, with parameters."""
    sent: list[tuple[str, dict[str, object]]] = []

    def run(query: Query) -> object:
        if query.sql.lstrip().startswith("UPDATE agents"):
            sent.append((" ".join(query.sql.split()), dict(query.params)))
        rows = len(query.params) if query.kind in ("many", "ids") else 1
        if query.kind == "one":
            return {"id": 1}  # an event's id
        return list(range(rows)) if query.kind == "ids" else None

    drive(commit(Queries(SQLITE), ops), run)
    return sent


def test_a_claims_slot_and_load_are_one_statement_on_the_agent() -> None:
    taken = [lifecycle.assign(new_task(f"t{i}"), "w", T0) for i in range(10)]
    ops, _ = writes_for([(c, new_task(c.task.id)) for c in taken])
    slot = TakeSlot("w", 12, T0, check_status=True, count=10)
    [(sql, params)] = agent_statements([slot, *ops])
    assert "SET last_assigned_at" in sql and "active + :delta" in sql
    assert "active + :count <= :limit" in sql  # checked on the row as it was
    assert (params["delta"], params["count"], params["limit"]) == (10, 10, 12)


def test_a_slot_after_a_write_that_moved_the_load_is_checked_where_it_stands() -> None:
    # Completed by w, then a new task handed to w: the slot sees the load the completion
    # left, so it is checked apart, after the load's move (here net zero: no move at all).
    held = lifecycle.start(lifecycle.assign(new_task("t1"), "w", T0).task, T0, POLICY).task
    done = lifecycle.complete(held, T0, result=None, summary=None)
    handed = lifecycle.assign(new_task("t2"), "w", T0)
    ops = [
        *ops_for(done, held),
        TakeSlot("w", 1, T0, check_status=True),
        *ops_for(handed, new_task("t2")),
    ]
    [(sql, params)] = agent_statements(ops)
    assert "active + :planned + :count <= :limit" in sql and ":delta" not in sql
    assert params["planned"] == -1  # the completion's release, counted in the check
    # A hand-over before the slot raised w's load: the check counts it, apart.
    first = lifecycle.assign(new_task("t3"), "w", T0)
    before = [
        *ops_for(first, new_task("t3")),
        TakeSlot("w", 2, T0),
        *ops_for(handed, new_task("t2")),
    ]
    [(load_sql, load), (slot_sql, slot)] = agent_statements(before)
    assert load["delta"] == 2 and "last_assigned_at" not in load_sql
    assert slot["planned"] == -1 and ":planned" in slot_sql  # t2's +1 not yet written
    # Two slots for one agent: neither goes with the load.
    twice = [TakeSlot("w", 5, T0), TakeSlot("w", 5, T0), *ops_for(handed, new_task("t2"))]
    shapes = [(":delta" in sql, ":planned" in sql) for sql, _ in agent_statements(twice)]
    assert shapes == [(True, False), (False, True), (False, True)]  # the load, two checks


def test_a_slot_after_a_write_of_its_agents_row_is_checked_after_that_write() -> None:
    # A claim bringing an offline agent back: the check must read the status it wrote.
    back = Agent("w", {"x": 1.0}, AgentStatus.READY, T0, T0, version=2)
    taken = lifecycle.assign(new_task("t1"), "w", T0)
    ops = [UpdateAgent(back), TakeSlot("w", 1, T0, check_status=True)]
    ops += ops_for(taken, new_task("t1"))
    statements = agent_statements(ops)
    assert [(":delta" in sql, ":planned" in sql) for sql, _ in statements] == [
        (True, False),  # the load, moved first
        (False, False),  # the agent's row, back to ready
        (False, True),  # the check, after it
    ]
