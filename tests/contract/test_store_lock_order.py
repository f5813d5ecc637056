"""PostgreSQL: a commit takes the agent rows it writes before any task or attempt row, in
the order a claim does (its agent first), so that the two never wait on each other.

The deadlock this rules out: a commit assigns a task to an agent, holding the task's new
attempt key, and then waits for the agent's row, which a claim by that agent holds; the
claim, having read the task before, inserts the same attempt key and waits for the commit.
PostgreSQL finds that only after `deadlock_timeout` (a second by default) and aborts one."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from dispatchd.domain import lifecycle
from dispatchd.engine.transitions import ops_for
from dispatchd.errors import DuplicateKey
from dispatchd.store.postgres import PostgresStore
from tests.contract.test_store import StoreFactory, insert, make_task
from tests.contract.test_store_engine import NOW, add_agent

WAIT_S = 10.0


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


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_an_assignment_waits_for_the_agent_before_it_holds_the_attempt_key(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    assert isinstance(store, PostgresStore)
    await store.open()
    await add_agent(store)
    task = make_task()
    await insert(store, task)
    url = store.connector.url
    async with await psycopg.AsyncConnection.connect(url) as claim:
        # The claim: its agent locked first, then (having read the task) its attempt.
        await claim.execute("SET deadlock_timeout = '50ms'")
        await claim.execute("SELECT 1 FROM agents WHERE id = 'me' FOR UPDATE")
        assignment = asyncio.create_task(
            store.commit(ops_for(lifecycle.assign(task, "me", NOW), task))
        )
        await blocked_on_a_lock(url)
        async with asyncio.timeout(WAIT_S):
            await claim.execute(
                "INSERT INTO attempts (task_id, number, agent_id, assigned_at) "
                "VALUES (%s, 1, 'me', now())",
                [task.id],
            )
        # The claim's insert did not wait for the assignment: that is still waiting for
        # the agent row, holding nothing the claim needs.
        assert not assignment.done()
        await claim.commit()
    # The assignment then meets the claim's attempt: a lost race, not a deadlock.
    with pytest.raises(DuplicateKey):
        await assignment
    assert [a.agent_id for a in await store.attempts(task.id)] == ["me"]
    agent = await store.get_agent("me")
    assert agent is not None and agent.active == 0
