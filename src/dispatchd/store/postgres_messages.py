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
server process about 0.1 ms of CPU, bound into a string about 0.03 ms.

A `checked` write is checked by the server, in the statement itself:

    WITH done AS (<write> RETURNING 1) SELECT dispatchd_expect(count(*) = 1, '<n>') FROM done

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

from collections.abc import Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.rows import DictRow

from dispatchd.store.connector import Body, Query, drive_async, statements

T = TypeVar("T")
Connection = AsyncConnection[DictRow]

# The SQLSTATE `dispatchd_expect` raises; its message is the check's number.
EXPECT_FAILED = "DSP01"


class _Held:
    """The statements held for the next message, and the checks among them."""

    def __init__(self, cur: AsyncClientCursor[DictRow]) -> None:
        self.cur = cur
        self.parts: list[str] = []
        self.begun = False
        # The commit went with the body's last read.
        self.ended = False
        # The `checked` writes of the transaction, by the number their check raises.
        self.checks: dict[str, Query] = {}

    def hold(self, query: Query) -> int:
        """Hold the query's statements for the next message; how many there are."""
        kind = query.kind
        if kind == "script":
            found = statements(query.sql)
            self.parts.extend(found)
            return len(found)
        if kind in ("many", "ids"):
            rows: Sequence[Any] = query.params or ()
            sql = query.sql + " RETURNING id" if kind == "ids" else query.sql
            self.parts.extend(self.cur.mogrify(sql, params) for params in rows)
            return len(rows)
        bound = self.cur.mogrify(query.sql, query.params or {})
        if kind == "checked" and query.fail is not None:
            label = str(len(self.checks))
            self.checks[label] = query
            bound = (
                f"WITH done AS ({bound.rstrip().rstrip(';')}\nRETURNING 1) "
                f"SELECT dispatchd_expect(count(*) = 1, '{label}') FROM done"
            )
        self.parts.append(bound)
        return 1

    async def send(self, *, then: str | None = None) -> None:
        """Send what is held (and `then`, a statement to close the message with) as one
        message; the cursor is left at the first held statement's result."""
        parts = self.parts
        if then is not None:
            parts.append(then)
        if not self.begun:
            parts.insert(0, "BEGIN")
        self.parts = []
        if not parts:
            return
        try:
            await self.cur.execute(";\n".join(parts))
        except psycopg.Error as exc:
            failed = self.checks.get(exc.diag.message_detail or "")
            if exc.sqlstate == EXPECT_FAILED and failed is not None and failed.fail is not None:
                raise failed.fail from exc
            raise
        if not self.begun:
            self.begun = True
            self.cur.nextset()  # past BEGIN's result

    def skip(self, count: int) -> None:
        for _ in range(count):
            self.cur.nextset()


async def drive(conn: Connection, body: Body[T]) -> T:
    """Run `body` in one transaction on `conn`, a pooled connection in autocommit mode:
    begun and committed here; on an error the pool's connection context rolls it back
    (or, a query still running, replaces the connection)."""
    held = _Held(AsyncClientCursor(conn))

    async def answer(query: Query) -> Any:
        if held.ended:
            raise RuntimeError(f"a query after the body's last: {query.sql[:80]}")
        return await _answer(held, query)

    value = await drive_async(body, answer)
    if not held.ended and (held.begun or held.parts):
        await held.send(then="COMMIT")
    return value


async def _answer(held: _Held, query: Query) -> Any:
    """Hold `query`, or when the body waits for its answer, send it with what is held
    and return the answer."""
    kind = query.kind
    if kind in ("send", "checked", "many", "script"):
        held.hold(query)
        return None
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
    if kind == "one":
        return await cur.fetchone()
    if kind == "all":
        return await cur.fetchall()
    ids: list[int] = []
    for n in range(count):
        if n:
            cur.nextset()
        row = await cur.fetchone()
        assert row is not None  # RETURNING gives one row per insert
        ids.append(int(row["id"]))
    return ids
