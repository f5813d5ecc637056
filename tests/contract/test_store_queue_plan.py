"""PostgreSQL reads the queue in its index's order, whatever its statistics say.

A planner that believes few tasks are pending (a new table has no statistics; a burst of
work arrives after the last ANALYZE counted almost none) gathers every pending task and
sorts it, once per claim: at a backlog of 20,000 that is tens of milliseconds per claim. The
claim and the assigner's read of the queue both run in a transaction that rules the sort
out, so the queue index's order is used and a claim reads only the rows it takes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dispatchd.store.base import ClaimView, Op
from dispatchd.store.connector import Body, Query, all_rows, together
from dispatchd.store.postgres import PostgresStore
from tests.contract.test_store import StoreFactory, insert, make_task
from tests.contract.test_store_engine import add_agent, query

ON_POSTGRES = pytest.mark.parametrize("engine", ["postgres"], indirect=True)

BACKLOG = 2000


def explaining(body: Body[Any], plans: list[Any]) -> Body[Any]:
    """`body`, with its read of the queue explained instead of run (in the same transaction,
    after whatever the body sent before it); the body is told the queue is empty."""
    result: Any = None
    while True:
        try:
            query_ = body.send(result)
        except StopIteration as stop:
            return stop.value
        if _queue_read(query_):
            rows = yield explained(query_)
            plans.append(rows[0]["QUERY PLAN"][0]["Plan"])
            result = []
        elif query_.kind == "together":  # reads sent together: the queue's among them
            parts = list(query_.params)
            results = yield together(*(explained(q) if _queue_read(q) else q for q in parts))
            result = []
            for part, found in zip(parts, results, strict=True):
                if _queue_read(part):
                    plans.append(found[0]["QUERY PLAN"][0]["Plan"])
                    found = []
                result.append(found)
        else:
            result = yield query_


def _queue_read(query_: Query) -> bool:
    return query_.kind == "all" and "status = 'pending'" in query_.sql


def explained(query_: Query) -> Query:
    return all_rows("EXPLAIN (FORMAT JSON) " + query_.sql, query_.params)


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found


@pytest.fixture
async def misled(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[PostgresStore]:
    """A store with a backlog of pending tasks its statistics know nothing of (none was
    gathered yet, as in a new database), and whose transactions explain the queue read."""
    store = make_store()
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await add_agent(store)
        await insert(store, *(make_task() for _ in range(BACKLOG)))
        transaction = store.connector.transaction
        store.plans = []  # type: ignore[attr-defined]

        async def explained(body: Body[Any], *, write: bool = True) -> Any:
            plans = store.plans  # type: ignore[attr-defined]
            return await transaction(explaining(body, plans), write=write)

        monkeypatch.setattr(store.connector, "transaction", explained)
        yield store
    finally:
        await store.close()


def read_in_index_order(plan: dict[str, Any]) -> None:
    kinds = [n["Node Type"] for n in nodes(plan)]
    assert "Sort" not in kinds, kinds
    scans = [n for n in nodes(plan) if n["Node Type"] == "Index Scan"]
    assert [n["Index Name"] for n in scans] == ["tasks_queue"], kinds


@pytest.mark.asyncio
@pytest.mark.postgres
@ON_POSTGRES
async def test_a_claim_reads_the_queue_in_index_order(misled: PostgresStore) -> None:
    seen: list[ClaimView] = []
    plan: Callable[[ClaimView], list[Op]] = lambda view: seen.append(view) or []  # noqa: E731
    assert await misled.claim(query(limit=1), plan) == []
    (found,) = misled.plans  # type: ignore[attr-defined]
    read_in_index_order(found)
    assert seen and seen[0].agent is not None


@pytest.mark.asyncio
@pytest.mark.postgres
@ON_POSTGRES
async def test_the_assigners_read_of_the_queue_is_in_index_order(misled: PostgresStore) -> None:
    assert await misled.claimable(query(limit=1)) == []
    (found,) = misled.plans  # type: ignore[attr-defined]
    read_in_index_order(found)


def test_the_explained_body_passes_every_other_statement_through() -> None:
    def body() -> Body[tuple[Any, Any]]:
        first = yield all_rows("SELECT 1")
        queue = yield all_rows("SELECT * FROM tasks WHERE status = 'pending'")
        return first, queue

    plans: list[Any] = []
    wrapped = explaining(body(), plans)
    assert next(wrapped) == Query("all", "SELECT 1", {})
    explain = wrapped.send([{"n": 1}])
    assert explain.sql.startswith("EXPLAIN (FORMAT JSON) SELECT * FROM tasks")
    with pytest.raises(StopIteration) as stop:
        wrapped.send([{"QUERY PLAN": [{"Plan": {"Node Type": "Index Scan"}}]}])
    assert stop.value.value == ([{"n": 1}], [])
    assert plans == [{"Node Type": "Index Scan"}]
