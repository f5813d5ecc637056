"""The seam between the one SQL store and a database driver.

A transaction body is written once, as a generator: it yields `Query` values and receives
each one's result (a row count, a row, a list of rows), and returns its own. It does no I/O,
so each connector drives it as its driver wants: SQLite runs the whole body in one go on
its one writer connection, PostgreSQL holds its writes and sends them in one message with
the next read, the commit with the last (`postgres_messages`). A body says which writes it
needs no answer from (`send`: their errors still fail the transaction) and which must
change exactly one row (`checked`: the connector raises the body's error otherwise), so
that PostgreSQL can send those on without waiting and a transaction costs a round trip
per result the body reads, plus the commit's. Besides
transactions a connector runs single statements (`execute`, `fetch_one`, `fetch_all`), and
provides what only its database has (`watch`, `lease`).

Queries are written once with `:name` placeholders and `{fragment}` slots that a `Dialect`
fills in (row locks, JSON tests, the index pin), and translated to the driver's
placeholder style once, when they are built.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol, TypeVar

from dispatchd.errors import DuplicateKey
from dispatchd.jobs import JobStatus
from dispatchd.store.base import Lease
from dispatchd.store.rows import Codec

T = TypeVar("T")
Row = Mapping[str, Any]
Kind = Literal["execute", "send", "checked", "one", "all", "many", "ids", "script", "together"]


@dataclass(frozen=True, slots=True)
class Query:
    """One statement of a transaction body. Its result, sent back into the body: the row
    count (`execute`), the first row or None (`one`), every row (`all`), the ids the rows
    were given (`ids`), each one's result (`together`: several reads, its `params`),
    nothing (`send`, `checked`, `many`, and `script`: several statements of a migration,
    without parameters)."""

    kind: Kind
    sql: str
    params: Any = None
    # `checked`: what the transaction fails with when the statement changes no row.
    fail: Exception | None = None
    # The body's last query (it returns once it has the answer, and nothing after it may
    # fail): the connector may send the commit with it.
    last: bool = False


def execute(sql: str, params: Mapping[str, Any] | None = None) -> Query:
    return Query("execute", sql, params or {})


def send(sql: str, params: Mapping[str, Any] | None = None) -> Query:
    """A write whose result the body does not read. The connector may send it on without
    waiting for the database's answer; an error in it still fails the transaction."""
    return Query("send", sql, params or {})


def checked(sql: str, params: Mapping[str, Any], fail: Exception) -> Query:
    """A write that must change exactly one row (an update naming the version it was
    computed from, a slot taken under a limit); otherwise the transaction fails with
    `fail`. The connector may check later, but before it hands the body any later result
    it reads (a row count, rows, ids) and before it commits."""
    return Query("checked", sql, params, fail)


def check(query: Query, rowcount: int) -> None:
    """Raise a `checked` query's error if it did not change exactly one row."""
    if rowcount != 1 and query.fail is not None:
        raise query.fail


def one(sql: str, params: Mapping[str, Any] | None = None, *, last: bool = False) -> Query:
    return Query("one", sql, params or {}, last=last)


def all_rows(sql: str, params: Mapping[str, Any] | None = None, *, last: bool = False) -> Query:
    return Query("all", sql, params or {}, last=last)


def together(*queries: Query) -> Query:
    """Reads a body needs at the same point, with writes between them (`send`), in this
    order; the result is each one's result (None for a write). The connector may send
    them in one message: one round trip for all of them."""
    assert all(q.kind in ("one", "all", "send") for q in queries), "reads and sends only"
    return Query("together", "", queries)


def many(sql: str, params: Sequence[Mapping[str, Any]], fail: Exception | None = None) -> Query:
    """A write run once per parameter set, in one call to the driver (SQLite's
    executemany; on PostgreSQL one bound statement each, in the message); like `send`, the
    body reads no result. With `fail`, each run must change exactly one row, as a
    `checked` write's: otherwise the transaction fails with `fail`."""
    return Query("many", sql, params, fail)


def insert_ids(sql: str, params: Sequence[Mapping[str, Any]]) -> Query:
    """`sql`, an INSERT without RETURNING into a table whose integer `id` the database
    assigns, run once per parameter set in one call to the driver; the result is the ids
    of the rows, in the order of `params`. (SQLite, whose one writer inserts them in a
    row, reads the last id; PostgreSQL returns each one.)"""
    return Query("ids", sql, params)


# A transaction body: yields queries, receives their results, returns its value.
Body = Generator[Query, Any, T]


class Connector(Protocol):
    dialect: Dialect

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run one writing statement in a transaction of its own; its row count."""
        ...

    async def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Row]: ...

    async def transaction(self, body: Body[T], *, write: bool = True) -> T:
        """Run `body` on one connection: in a write transaction, or (`write` False) as
        reads beside the writers; a read body may first send a setting for its reads
        (`SET LOCAL`), which then holds for them alone. An exception from the body or a
        query rolls it back."""
        ...

    async def watch(
        self, advanced: Callable[[int], None], job: JobStatus | None = None
    ) -> None: ...

    def lease(self, name: str, *, check_s: float) -> Lease: ...


# `:name`, but neither `::type` casts nor a colon inside a word.
PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


# eq=False: compared and hashed as the one object each dialect is (the query cache's key).
@dataclass(frozen=True, eq=False)
class Dialect:
    """What differs between the SQL of two databases, beyond the driver."""

    name: str
    codec: Codec
    # Text put in the `{slot}`s of the queries.
    fragments: Mapping[str, str]
    # `:name` becomes the driver's placeholder (None: the driver takes `:name` itself).
    placeholder: str | None = None
    # Tests of a JSON array column holding `param` and of a JSON object having it as a key.
    json_has: Callable[[str, str], str] = field(default=lambda col, p: "")
    json_has_key: Callable[[str, str], str] = field(default=lambda col, p: "")
    # A list bound as one value (`:ids`, tested by the `{in_ids}` slot).
    dump_list: Callable[[list[Any]], Any] = field(default=list)

    def sql(self, text: str) -> str:
        return _translate(self, text)


@lru_cache(maxsize=1024)
def _translate(dialect: Dialect, text: str) -> str:
    text = text.format_map(dialect.fragments) if "{" in text else text
    if dialect.placeholder is None:
        return text
    pattern = dialect.placeholder
    return PLACEHOLDER.sub(lambda m: pattern % m.group(1), text.replace("%", "%%"))


def duplicate_key(table: str, constraint: str) -> DuplicateKey:
    """The one translation of a unique-key violation, from the driver's words for it
    (PostgreSQL's constraint name, SQLite's list of the columns): which key met a copy."""
    if "idempotency" in constraint:
        key = "idempotency_key"
    elif "token_hash" in constraint:
        key = "token_hash"
    else:
        key = "id"
    singular = table.removesuffix("s") or "row"
    return DuplicateKey(
        f"{singular} {key.replace('_', ' ')} already exists", field=key, constraint=constraint
    )


def statements(script: str) -> list[str]:
    """The statements of a migration script, one by one (ours put no `;` inside literals
    other than a function's `$$`-quoted body, and comments take whole lines)."""
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    found: list[str] = []
    pieces = code.split("$$")
    current = ""
    for n, piece in enumerate(pieces):
        if n % 2:  # inside $$ ... $$: kept whole
            current += f"$${piece}$$"
            continue
        first, *rest = piece.split(";")
        current += first
        for part in rest:
            found.append(current)
            current = part
    found.append(current)
    return [part.strip() for part in found if part.strip()]


async def drive_async(body: Body[T], run: Callable[[Query], Awaitable[Any]]) -> T:
    """Run `body`, each query through the coroutine `run`."""
    result: Any = None
    try:
        while True:
            try:
                query = body.send(result)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            result = await run(query)
    finally:
        body.close()


def drive(body: Body[T], run: Callable[[Query], Any]) -> T:
    """Run `body` synchronously, each query through `run`."""
    result: Any = None
    try:
        while True:
            result = run(body.send(result))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        body.close()
