"""PostgreSQL: a commit takes the agent rows it writes before any task or attempt row, in
the order a claim or a heartbeat does (the agent first), so that they never wait on each
other. PostgreSQL finds such a wait only after `deadlock_timeout` (a second by default)
and aborts one of the two.

Each test holds the agent's row on a second connection as a claim or a heartbeat would,
lets the commit run into it, then has that connection take the row the commit used to
hold first: with the agent row taken first, the commit holds nothing the other needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from dispatchd.domain import lifecycle
from dispatchd.domain.models import TaskStatus
from dispatchd.engine.transitions import ops_for
from dispatchd.errors import DuplicateKey
from dispatchd.store.postgres import PostgresStore
from tests.contract.test_store import StoreFactory, insert, make_task
from tests.contract.test_store_engine import NOW, add_agent

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.postgres,
    pytest.mark.parametrize("engine", ["postgres"], indirect=True),
]

WAIT_S = 10.0


@pytest.fixture
async def pg(make_store: StoreFactory) -> AsyncIterator[PostgresStore]:
    store = make_store()
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await add_agent(store)
        yield store
    finally:
        await store.close()


async def blocked_on_a_lock(url: str) -> None:
    """Until some session of this database waits for a lock."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with asyncio.timeout(WAIT_S):
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                row = await cur.fetchone()
                if row is not None and row[0] > 0:
                    return
                await asyncio.sleep(0.01)


async def holding_the_agent(url: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    other = await psycopg.AsyncConnection.connect(url)
    await other.execute("SET deadlock_timeout = '50ms'")
    await other.execute("SELECT 1 FROM agents WHERE id = 'me' FOR UPDATE")
    return other


async def test_an_assignment_waits_for_the_agent_before_it_holds_the_attempt_key(
    pg: PostgresStore,
) -> None:
    """Against a claim by the agent that read the task before, and inserts its attempt."""
    task = make_task()
    await insert(pg, task)
    async with await holding_the_agent(pg.connector.url) as claim:
        assignment = asyncio.create_task(
            pg.commit(ops_for(lifecycle.assign(task, "me", NOW), task))
        )
        await blocked_on_a_lock(pg.connector.url)
        async with asyncio.timeout(WAIT_S):
            await claim.execute(
                "INSERT INTO attempts (task_id, number, agent_id, assigned_at) "
                "VALUES (%s, 1, 'me', now())",
                [task.id],
            )
        # The claim's insert did not wait: the assignment is still waiting for the agent.
        assert not assignment.done()
        await claim.commit()
    # The assignment then meets the claim's attempt: a lost race, not a deadlock.
    with pytest.raises(DuplicateKey):
        await assignment
    assert [a.agent_id for a in await pg.attempts(task.id)] == ["me"]
    agent = await pg.get_agent("me")
    assert agent is not None and agent.active == 0


async def test_a_completion_waits_for_the_agent_before_it_holds_the_task(
    pg: PostgresStore,
) -> None:
    """Against a heartbeat of the agent, which writes its row and then renews its tasks'
    leases."""
    task = make_task(status=TaskStatus.RUNNING, assignee="me", attempt=1)
    await insert(pg, task)
    done = lifecycle.complete(task, NOW, result={"ok": True}, summary=None)
    async with await holding_the_agent(pg.connector.url) as heartbeat:
        completion = asyncio.create_task(pg.commit(ops_for(done, task)))
        await blocked_on_a_lock(pg.connector.url)
        async with asyncio.timeout(WAIT_S):
            await heartbeat.execute(
                "UPDATE tasks SET lease_expires_at = now() WHERE id = %s", [task.id]
            )
        assert not completion.done()
        await heartbeat.commit()
    # The lease renewal moved nothing the completion checks (the version): it commits.
    await completion
    stored = await pg.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.COMPLETED
    agent = await pg.get_agent("me")
    assert agent is not None and agent.active == 0
