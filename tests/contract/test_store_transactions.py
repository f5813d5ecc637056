"""The connector's transaction contract, on every engine: what a body may leave unanswered
(`send`), what it only checks (`checked`), and that a failure anywhere keeps nothing. On
PostgreSQL the writes of a transaction are held and sent with its next read or its commit,
so these are the cases where an answer the body did not wait for arrives late."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from dispatchd.errors import ConcurrentUpdate, DuplicateKey, ValidationFailed
from dispatchd.store.base import AppendEvent, ClaimView, InsertTask, Op, TouchTask
from dispatchd.store.connector import Body, all_rows, checked, execute, many, one, send
from dispatchd.store.postgres import PostgresStore
from dispatchd.store.sqlstore import SQLStore
from tests.contract.test_store import StoreFactory, insert, make_event, make_task

pytestmark = pytest.mark.asyncio

CREATE = "CREATE TABLE scratch (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
INSERT = "INSERT INTO scratch (id, n) VALUES (:id, :n)"
BUMP = "UPDATE scratch SET n = n + 1 WHERE id = :id"
READ = "SELECT n FROM scratch WHERE id = :id"


def sql(store: SQLStore, text: str) -> str:
    return store.connector.dialect.sql(text)


@pytest.fixture
async def scratch(store: SQLStore) -> SQLStore:
    """The store, with a table of its own to write in."""

    def body() -> Body[None]:
        yield execute(CREATE)

    await store.connector.transaction(body())
    await rows(store, ("kept", 1))
    return store


@pytest.fixture
async def one_connection(scratch: SQLStore) -> AsyncIterator[PostgresStore]:
    """A second store on the scratch database, with one connection: each transaction
    runs on the connection the one before it ran on."""
    store = PostgresStore(scratch.connector.url, pool_size=1)  # type: ignore[attr-defined]
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def rows(store: SQLStore, *values: tuple[str, int]) -> None:
    def body() -> Body[None]:
        yield many(sql(store, INSERT), [{"id": i, "n": n} for i, n in values])

    await store.connector.transaction(body())


async def contents(store: SQLStore) -> dict[str, int]:
    found = await store.connector.fetch_all("SELECT id, n FROM scratch", {})
    return {str(r["id"]): int(r["n"]) for r in found}


class Moved(ConcurrentUpdate):
    """The error a test's checked write fails with."""


async def test_a_checked_write_that_changes_no_row_fails_with_its_error_and_keeps_nothing(
    scratch: SQLStore,
) -> None:
    def body() -> Body[str]:
        yield send(sql(scratch, INSERT), {"id": "before", "n": 1})
        yield checked(sql(scratch, BUMP), {"id": "missing"}, Moved("no such row"))
        yield send(sql(scratch, INSERT), {"id": "after", "n": 1})
        yield checked(sql(scratch, BUMP), {"id": "kept"}, Moved("not this one"))
        return "committed"

    with pytest.raises(Moved, match="no such row"):
        await scratch.connector.transaction(body())
    assert await contents(scratch) == {"kept": 1}


async def test_checked_writes_that_each_change_a_row_commit(scratch: SQLStore) -> None:
    def body() -> Body[str]:
        yield checked(sql(scratch, BUMP), {"id": "kept"}, Moved("first"))
        yield send(sql(scratch, INSERT), {"id": "new", "n": 5})
        yield checked(sql(scratch, BUMP), {"id": "new"}, Moved("second"))
        return "committed"

    assert await scratch.connector.transaction(body()) == "committed"
    assert await contents(scratch) == {"kept": 2, "new": 6}


async def test_a_failed_check_is_raised_before_the_body_reads_a_later_result(
    scratch: SQLStore,
) -> None:
    read: list[Any] = []

    def body() -> Body[None]:
        yield checked(sql(scratch, BUMP), {"id": "missing"}, Moved("no such row"))
        read.append((yield one(sql(scratch, READ), {"id": "kept"})))

    with pytest.raises(Moved):
        await scratch.connector.transaction(body())
    assert read == []


async def test_a_failed_check_is_the_cause_of_a_key_error_behind_it(scratch: SQLStore) -> None:
    """An update that lost a race, then the insert of what it would have added meeting the
    winner's copy: the caller hears of the race, which it retries, not of the key."""

    def body() -> Body[None]:
        yield checked(sql(scratch, BUMP), {"id": "missing"}, Moved("lost the race"))
        yield send(sql(scratch, INSERT), {"id": "kept", "n": 9})
        yield one(sql(scratch, READ), {"id": "kept"})

    with pytest.raises(Moved, match="lost the race"):
        await scratch.connector.transaction(body())
    assert await contents(scratch) == {"kept": 1}


@pytest.mark.parametrize("heard", ["at-commit", "at-read", "in-many"])
async def test_a_key_error_in_a_write_sent_on_fails_the_transaction_and_keeps_nothing(
    scratch: SQLStore, caplog: pytest.LogCaptureFixture, heard: str
) -> None:
    """Whether the error is heard at the commit, when the body next reads a result, or
    inside a run of inserts."""

    def body() -> Body[None]:
        yield send(sql(scratch, INSERT), {"id": "fresh", "n": 1})
        yield send(sql(scratch, INSERT), {"id": "kept", "n": 2})
        if heard == "at-read":
            yield one(sql(scratch, READ), {"id": "fresh"})
        elif heard == "in-many":
            yield many(sql(scratch, INSERT), [{"id": "x", "n": 1}, {"id": "y", "n": 1}])
        yield send(sql(scratch, INSERT), {"id": "later", "n": 3})

    caplog.set_level(logging.WARNING)
    with pytest.raises(DuplicateKey):
        await scratch.connector.transaction(body())
    assert await contents(scratch) == {"kept": 1}
    # The connection ended its transaction cleanly and is used again as usual.
    await rows(scratch, ("next", 1))
    assert await contents(scratch) == {"kept": 1, "next": 1}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


async def test_execute_gives_the_row_count_between_writes_sent_on(scratch: SQLStore) -> None:
    def body() -> Body[int]:
        yield send(sql(scratch, INSERT), {"id": "a", "n": 1})
        yield send(sql(scratch, INSERT), {"id": "b", "n": 1})
        counted: int = yield execute(sql(scratch, "UPDATE scratch SET n = n * 10"))
        yield send(sql(scratch, INSERT), {"id": "c", "n": counted})
        return counted

    assert await scratch.connector.transaction(body()) == 3
    assert await contents(scratch) == {"kept": 10, "a": 10, "b": 10, "c": 3}


async def test_a_commit_whose_stale_write_fails_appends_none_of_its_events(
    store: SQLStore,
) -> None:
    """The store's own write path: a stale write ahead of the events it would log."""
    task = make_task()
    await insert(store, task)
    before = await store.last_event_id()
    with pytest.raises(ConcurrentUpdate):
        await store.commit(
            [TouchTask(task.id, task.version + 5), AppendEvent(make_event("task.updated", task.id))]
        )
    assert await store.last_event_id() == before


# --- PostgreSQL: the commit listener and the pool ----------------------------------------


async def end_backends(store: PostgresStore) -> None:
    """Terminate the server processes of the store's pooled connections, as a database
    restart would, and give their goodbyes time to arrive."""
    with psycopg.connect(store.url, autocommit=True) as admin:
        pids = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
        assert pids
        for (pid,) in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    await asyncio.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_the_commit_listener_reports_every_commit_its_own_after_it_returned(
    make_store: StoreFactory,
) -> None:
    """Another replica's commits and this one's alike; its own only once the committing
    call has returned (and told this process's readers itself)."""
    ours, theirs = make_store(), make_store()
    assert isinstance(ours, PostgresStore) and isinstance(theirs, PostgresStore)
    await ours.open()
    await theirs.open()
    heard: list[int] = []
    listening = asyncio.Event()

    def advanced(last: int) -> None:
        heard.append(last)
        listening.set()

    async def until_heard(event_id: int | None) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while event_id not in heard:
            assert asyncio.get_running_loop().time() < deadline, (event_id, heard)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(ours.connector.watch(advanced))
    try:
        await asyncio.wait_for(listening.wait(), 10)  # the catch-up on connecting
        for _ in range(20):
            task = make_task()
            own = await ours.commit(
                [InsertTask(task), AppendEvent(make_event("task.created", task.id))]
            )
            assert own[-1].id not in heard  # not before the commit returned
            await until_heard(own[-1].id)
        other = make_task()
        foreign = await theirs.commit(
            [InsertTask(other), AppendEvent(make_event("task.created", other.id))]
        )
        await until_heard(foreign[-1].id)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await ours.close()
        await theirs.close()


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_pooled_connection_broken_while_idle_is_replaced_before_use(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection back in the pool for a while is tested before it is handed out, so a
    database restart meanwhile costs the next caller nothing."""
    import dispatchd.store.postgres as postgres

    monkeypatch.setattr(postgres, "IDLE_CHECK_S", 0.05)
    await store.last_event_id()
    await end_backends(store)
    assert await store.last_event_id() >= 0


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_pooled_connection_whose_backend_ended_just_now_is_replaced_before_use(
    store: PostgresStore,
) -> None:
    """Idle for less than the idle check's interval, but its server said goodbye."""
    await store.last_event_id()
    await end_backends(store)
    assert await store.last_event_id() >= 0


# --- PostgreSQL: how a transaction goes to the server ------------------------------------


def spy_on_messages(monkeypatch: pytest.MonkeyPatch, *, raw: bool = False) -> list[str]:
    """The text of each message a transaction sends, as it is sent; unless `raw`, with
    the `PREPARE`s left out and each `EXECUTE` shown as the statement it runs."""
    sent: list[str] = []
    prepared: dict[str, str] = {}
    execute_on_server = psycopg.AsyncClientCursor.execute

    def shown(part: str) -> str | None:
        found = re.match(r"PREPARE (\w+)(?:\([^)]*\))? AS (.*)", part, re.DOTALL)
        if found:
            prepared[found[1]] = found[2]
            return None
        found = re.match(r"EXECUTE (\w+)", part)
        return prepared.get(found[1], part) if found else part

    async def spy(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = str(query)
        if not raw:
            parts = [shown(part) for part in text.split(";\n")]
            text = ";\n".join(part for part in parts if part is not None)
        sent.append(text)
        return await execute_on_server(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncClientCursor, "execute", spy)
    return sent


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_write_transaction_goes_as_one_message_per_answer_it_reads(
    scratch: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes are held until the body reads an answer, then sent with that read; the rest
    goes with the commit. A failed check is found by the server, in the message."""
    sent = spy_on_messages(monkeypatch)

    def body() -> Body[int]:
        yield send(sql(scratch, INSERT), {"id": "a", "n": 1})
        yield checked(sql(scratch, BUMP), {"id": "kept"}, Moved("kept"))
        row = yield one(sql(scratch, READ), {"id": "kept"})
        yield send(sql(scratch, INSERT), {"id": "b", "n": int(row["n"])})
        yield checked(sql(scratch, BUMP), {"id": "b"}, Moved("b"))
        return int(row["n"])

    assert await scratch.connector.transaction(body()) == 2
    assert await contents(scratch) == {"kept": 2, "a": 1, "b": 3}
    assert len(sent) == 2, sent
    first, last = (message.split(";\n") for message in sent)
    assert first[0] == "BEGIN" and first[-1].startswith("SELECT n FROM scratch")
    assert len(first) == 4 and len(last) == 3 and last[-1] == "COMMIT"

    def stale() -> Body[None]:
        yield send(sql(scratch, INSERT), {"id": "c", "n": 1})
        yield checked(sql(scratch, BUMP), {"id": "missing"}, Moved("no such row"))
        yield send(sql(scratch, INSERT), {"id": "d", "n": 1})

    sent.clear()
    with pytest.raises(Moved, match="no such row"):
        await scratch.connector.transaction(stale())
    assert len(sent) == 1 and sent[0].endswith("COMMIT")
    assert await contents(scratch) == {"kept": 2, "a": 1, "b": 3}


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_commit_that_reads_only_its_event_ids_is_one_message(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events' insert is the body's last query: the commit goes with it."""
    sent = spy_on_messages(monkeypatch)
    task = make_task()
    events = await store.commit(
        [InsertTask(task), AppendEvent(make_event("task.created", task.id))]
    )
    assert len(sent) == 1 and sent[0].startswith("BEGIN") and sent[0].endswith("COMMIT")
    assert [e.id for e in await store.read_events(after=0, limit=10)] == [events[0].id]


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_run_of_inserts_is_one_statement_of_every_row(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's tasks (and a dependency named twice, which is kept once) go as one INSERT
    each, parsed once by the server, not one per row (below OVERLAP_ROWS rows)."""
    sent = spy_on_messages(monkeypatch)
    parent = make_task()
    await insert(store, parent)
    children = [
        replace(make_task(), depends_on=(parent.id, parent.id), title=f"child {n}")
        for n in range(20)
    ]
    sent.clear()
    await store.commit(
        [InsertTask(c) for c in children]
        + [AppendEvent(make_event("task.created", c.id)) for c in children]
    )
    assert len(sent) == 1
    statements = sent[0].split(";\n")
    assert sum(s.startswith("INSERT INTO tasks") for s in statements) == 1
    assert sum(s.startswith("INSERT INTO task_deps") for s in statements) == 1
    stored = await store.get_tasks([c.id for c in children])
    assert sorted(t.title for t in stored) == sorted(c.title for c in children)
    count = sql(store, "SELECT count(*) AS n FROM task_deps WHERE parent_id = :id")
    found = await store.connector.fetch_one(count, {"id": parent.id})
    assert found is not None and found["n"] == 20


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_large_run_of_inserts_is_bound_by_the_server_within_the_transaction(
    scratch: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From OVERLAP_ROWS rows a run of inserts goes through executemany, between the
    messages of the same transaction: a failure after it keeps none of its rows."""
    from dispatchd.store.postgres_messages import OVERLAP_ROWS

    sent = spy_on_messages(monkeypatch)
    many_rows = [{"id": f"r{n}", "n": n} for n in range(OVERLAP_ROWS)]

    def body(fail: bool) -> Body[None]:
        yield send(sql(scratch, BUMP), {"id": "kept"})
        yield many(sql(scratch, INSERT), many_rows)
        yield checked(sql(scratch, BUMP), {"id": "missing" if fail else "r0"}, Moved("moved"))

    with pytest.raises(Moved):
        await scratch.connector.transaction(body(fail=True))
    assert await contents(scratch) == {"kept": 1}
    sent.clear()
    await scratch.connector.transaction(body(fail=False))
    found = await contents(scratch)
    assert len(found) == OVERLAP_ROWS + 1 and found["kept"] == 2 and found["r0"] == 1
    assert len(sent) == 2 and sent[0].startswith("BEGIN") and sent[-1].endswith("COMMIT")
    assert not any("INSERT INTO scratch" in message for message in sent)


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_query_after_the_body_said_last_is_refused(scratch: SQLStore) -> None:
    """A body that goes on after its last query (a mistake in the body): the commit went
    with that query, so what came before it stays, and what comes after is never run."""

    def too_long() -> Body[None]:
        yield send(sql(scratch, INSERT), {"id": "before", "n": 1})
        yield one(sql(scratch, READ), {"id": "kept"}, last=True)
        yield send(sql(scratch, INSERT), {"id": "after", "n": 1})

    with pytest.raises(RuntimeError, match="after the body's last"):
        await scratch.connector.transaction(too_long())
    assert await contents(scratch) == {"kept": 1, "before": 1}


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_cancelled_transaction_keeps_nothing_and_leaves_no_connection_in_it(
    scratch: SQLStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that gives up while its transaction runs (a client gone, a timeout): what
    it sent is not kept, and no pooled connection stays inside that transaction (nor is
    handed back to the pool inside it, for the pool to clean up with a warning)."""
    assert isinstance(scratch, PostgresStore)
    caplog.set_level(logging.WARNING)

    def slow() -> Body[None]:
        yield send(sql(scratch, INSERT), {"id": "gone", "n": 1})
        yield one("SELECT pg_sleep(30)")

    running = asyncio.create_task(scratch.connector.transaction(slow()))
    await asyncio.sleep(0.3)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(5):  # every pooled connection in turn
        await rows(scratch, *[(f"n{i}-{_}", i) for i in range(2)])
    found = await contents(scratch)
    assert "gone" not in found and len(found) == 11
    with psycopg.connect(scratch.url, autocommit=True) as admin:
        stuck = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND (state LIKE 'idle in transaction%' OR query LIKE '%pg_sleep(30)%') "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    assert stuck == (0,)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
@pytest.mark.parametrize("fails", ["in-the-body", "on-the-server"])
async def test_a_failed_transaction_is_rolled_back_before_its_connection_goes_back(
    scratch: SQLStore, caplog: pytest.LogCaptureFixture, fails: str
) -> None:
    """The body raising its own error after writes were sent, or a write failing on the
    server: the connection goes back to the pool out of the transaction."""
    caplog.set_level(logging.WARNING)

    def body() -> Body[None]:
        yield send(sql(scratch, INSERT), {"id": "gone", "n": 1})
        yield one(sql(scratch, READ), {"id": "kept"})
        if fails == "in-the-body":
            raise Moved("the body gives up")
        yield one("SELECT 1 / 0 AS n")

    with pytest.raises(Moved if fails == "in-the-body" else ValidationFailed):
        await scratch.connector.transaction(body())
    await asyncio.sleep(0.2)  # the pool takes a connection back in a task of its own
    assert await contents(scratch) == {"kept": 1}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 2**40),
        ("title", "nul \x00 inside"),
        ("context", {"private": "nul \x00 inside"}),
    ],
)
async def test_a_value_the_database_refuses_is_named_without_the_statement(
    store: SQLStore, field: str, value: Any
) -> None:
    """Refused on the server (an integer out of range, a NUL escaped in JSON) or before it
    is sent (a NUL in text): the error gives the reason, not the statement with the values
    bound in it."""
    task = make_task(title="a title that stays private")
    bad = replace(task, **{field: value})
    with pytest.raises(ValidationFailed) as refused:
        await store.commit([InsertTask(bad), AppendEvent(make_event("task.created", task.id))])
    message = str(refused.value)
    assert message.startswith("value not storable: ")
    assert "INSERT" not in message and "private" not in message, message
    assert await store.get_task(task.id) is None


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_write_is_prepared_once_per_connection_then_executed(
    one_connection: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server parses and plans a write once per connection: the first transaction
    that sends it prepares it, the next ones only execute it. Reads of several rows (the
    queue among them) are planned for their values each time, and statements `PREPARE`
    does not take (`SET`) go as they are."""
    store = one_connection
    sent = spy_on_messages(monkeypatch, raw=True)

    def body() -> Body[list[Any]]:
        yield send("SET LOCAL enable_sort = off")
        yield checked(sql(store, BUMP), {"id": "kept"}, Moved("kept"))
        return (yield all_rows(sql(store, READ), {"id": "kept"}, last=True))

    assert await store.connector.transaction(body()) == [{"n": 2}]
    assert await store.connector.transaction(body()) == [{"n": 3}]
    first, second = (message.split(";\n") for message in sent)
    assert [p.split()[0] for p in first] == [
        "PREPARE",
        "BEGIN",
        "SET",
        "EXECUTE",
        "SELECT",
        "COMMIT",
    ], first
    assert [p.split()[0] for p in second] == ["BEGIN", "SET", "EXECUTE", "SELECT", "COMMIT"]
    assert first[3] == second[2] and first[3].endswith("('kept', '0')")
    found = await store.connector.fetch_all(
        "SELECT statement FROM pg_prepared_statements WHERE name LIKE 'dsp%%'", {}
    )
    assert len(found) == 1 and "UPDATE scratch" in found[0]["statement"]


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_failed_transaction_that_prepared_leaves_the_connection_knowing_its_statements(
    one_connection: PostgresStore,
) -> None:
    """`PREPARE` outlives the transaction it was sent in: after one that failed, the
    connection is asked what it has prepared, so that a statement is neither prepared
    twice (an error) nor executed unprepared."""
    store = one_connection

    def stale() -> Body[None]:
        yield send(sql(store, INSERT), {"id": "x", "n": 1})
        yield checked(sql(store, BUMP), {"id": "missing"}, Moved("no such row"))
        yield one("SELECT 1 AS one", last=True)

    with pytest.raises(Moved):
        await store.connector.transaction(stale())

    def fine() -> Body[None]:
        yield send(sql(store, INSERT), {"id": "y", "n": 1})
        yield checked(sql(store, BUMP), {"id": "y"}, Moved("y"))

    await store.connector.transaction(fine())
    assert await contents(store) == {"kept": 1, "y": 2}


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_statements_psycopg_drops_after_a_rollback_are_prepared_again(
    one_connection: PostgresStore,
) -> None:
    """psycopg prepares the reads it runs often, and once it has, a rollback makes it
    drop every prepared statement of the connection (ours among them): the next
    transaction prepares what it executes again."""
    store = one_connection

    def bump(row: str) -> Body[None]:
        yield checked(sql(store, BUMP), {"id": row}, Moved(row))

    await store.connector.transaction(bump("kept"))
    for _ in range(6):  # psycopg's own threshold is 5
        await store.connector.fetch_all(sql(store, READ), {"id": "kept"})
    with pytest.raises(Moved):
        await store.connector.transaction(bump("missing"))
    names = await store.connector.fetch_all("SELECT name FROM pg_prepared_statements", {})
    assert names == []  # dropped with the rollback
    await store.connector.transaction(bump("kept"))
    assert await contents(store) == {"kept": 3}


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_transaction_still_runs_after_a_migration_changed_its_tables_columns(
    scratch: SQLStore,
    one_connection: PostgresStore,
) -> None:
    """A replica keeps running while another one migrates the database: its prepared
    writes still run, and its reads (never prepared) return the rows' new shape."""
    store = one_connection

    def body() -> Body[Any]:
        yield checked(sql(store, BUMP), {"id": "kept"}, Moved("kept"))
        yield send(sql(store, INSERT), {"id": f"r{len(seen)}", "n": 0})
        return (yield one("SELECT * FROM scratch WHERE id = 'kept'", last=True))

    seen: list[Any] = []
    seen.append(await store.connector.transaction(body()))
    await scratch.connector.execute("ALTER TABLE scratch ADD COLUMN extra INTEGER", {})
    seen.append(await store.connector.transaction(body()))
    assert seen == [{"id": "kept", "n": 2}, {"id": "kept", "n": 3, "extra": None}]


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_a_claim_reads_its_agent_and_tasks_in_one_message_and_commits_in_another(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's row, the tasks assigned to it and the queue it may take from go out
    together, the agent's lock first; the claim's writes go with the commit."""
    from tests.contract.test_store_engine import add_agent, query

    await add_agent(store)
    task = make_task()
    await store.commit([InsertTask(task)])
    sent = spy_on_messages(monkeypatch)

    def plan(view: ClaimView) -> list[Op]:
        assert view.agent is not None and [t.id for t in view.candidates] == [task.id]
        return [TouchTask(task.id, task.version)]

    assert await store.claim(query(), plan) == []
    assert len(sent) == 2, sent
    reads = sent[0].split(";\n")
    assert reads[0] == "BEGIN" and "FROM agents" in reads[1] and "FOR UPDATE" in reads[1]
    assert "status = 'assigned'" in reads[2] and reads[3].startswith("SET LOCAL")
    assert "SKIP LOCKED" in reads[4] and len(reads) == 5
    writes = sent[1].split(";\n")
    assert "UPDATE tasks" in writes[0] and writes[1:] == ["COMMIT"], writes
