"""Webhooks across stops, restarts and replicas (docs/webhooks.md): what a webhook is owed
is in the database, so a dispatcher that was down, stopped mid-request or restarted sends
all of it, in order, and replicas sharing one PostgreSQL send each delivery once. (A
`kill -9` of a real server is in tests/integration/test_webhooks_restart.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from dispatchd.runtime import Runtime
from tests.api.helpers import BOTH, ts
from tests.api.webhook_helpers import (
    FAST,
    api,
    create_webhook,
    deliveries,
    restart_settings,
    task_created,
    wait_deliveries,
    wait_requests,
)
from tests.support.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@BOTH
async def test_a_stop_mid_request_gives_the_attempt_back(
    tmp_path: Path, database_url: str | None, receiver: Receiver
) -> None:
    settings = restart_settings(tmp_path, database_url)
    receiver.hold()
    async with Runtime.build(settings) as rt, await api(rt) as client:
        hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
        await task_created(client)
        await wait_requests(receiver, 1)
    # Stopped with the request unanswered: it does not count, and it is due at once.
    async with Runtime.build(settings, background=False) as rt, await api(rt) as client:
        [delivery] = await deliveries(client, hook["id"])
        assert (delivery["status"], delivery["attempt"]) == ("pending", 0)
        assert [a["outcome"] for a in delivery["attempts"]] == ["interrupted"]
        assert ts(delivery["next_attempt_at"]) <= ts(delivery["attempts"][0]["at"]) + timedelta(
            seconds=FAST["timeout_s"]
        )
    receiver.release()
    async with Runtime.build(settings) as rt, await api(rt) as client:
        [delivery] = await wait_deliveries(client, hook["id"], 1)
        assert delivery["attempt"] == 1
        assert [a["outcome"] for a in delivery["attempts"]] == ["interrupted", "delivered"]


@BOTH
async def test_events_while_the_dispatcher_is_down_are_delivered_after_it_starts(
    tmp_path: Path, database_url: str | None, receiver: Receiver
) -> None:
    settings = restart_settings(tmp_path, database_url)
    # Only the API runs: the webhook exists, events happen, nothing is sent.
    async with Runtime.build(settings, background=False) as rt, await api(rt) as client:
        hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
        owed = [await task_created(client, f"t{n}") for n in range(5)]
    assert receiver.requests() == []
    async with Runtime.build(settings) as rt, await api(rt) as client:
        await wait_deliveries(client, hook["id"], 5)
        assert [q.event["id"] for q in receiver.requests()] == owed


@BOTH
async def test_a_restart_loses_no_owed_delivery(
    tmp_path: Path, database_url: str | None, receiver: Receiver
) -> None:
    settings = restart_settings(tmp_path, database_url, max_attempts=50, backoff_cap_ms=100)
    receiver.fail_always()
    async with Runtime.build(settings) as rt, await api(rt) as client:
        hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
        owed = [await task_created(client, f"t{n}") for n in range(3)]
        await wait_requests(receiver, 2)
    failed_before = len(receiver.requests())
    receiver.succeed()
    async with Runtime.build(settings) as rt, await api(rt) as client:
        items = await wait_deliveries(client, hook["id"], 3)
    assert [d["event_id"] for d in items] == owed
    delivered = [q for q in receiver.requests() if q.answered == 200]
    assert [q.event["id"] for q in delivered] == owed, "each once, in order"
    assert items[0]["attempt"] == delivered[0].attempt
    assert delivered[0].attempt >= failed_before, "the count of attempts carried over"
    assert [d["attempt"] for d in items[1:]] == [1, 1]


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_replicas_send_each_delivery_once(
    tmp_path: Path, database_url: str | None, receiver: Receiver
) -> None:
    settings = restart_settings(tmp_path, database_url)
    async with (
        Runtime.build(settings) as one,
        Runtime.build(settings) as two,
        await api(one, own_app=True) as a,
        await api(two, own_app=True) as b,
    ):
        hook, _ = await create_webhook(a, receiver.url(), types=["task.created"])
        owed = []
        for n in range(10):
            owed.append(await task_created(a if n % 2 else b, f"t{n}"))
        await wait_deliveries(a, hook["id"], 10)
    got = [q.event["id"] for q in receiver.requests()]
    assert got == owed, "each event once, in order, whichever replica sent it"
