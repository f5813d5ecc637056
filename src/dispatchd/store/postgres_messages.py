"""How a PostgreSQL transaction body goes to the server: in as few messages as its reads
allow.

The statements a body yields are bound on the client (psycopg's client-side cursor quotes
each value) and held until the body needs an answer from one: a row count, rows or ids.
Then everything held goes out as one message, `BEGIN` in front of the first, and the
server runs the statements in order, stopping at the first error (the simple-query
protocol). The commit goes with the last of them: with the body's last read when the body
says it is the last (`Query.last`), else alone with what follows that read. A
transaction thus costs one round trip per answer its body reads (a commit that reads only
its events' ids: one in all), and its statements cross the driver as one
string instead of one by one: a statement sent on its own through psycopg costs the
server process about 0.1 ms of CPU, bound into a string about 0.03 ms. Values are quoted
as psycopg's adapters quote them (`Transformer.as_literal`, as its client-side cursor
does), the common kinds by `_Held.quote` itself at a fraction of the cost; the rows of a
run of inserts (`many`) go as one multi-row INSERT, or, from `OVERLAP_ROWS` rows, through
psycopg's `executemany`, which lets the server insert while the client binds (a 100-task
batch: 20 ms instead of 29 to 32).

A write, and a read of one row that names its columns, is prepared once per connection
(`PREPARE`, named by a hash of its text and its parameters' types) and then sent as
`EXECUTE name(<values>)`:
the server parses only the values and reuses its plan, where parsing and planning every
statement sent as text took half of its CPU in a drain. The `PREPARE`s go first in the
message that first needs them, so they have run (and outlive the transaction) whatever
becomes of it. After a transaction fails, or runs a script, the connection is asked
which it still has: psycopg drops every prepared statement of a connection after a
rollback once it has prepared one of its own. Reads stay text (see `_Held.hold`).

A `checked` write is checked by the server, in the statement itself:

    WITH done AS (<write> RETURNING 1) SELECT dispatchd_expect(count(*) = 1, <n>) FROM done

`dispatchd_expect` (migration 0014) raises an error of the code `EXPECT_FAILED` naming
the statement (in its detail) when it did not change exactly one row. The transaction
aborts there: the statements behind it, the commit among them, are not run, and the
body's error for that write is raised. A later write that would have failed for the
same reason (the insert of a key the winner of a race has just inserted) never runs, so
the cause is the error raised.

Bound on the client, the statements carry their values: when one fails, PostgreSQL's log
shows the message with them (`log_min_error_statement`, `error` by default), as it does
for any client that binds its own values. docs/security.md says how to keep them out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.adapt import Transformer
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from dispatchd.store.connector import Body, Query, drive_async, statements

T = TypeVar("T")
Connection = AsyncConnection[DictRow]

# The SQLSTATE `dispatchd_expect` raises; its detail is the check's number.
EXPECT_FAILED = "DSP01"
# A run of inserts of this many rows or more goes through executemany (`_answer`).
OVERLAP_ROWS = 50
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
_VALUES = re.compile(r"\sVALUES\s*\(", re.IGNORECASE)
_PREPARABLE = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|VALUES)\b", re.IGNORECASE)
_STAR = re.compile(r"\b(SELECT|RETURNING)\s+(DISTINCT\s+)?(\w+\.)?\*", re.IGNORECASE)


@dataclass(slots=True)
class _Prepared:
    """The statements prepared on one connection (`PREPARE` outlives transactions)."""

    names: set[str] = field(default_factory=set)
    # Which of them the server still has is not known (a transaction failed, or ran a
    # script): it is asked before the connection's next transaction.
    unsure: bool = False


_PREPARED: WeakKeyDictionary[Connection, _Prepared] = WeakKeyDictionary()


class _Held:
    """The statements held for the next message, and the checks among them."""

    def __init__(self, cur: AsyncClientCursor[DictRow], prepared: _Prepared) -> None:
        self.cur = cur
        self.literal = Transformer.from_context(cur).as_literal
        self.parts: list[str] = []
        self.begun = False
        # The commit went with the body's last read.
        self.ended = False
        # The errors of the transaction's `checked` writes, by the number their check raises.
        self.checks: dict[str, Exception] = {}
        self.prepared = prepared
        # The `PREPARE`s the next message starts with: (name, statement).
        self.preparing: dict[str, str] = {}
        self.scripted = False

    def hold(self, query: Query) -> int:
        """Hold the query's statements for the next message; how many there are."""
        kind = query.kind
        if kind == "script":
            # Nothing is prepared from here on: psycopg may drop every prepared
            # statement after a DROP or an ALTER.
            self.scripted = True
            found = statements(query.sql)
            self.parts.extend(found)
            return len(found)
        if kind == "many" and query.fail is not None:
            # Each run checked on its own, as a `checked` write is.
            for params in query.params or ():
                self.hold(Query("checked", query.sql, params, query.fail))
            return len(query.params or ())
        if kind in ("many", "ids"):
            rows: Sequence[Any] = query.params or ()
            split = _values(query.sql) if kind == "many" else None
            if split is not None and len(rows) > 1:
                # One INSERT of every row, parsed and planned once by the server.
                head, row, tail = split
                values = ", ".join(self.bind(row, params) for params in rows)
                self.parts.append(f"{head}{values}{tail}")
                return 1
            sql = query.sql + " RETURNING id" if kind == "ids" else query.sql
            self.parts.extend(self.execute(sql, params) for params in rows)
            return len(rows)
        params = query.params or {}
        if kind == "checked" and query.fail is not None:
            label = str(len(self.checks))
            self.checks[label] = query.fail
            self.parts.append(self.execute(_checked(query.sql), {**params, _LABEL: label}))
        elif kind == "all":
            # Reads of several rows stay text, planned for their values (the queue's read).
            self.parts.append(self.bind(query.sql, params))
        else:
            self.parts.append(self.execute(query.sql, params))
        return 1

    def execute(self, sql: str, params: Mapping[str, Any]) -> str:
        """`EXECUTE` of `sql` prepared on this connection for the types of `params`,
        with their values as literals; its `PREPARE` goes first in the next message when
        the connection has not prepared it yet. The server then parses only the values,
        and plans the statement once (a generic plan, after its first five runs)."""
        if self.scripted or not _preparable(sql):
            return self.bind(sql, params)
        _, names = _template(sql)
        order = _order(names)
        values = [params[name] for name in order]
        types = tuple(_type_of(value) for value in values)
        name, prepare = _prepare(sql, types)
        known = self.prepared.names
        if name not in known and name not in self.preparing:
            if len(known) + len(self.preparing) >= MAX_PREPARED:
                return self.bind(sql, params)
            self.preparing[name] = prepare
        if not values:
            return f"EXECUTE {name}"
        return f"EXECUTE {name}({', '.join(self.quote(value) for value in values)})"

    def bind(self, sql: str, params: Mapping[str, Any]) -> str:
        """`sql` with each `%(name)s` replaced by its value quoted as a literal (what
        psycopg's client-side cursor does, from a template made once per statement)."""
        texts, names = _template(sql)
        out = [texts[0]]
        for name, text in zip(names, texts[1:], strict=True):
            out.append(self.quote(params[name]))
            out.append(text)
        return "".join(out)

    def quote(self, value: Any) -> str:
        """`value` as a literal. The values rows mostly hold (text, integers, UTC times,
        JSON, booleans, NULL) are written here, character for character as psycopg's
        adapters write them (`as_literal`) at a fraction of the cost; the rest by psycopg.
        An array of such values is `ARRAY[...]` of their literals, typed by them (psycopg
        writes an array literal, `'{...}'`, which costs more to build than the rest of a
        commit's events)."""
        fast = _QUOTE.get(type(value))
        if fast is not None:
            text = fast(value)
            if text is not None:
                return text
        elif type(value) is list and value and not any(type(item) is list for item in value):
            items = [self.quote(item) for item in value]
            if any(item != "NULL" for item in items):
                return f"ARRAY[{', '.join(items)}]"
            return f"'{{{','.join(items)}}}'"  # NULLs alone: no type to give ARRAY[...]
        return bytes(self.literal(value)).decode()

    async def send(self, *, then: str | None = None) -> None:
        """Send what is held (and `then`, a statement to close the message with) as one
        message; the cursor is left at the first held statement's result."""
        parts = self.parts
        if then is not None:
            parts.append(then)
        # The PREPAREs first: run before anything that may fail, they are then known to
        # be kept whatever becomes of the transaction.
        head = list(self.preparing.values())
        if not self.begun:
            head.append("BEGIN")
        self.parts = []
        if not parts and not head:
            return
        preparing, self.preparing = self.preparing, {}
        try:
            await self.cur.execute(";\n".join([*head, *parts]))
        except psycopg.Error as exc:
            failed = self.checks.get(exc.diag.message_detail or "")
            if exc.sqlstate == EXPECT_FAILED and failed is not None:
                raise failed from exc
            raise
        self.prepared.names.update(preparing)
        self.begun = True
        self.skip(len(head))  # past the PREPAREs' and BEGIN's results

    def skip(self, count: int) -> None:
        for _ in range(count):
            self.cur.nextset()


def _quote_text(value: str) -> str | None:
    # psycopg (libpq's PQescapeLiteral) writes a backslash in an E'' string, refuses NUL
    # and encodes to the connection's encoding: those, and anything not ASCII, go to it.
    if not value.isascii() or "\\" in value or "\x00" in value:
        return None
    return "'" + value.replace("'", "''") + "'"


def _quote_int(value: int) -> str:
    return str(value) if value >= 0 else f" {value}"


def _quote_time(value: datetime) -> str | None:
    global _last_time
    # A transaction quotes the same moment many times (its tasks', attempts' and events'
    # times): the last one is remembered. One tuple, swapped whole.
    last = _last_time
    if last[0] is value:
        return last[1]
    if value.tzinfo is not UTC:
        return None
    text = f"'{value}'::timestamptz"
    _last_time = (value, text)
    return text


_last_time: tuple[datetime | None, str] = (None, "")


def _quote_json(value: Jsonb) -> str | None:
    if value.dumps is not None:
        return None
    text = _quote_text(json.dumps(value.obj))
    return None if text is None else text + "::jsonb"


_QUOTE: dict[type, Callable[[Any], str | None]] = {
    type(None): lambda _: "NULL",
    bool: lambda value: "true" if value else "false",
    int: _quote_int,
    str: _quote_text,
    datetime: _quote_time,
    Jsonb: _quote_json,
}


# The parameter a checked write's label is bound to (see `_checked`).
_LABEL = "dispatchd_check"
# Statements prepared on one connection at most; beyond, statements are sent as text.
MAX_PREPARED = 1000
_PREPARED_NAMES = "SELECT name FROM pg_prepared_statements WHERE name LIKE 'dsp\\_%'"


@lru_cache(maxsize=512)
def _preparable(sql: str) -> bool:
    """Whether the statement is prepared: one `PREPARE` takes (not a `SET`, a `LISTEN`,
    DDL...) whose rows' shape cannot change under it. A prepared `SELECT *` would fail
    once a migration changed its table's columns ("cached plan must not change result
    type") while this replica runs on."""
    return _PREPARABLE.match(sql) is not None and _STAR.search(sql) is None


@lru_cache(maxsize=256)
def _checked(sql: str) -> str:
    return (
        f"WITH done AS ({sql.rstrip().rstrip(';')}\nRETURNING 1) "
        f"SELECT dispatchd_expect(count(*) = 1, %({_LABEL})s) FROM done"
    )


@lru_cache(maxsize=512)
def _order(names: tuple[str, ...]) -> tuple[str, ...]:
    """The parameters of a statement, each once, in the order they first appear."""
    return tuple(dict.fromkeys(names))


@lru_cache(maxsize=1024)
def _prepare(sql: str, types: tuple[str, ...]) -> tuple[str, str]:
    """The name under which `sql`, its parameters of `types`, is prepared, and the
    `PREPARE` statement (`$n` in place of each parameter; a type `unknown` is inferred by
    the server from where the parameter stands, as for a value psycopg sends untyped)."""
    texts, names = _template(sql)
    number = {name: n for n, name in enumerate(_order(names), start=1)}
    body = [texts[0]]
    for name, text in zip(names, texts[1:], strict=True):
        body.append(f"${number[name]}")
        body.append(text)
    statement = "".join(body)
    digest = hashlib.blake2b(f"{statement}\0{types}".encode(), digest_size=8).hexdigest()
    name = f"dsp_{digest}"
    declared = f"({', '.join(types)})" if types else ""
    return name, f"PREPARE {name}{declared} AS {statement}"


def _int_type(value: int) -> str:
    # As psycopg types an integer it sends: the smallest type that holds it.
    for bits, name in ((15, "smallint"), (31, "integer"), (63, "bigint")):
        if -(2**bits) <= value < 2**bits:
            return name
    return "numeric"


def _type_of(value: Any) -> str:
    """The type a parameter is prepared with for `value`, as psycopg would send it."""
    kind = type(value)
    if kind is bool:
        return "boolean"
    if kind is int:
        return _int_type(value)
    if kind is float:
        return "double precision"
    if kind is datetime:
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    if kind is Jsonb:
        return "jsonb"
    if kind is list:
        items = {_type_of(item) for item in value if item is not None}
        if items == {"unknown"} and all(type(i) is str for i in value if i is not None):
            return "text[]"
        if len(items) == 1 and "unknown" not in items and "[" not in next(iter(items)):
            return f"{next(iter(items))}[]"
    return "unknown"


@lru_cache(maxsize=512)
def _template(sql: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The text around each `%(name)s` of `sql` (its `%%` undoubled), and the names."""
    texts: list[str] = []
    names: list[str] = []
    text: list[str] = []
    at = 0
    for found in _PLACEHOLDER.finditer(sql):
        text.append(sql[at : found.start()])
        at = found.end()
        if found.group(1) is None:  # %%
            text.append("%")
            continue
        texts.append("".join(text))
        names.append(found.group(1))
        text = []
    text.append(sql[at:])
    texts.append("".join(text))
    return tuple(texts), tuple(names)


@lru_cache(maxsize=64)
def _values(sql: str) -> tuple[str, str, str] | None:
    """An `INSERT ... VALUES (<row>) [<tail>]` as its head, its row and its tail, so that
    several rows go in one statement; None for any other statement."""
    found = _VALUES.search(sql)
    if not sql.lstrip().upper().startswith("INSERT") or found is None:
        return None
    start = found.end() - 1
    depth = 0
    for end in range(start, len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[end], 0)
        if depth == 0:
            # Head and tail are sent as they are, not bound: their `%` undoubled.
            head, tail = sql[:start], sql[end + 1 :].rstrip().rstrip(";")
            return head.replace("%%", "%"), sql[start : end + 1], tail.replace("%%", "%")
    return None


async def drive(conn: Connection, body: Body[T]) -> T:
    """Run `body` in one transaction on `conn`, a pooled connection in autocommit mode:
    begun and committed here; on an error the pool's connection context rolls it back
    (or, a query still running, replaces the connection)."""
    prepared = _PREPARED.get(conn)
    if prepared is None:
        prepared = _PREPARED[conn] = _Prepared()
    if prepared.unsure:
        # Outside any transaction (the pool hands out idle connections).
        cur = await conn.execute(_PREPARED_NAMES)
        prepared.names = {str(row["name"]) for row in await cur.fetchall()}
        prepared.unsure = False
    held = _Held(AsyncClientCursor(conn), prepared)

    async def answer(query: Query) -> Any:
        if held.ended:
            raise RuntimeError(f"a query after the body's last: {query.sql[:80]}")
        return await _answer(held, query)

    try:
        value = await drive_async(body, answer)
        if not held.ended and (held.begun or held.parts):
            await held.send(then="COMMIT")
    except BaseException:
        # The pool rolls the transaction back, and psycopg, when it has prepared
        # statements of its own on the connection, then drops every one (ours too).
        prepared.unsure = True
        raise
    if held.scripted:
        prepared.unsure = True  # a DROP or an ALTER: the same
    return value


async def _answer(held: _Held, query: Query) -> Any:
    """Hold `query`, or when the body waits for its answer, send it with what is held
    and return the answer."""
    kind = query.kind
    if kind == "many" and query.fail is None and len(query.params or ()) >= OVERLAP_ROWS:
        # Bound by the server and sent row by row (psycopg's executemany), so that the
        # server inserts while the next rows are bound: a round trip more, but a large
        # batch's wall time is then the longer of the two, not their sum.
        await held.send()
        async with held.cur.connection.cursor() as cur:
            await cur.executemany(query.sql, query.params)
        return None
    if kind in ("send", "checked", "many", "script"):
        held.hold(query)
        return None
    if kind in ("one", "all", "together"):
        reads = query.params if kind == "together" else (query,)
        found = await _reads(held, reads, last=query.last)
        return found if kind == "together" else found[0]
    before = len(held.parts)
    count = held.hold(query)
    if kind == "ids" and not count:
        return []
    held.ended = query.last
    await held.send(then="COMMIT" if query.last else None)
    cur = held.cur
    held.skip(before)
    if kind == "execute":
        return cur.rowcount
    ids: list[int] = []
    for n in range(count):
        if n:
            cur.nextset()
        row = await cur.fetchone()
        assert row is not None  # RETURNING gives one row per insert
        ids.append(int(row["id"]))
    return ids


async def _reads(held: _Held, queries: Sequence[Query], *, last: bool) -> list[Any]:
    """Reads (and writes between them) sent in one message with what is held, the commit
    too when they are the body's `last`; each one's result."""
    at: list[int | None] = []
    for query in queries:
        at.append(None if query.kind == "send" else len(held.parts))
        held.hold(query)
    held.ended = last
    await held.send(then="COMMIT" if last else None)
    cur = held.cur
    results: list[Any] = []
    now = 0  # the cursor is at the first held statement's result
    for query, where in zip(queries, at, strict=True):
        if where is None:
            results.append(None)
            continue
        held.skip(where - now)
        now = where
        results.append(await cur.fetchone() if query.kind == "one" else await cur.fetchall())
    return results
