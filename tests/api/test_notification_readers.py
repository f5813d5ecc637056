"""Readers for everyone (docs/events.md#notifications): a requester reads the notifications
of the tasks it requested without the admin token, digests cut to its tasks' items; the
admin reads them all; `wait_s` long-polls for the next entry the reader may see."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.api.conftest import as_agent
from tests.api.helpers import (
    ADMIN,
    BOTH,
    Register,
    act,
    eventually,
    wait_assigned,
)

URL = "/api/v1/notifications"
Json = dict[str, Any]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "notifications": {"batch_window_s": 1.0},
        "assignment": {"lease_ms": 30_000},
    }


async def read(client: httpx.AsyncClient, who: dict[str, str], **params: Any) -> Json:
    r = await client.get(URL, params=params, headers=who)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def running(client: httpx.AsyncClient, by: str, title: str) -> str:
    """A task requested by `by`, started by w1."""
    r = await client.post(
        "/api/v1/tasks",
        json={"title": title, "capabilities": ["code"], "max_attempts": 1},
        headers=as_agent(by),
    )
    assert r.status_code == 201, r.text
    task_id = str(r.json()["id"])
    await wait_assigned(client, task_id, "w1")
    await act(client, task_id, "start", "w1")
    return task_id


async def all_items(client: httpx.AsyncClient, who: dict[str, str]) -> list[Json]:
    return list((await read(client, who, after="0", limit=500))["items"])


@BOTH
async def test_a_requester_reads_its_own_tasks_notifications_and_the_admin_all(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=10)
    alices = await running(client, "alice", "alice's job")
    bobs = await running(client, "bob", "bob's job")
    asks = await running(client, "alice", "alice asks")
    await act(client, alices, "fail", "w1", error="no", retryable=False)
    await act(client, bobs, "fail", "w1", error="no", retryable=False)
    await act(client, asks, "input-request", "w1", question="Proceed?")
    done_a = await running(client, "alice", "alice done")
    done_b = await running(client, "bob", "bob done")
    for task_id in (done_a, done_b):
        await act(client, task_id, "complete", "w1", summary="ok")

    async def closed() -> list[Json] | None:
        found = await all_items(client, ADMIN)
        return found if any(e["kind"] == "digest" for e in found) else None

    everything = await eventually(closed, "the digest to close")
    assert [(e["kind"], e["task_id"]) for e in everything] == [
        ("failed", alices),
        ("failed", bobs),
        ("question", asks),
        ("digest", None),
    ]
    assert {i["task_id"] for i in everything[-1]["data"]["completed"]} == {done_a, done_b}

    for who, own_failure, done in (("alice", alices, done_a), ("bob", bobs, done_b)):
        mine = await all_items(client, as_agent(who))
        kinds = [(e["kind"], e["task_id"]) for e in mine]
        expected = [("failed", own_failure)]
        if who == "alice":
            expected.append(("question", asks))
        assert kinds == [*expected, ("digest", None)]
        # The digest is cut to the reader's own tasks, its counts and message too.
        digest = mine[-1]["data"]
        assert [i["task_id"] for i in digest["completed"]] == [done]
        assert digest["counts"]["completed"] == 1 and digest["message"] == "1 task completed"
        assert all(i["requester"] == who for i in digest["completed"])

    # A caller with no tasks sees nothing, and its cursor still passes the others' entries.
    page = await read(client, as_agent("carol"), after="0")
    assert page["items"] == [] and page["next_cursor"] == everything[-1]["id"]


@BOTH
@pytest.mark.parametrize(
    "settings_overrides", [{"notifications": {"batch_window_s": 60.0}}], ids=["60s"]
)
async def test_the_open_digest_is_cut_to_the_readers_tasks(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=10)
    bobs = await running(client, "bob", "bob's job")
    await act(client, bobs, "progress", "w1", message="half", percent=50)

    async def opened() -> Json | None:
        digest = (await read(client, ADMIN))["open_digest"]
        return dict(digest) if digest else None

    await eventually(opened, "the progress to reach the open digest")
    assert (await read(client, as_agent("alice")))["open_digest"] is None
    own = (await read(client, as_agent("bob")))["open_digest"]
    assert [i["task_id"] for i in own["data"]["progress"]] == [bobs]


@BOTH
async def test_a_long_poll_answers_when_the_readers_notification_arrives(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=10)
    alices = await running(client, "alice", "alice's job")
    bobs = await running(client, "bob", "bob's job")
    start = (await read(client, ADMIN))["next_cursor"]
    loop = asyncio.get_running_loop()
    began = loop.time()
    poll = asyncio.create_task(
        client.get(URL, params={"after": start, "wait_s": 30}, headers=as_agent("alice"))
    )
    await asyncio.sleep(0.5)
    await act(client, bobs, "fail", "w1", error="no", retryable=False)  # not alice's
    await asyncio.sleep(1.5)
    assert not poll.done()
    await act(client, alices, "input-request", "w1", question="Proceed?")
    r = await asyncio.wait_for(poll, 10)
    assert r.status_code == 200, r.text
    assert [(e["kind"], e["task_id"]) for e in r.json()["items"]] == [("question", alices)]
    assert loop.time() - began < 15  # answered at the question, not at wait_s


@BOTH
async def test_a_long_poll_answers_empty_after_wait_s(client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    page = await read(client, as_agent("alice"), after="0", wait_s=0.5)
    assert page["items"] == [] and page["next_cursor"] == "0"
    assert loop.time() - began >= 0.5
    admin_page = await read(client, ADMIN, after="0", wait_s=0.3)
    assert admin_page["items"] == []
