"""PostgreSQL: the values a write transaction binds on the client are the values stored.

The common values are quoted by the store itself (`postgres_messages._Held.quote`),
character for character as psycopg's adapters quote them; the rest by psycopg. An array
is written as `ARRAY[...]`, which the server must read as the same array.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dispatchd.store import postgres_messages
from dispatchd.store.base import AppendEvent, InsertTask
from dispatchd.store.postgres_messages import _Held, _Prepared
from dispatchd.store.sqlstore import SQLStore
from tests.contract.test_store import full_task, make_event, make_task

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("engine", ["postgres"], indirect=True)]


class Colour(StrEnum):
    RED = "red"


AT = datetime(2026, 12, 7, 15, 14, 28, 120274, tzinfo=UTC)
SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    7,
    -3,
    2**40,
    -(2**63),
    2**70,
    1.5,
    -0.0,
    float("nan"),
    "",
    "plain",
    "it's 'quoted'",
    "back\\slash",
    "tab\there, newline\n, semicolon; -- comment",
    "NULL",
    "é and 🚀",
    Colour.RED,
    AT,
    AT.replace(microsecond=0),
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 1, 1),
    Jsonb({"a": "it's", "b": [1, None, 2.5], "c": {"d": True}}),
    Jsonb({"path": "C:\\temp", "quote": '"'}),
    Jsonb({"emoji": "🚀"}),
    Jsonb(None),
    Jsonb("text"),
    Jsonb([]),
]
# (an array, the type its column has)
ARRAYS: list[tuple[list[Any], str]] = [
    (["task.created", "task.assigned"], "text"),
    (["a", None, "it's", 'q"uote', "back\\slash", "{brace}", "with space", "NULL", ""], "text"),
    ([None, "x"], "text"),
    ([None, None], "text"),
    ([None], "jsonb"),
    ([None, None], "timestamptz"),
    ([AT, None, AT.replace(microsecond=0)], "timestamptz"),
    ([Jsonb({"attempt": 1, "model": None}), Jsonb({"s": 'it\'s \\ "x"'}), None], "jsonb"),
    ([1, -2, 2**40], "bigint"),
    ([], "text"),
]


@pytest.fixture
async def held(store: SQLStore) -> AsyncIterator[_Held]:
    url = store.connector.url  # type: ignore[attr-defined]
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)
    try:
        yield _Held(psycopg.AsyncClientCursor(conn), _Prepared())
    finally:
        await conn.close()


async def value_of(held: _Held, literal: str, cast: str | None = None) -> Any:
    expr = literal if cast is None else f"CAST({literal} AS {cast})"
    cur = await held.cur.connection.execute(f"SELECT {expr} AS v, pg_typeof({expr})::text AS t")
    row = await cur.fetchone()
    assert row is not None
    return row["v"], row["t"]


@pytest.mark.parametrize("value", [*SCALARS, [None], [None, None]], ids=repr)
async def test_a_value_is_quoted_as_psycopg_quotes_it(held: _Held, value: Any) -> None:
    assert held.quote(value) == bytes(held.literal(value)).decode()


@pytest.mark.parametrize(("array", "kind"), ARRAYS, ids=repr)
async def test_an_array_is_read_back_as_the_array_psycopg_would_send(
    held: _Held, array: list[Any], kind: str
) -> None:
    ours = held.quote(array)
    theirs = bytes(held.literal(array)).decode()
    cast = f"{kind}[]"
    assert await value_of(held, ours, cast) == await value_of(held, theirs, cast)
    cur = await held.cur.connection.execute(
        f"SELECT CAST({ours} AS {cast}) IS NOT DISTINCT FROM CAST({theirs} AS {cast}) AS same"
    )
    assert (await cur.fetchone()) == {"same": True}


async def test_a_tasks_row_and_its_events_are_quoted_without_psycopg(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values of a task's insert and of its events' arrays are all of the common kinds:
    none of them goes to psycopg's adapters, and what is stored is what was written."""
    by_psycopg: list[Any] = []
    quote = _Held.quote

    def counted(self: _Held, value: Any) -> str:
        literal = self.literal

        def spy(v: Any) -> Any:
            by_psycopg.append(v)
            return literal(v)

        self.literal = spy  # type: ignore[method-assign]
        try:
            return quote(self, value)
        finally:
            self.literal = literal  # type: ignore[method-assign]

    monkeypatch.setattr(postgres_messages._Held, "quote", counted)
    task = make_task(title="it's a title", context={"repo": "x/y", "n": 3})
    events = await store.commit(
        [InsertTask(task), AppendEvent(make_event("task.created", task.id, k="v"))]
    )
    assert by_psycopg == []
    assert await store.get_task(task.id) == task
    stored = await store.read_events(after=0, limit=10)
    assert [(e.id, e.type, e.task_id, e.data) for e in stored] == [
        (events[0].id, "task.created", task.id, {"k": "v"})
    ]


async def test_a_task_with_every_field_set_is_stored_as_written(store: SQLStore) -> None:
    task = full_task()
    await store.commit([InsertTask(task)])
    assert await store.get_task(task.id) == task
