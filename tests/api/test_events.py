"""SPEC §4 Events: the long-poll read `GET /api/v1/events?after=&types=&wait_s=&limit=`.

A read answers the events after the cursor, in log order, with the cursor to continue from;
type filters take names, globs and families; events a filter skips still move the cursor;
an empty read waits for the next commit; a cursor that retention has passed is refused with
410 cursor_expired. Every test runs on both engines.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.domain.ids import utcnow
from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, make_settings
from tests.api.helpers import (
    ADMIN,
    BOTH,
    Register,
    assert_error,
    create_task,
    heartbeat,
    ts,
)

pytestmark = BOTH

URL = "/api/v1/events"
# A capability no agent has: the tasks of these tests stay pending and add no events.
NOBODY = "nobody-has-this"
# The log `build_log` writes, in order.
LOG = [
    "agent.registered",
    "task.created",
    "agent.status_changed",
    "task.created",
    "task.updated",
    "task.commented",
    "agent.drained",
]
EVENT_KEYS = {"id", "type", "task_id", "agent_id", "data", "created_at"}


async def read(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get(URL, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"events", "next_cursor"}, body
    return dict(body)


async def everything(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    body = await read(client, after="0", limit=1000)
    return list(body["events"])


async def new_task(client: httpx.AsyncClient) -> dict[str, Any]:
    return await create_task(client, capabilities=[NOBODY])


async def build_log(client: httpx.AsyncClient, register: Register) -> list[dict[str, Any]]:
    """Write the events of `LOG` through the API; the log as a read from 0 shows it."""
    await register("bob", ["code"])
    first = await new_task(client)
    assert await heartbeat(client, "bob", "sleeping") == "sleeping"
    second = await new_task(client)
    r = await client.patch(f"/api/v1/tasks/{second['id']}", json={"priority": "high"})
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/v1/tasks/{first['id']}/comments", json={"body": "noted"})
    assert r.status_code in (200, 201), r.text
    r = await client.post("/api/v1/agents/bob/drain", headers=ADMIN)
    assert r.status_code == 200, r.text
    events = await everything(client)
    assert [e["type"] for e in events] == LOG
    return events


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events]


# --- reading by cursor --------------------------------------------------------------------


async def test_read_answers_the_events_after_the_cursor_in_order(
    client: httpx.AsyncClient, register: Register
) -> None:
    log = await build_log(client, register)
    assert ids(log) == sorted(set(ids(log)))
    for event in log:
        assert set(event) == EVENT_KEYS, event
        assert isinstance(event["id"], str) and isinstance(event["data"], dict)
        ts(event["created_at"])
    task_created = log[1]
    assert task_created["task_id"] and task_created["data"] == {"status": "pending"}
    assert log[0]["agent_id"] == "bob"

    body = await read(client, after="0")
    assert body == {"events": log, "next_cursor": log[-1]["id"]}
    # An absent cursor is the start of the log.
    assert await read(client) == body

    body = await read(client, after=log[2]["id"])
    assert body == {"events": log[3:], "next_cursor": log[-1]["id"]}

    # At the head: nothing, and the same cursor back.
    assert await read(client, after=log[-1]["id"]) == {"events": [], "next_cursor": log[-1]["id"]}
    # `latest` is the head: only what comes next.
    assert await read(client, after="latest") == {"events": [], "next_cursor": log[-1]["id"]}
    await register("carol", ["code"])
    later = await read(client, after="latest", wait_s=0)
    assert later["events"] == [] and int(later["next_cursor"]) > int(log[-1]["id"])
    assert [e["type"] for e in (await read(client, after=log[-1]["id"]))["events"]] == [
        "agent.registered"
    ]


@pytest.mark.parametrize(
    ("types", "limit"), [(None, 1), (None, 3), ("task", 2), ("agent.*,task.updated", 1)]
)
async def test_paging_with_limit_loses_and_repeats_nothing(
    client: httpx.AsyncClient, register: Register, types: str | None, limit: int
) -> None:
    log = await build_log(client, register)
    wanted = await read(client, after="0", **({"types": types} if types else {}))
    assert wanted["events"]

    pages: list[list[dict[str, Any]]] = []
    cursor = "0"
    while True:
        params: dict[str, Any] = {"after": cursor, "limit": limit}
        if types:
            params["types"] = types
        body = await read(client, **params)
        if not body["events"]:
            assert body["next_cursor"] == log[-1]["id"]
            break
        assert len(body["events"]) <= limit
        # A full page ends at its last event, so the next page starts right after it.
        if len(body["events"]) == limit:
            assert body["next_cursor"] == body["events"][-1]["id"]
        pages.append(body["events"])
        cursor = body["next_cursor"]
        assert len(pages) <= len(log), "paging does not end"
    assert [e for page in pages for e in page] == wanted["events"]


# --- type filters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ("task.created", ["task.created", "task.created"]),
        ("agent.status_changed", ["agent.status_changed"]),
        ("task.*", ["task.created", "task.created", "task.updated", "task.commented"]),
        ("task.c*", ["task.created", "task.created", "task.commented"]),
        ("*.drained", ["agent.drained"]),
        ("agent", ["agent.registered", "agent.status_changed", "agent.drained"]),
        ("task", ["task.created", "task.created", "task.updated", "task.commented"]),
        ("task.updated,agent.registered", ["agent.registered", "task.updated"]),
        (" agent.drained , task.commented ,", ["task.commented", "agent.drained"]),
        ("task.created,task", ["task.created", "task.created", "task.updated", "task.commented"]),
        ("agent,task.updated", [t for t in LOG if t != "task.created" and t != "task.commented"]),
        ("room", []),
        ("task.create", []),
        ("", LOG),
    ],
)
async def test_type_filters(
    client: httpx.AsyncClient, register: Register, types: str, expected: list[str]
) -> None:
    log = await build_log(client, register)

    body = await read(client, after="0", types=types)

    assert [e["type"] for e in body["events"]] == expected
    assert body["events"] == [e for e in log if e["type"] in set(expected)]
    # Events the filter skipped still move the cursor: it stands at the end of the log.
    assert body["next_cursor"] == log[-1]["id"]


async def test_filtered_out_events_advance_the_cursor(
    client: httpx.AsyncClient, register: Register
) -> None:
    log = await build_log(client, register)
    last_task = max(i for i, e in enumerate(log) if e["type"].startswith("task."))

    # Past the last task event only agent events follow: none match, the cursor moves on.
    body = await read(client, after=log[last_task]["id"], types="task")
    assert body == {"events": [], "next_cursor": log[-1]["id"]}

    # From that cursor the next matching event is the first one returned, skipping nothing.
    await register("carol", ["code"])
    task = await new_task(client)
    body = await read(client, after=body["next_cursor"], types="task.created")
    assert [(e["type"], e["task_id"]) for e in body["events"]] == [("task.created", task["id"])]
    assert body["next_cursor"] == body["events"][0]["id"]
    agents = await read(client, after=log[-1]["id"], types="agent")
    assert [(e["type"], e["agent_id"]) for e in agents["events"]] == [("agent.registered", "carol")]


# --- waiting --------------------------------------------------------------------------------


async def test_empty_read_answers_as_soon_as_an_event_is_committed(
    client: httpx.AsyncClient,
) -> None:
    head = (await read(client))["next_cursor"]
    loop = asyncio.get_running_loop()

    async def create_later() -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return await new_task(client)

    started = loop.time()
    poll = asyncio.create_task(client.get(URL, params={"after": head, "wait_s": 60}))
    creator = asyncio.create_task(create_later())
    r = await poll
    elapsed = loop.time() - started
    task = await creator

    assert r.status_code == 200, r.text
    body = r.json()
    # Not the timeout path (which answers no events): the commit itself woke the read.
    assert [(e["type"], e["task_id"]) for e in body["events"]] == [("task.created", task["id"])]
    assert body["next_cursor"] == body["events"][0]["id"]
    assert int(body["next_cursor"]) > int(head)
    assert elapsed < 30, f"the read took {elapsed:.1f}s of its 60 s wait"


async def test_filtered_wait_ignores_other_events_and_answers_a_matching_one(
    client: httpx.AsyncClient, register: Register
) -> None:
    head = (await read(client))["next_cursor"]

    async def write_later() -> dict[str, Any]:
        await asyncio.sleep(0.1)
        await register("dave", ["code"])  # an agent event the read does not want
        await asyncio.sleep(0.1)
        return await new_task(client)

    writer = asyncio.create_task(write_later())
    r = await client.get(URL, params={"after": head, "wait_s": 60, "types": "task.created"})
    task = await writer

    assert r.status_code == 200, r.text
    body = r.json()
    assert [(e["type"], e["task_id"]) for e in body["events"]] == [("task.created", task["id"])]
    assert body["next_cursor"] == body["events"][0]["id"]


async def test_empty_read_without_events_answers_empty_after_wait_s(
    client: httpx.AsyncClient,
) -> None:
    await new_task(client)
    head = (await read(client))["next_cursor"]
    loop = asyncio.get_running_loop()

    started = loop.time()
    body = await read(client, after=head, wait_s=0.3)
    elapsed = loop.time() - started

    assert body == {"events": [], "next_cursor": head}
    assert elapsed >= 0.25, f"answered after {elapsed:.3f}s of a 0.3 s wait"


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "after", ["abc", "-1", "1.5", "0x10", "1e3", " 1", "\u0661\u0662", "\uff11", "9" * 20]
)
async def test_a_malformed_cursor_is_invalid_cursor(client: httpx.AsyncClient, after: str) -> None:
    r = await client.get(URL, params={"after": after})
    err = assert_error(r, 422, "invalid_cursor")
    assert err["details"]["cursor"] == after


@pytest.mark.parametrize("ahead", [1, 1000, None])
async def test_a_cursor_ahead_of_the_log_is_invalid_cursor(
    client: httpx.AsyncClient, ahead: int | None
) -> None:
    await new_task(client)
    head = int((await read(client))["next_cursor"])
    cursor = str(head + ahead) if ahead is not None else str(2**63 - 1)

    for params in ({"after": cursor}, {"after": cursor, "wait_s": 5}):
        r = await client.get(URL, params=params)
        err = assert_error(r, 422, "invalid_cursor")
        assert err["details"]["cursor"] == cursor


@pytest.mark.parametrize(
    "types",
    [
        "Task",
        "task..created",
        "task.created!",
        "task created",
        ".task",
        "task.",
        "task,agent-x",
        "a" * 101,
        "task.[abc]",
        "tâsk",
    ],
)
async def test_a_bad_type_filter_is_invalid_types(client: httpx.AsyncClient, types: str) -> None:
    r = await client.get(URL, params={"types": types})
    assert_error(r, 422, "invalid_types")


@pytest.mark.parametrize(
    "params",
    [
        {"wait_s": "61"},
        {"wait_s": "60.5"},
        {"wait_s": "-1"},
        {"wait_s": "-0.001"},
        {"wait_s": "soon"},
        {"wait_s": "nan"},
        {"wait_s": "inf"},
        {"limit": "0"},
        {"limit": "-5"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "2.5"},
        {"after": "1" * 41},
        {"types": "task," * 401},
    ],
    ids=lambda p: "-".join(f"{k}={v[:12]}" for k, v in p.items()),
)
async def test_out_of_range_parameters_are_validation_errors(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    r = await client.get(URL, params=params)
    assert_error(r, 422, None)


@pytest.mark.parametrize("params", [{"wait_s": "60"}, {"wait_s": "0"}, {"limit": "1000"}])
async def test_limits_themselves_are_accepted(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await new_task(client)
    head = (await read(client))["next_cursor"]
    # At the head a 60 s wait would last that long: read from 0 instead, which has events.
    body = await read(client, after="0", **params)
    assert body["events"] and body["next_cursor"] == head


# --- retention ----------------------------------------------------------------------------


async def test_a_cursor_behind_retention_is_gone(
    client: httpx.AsyncClient, register: Register, runtime: Runtime
) -> None:
    log = await build_log(client, register)
    last = log[-1]["id"]

    # Thirty-one days on, the default thirty-day retention deletes the whole log.
    pruned = await runtime.pruner.prune(now=utcnow() + timedelta(days=31))
    assert pruned.events == len(log)

    for after in ("0", log[0]["id"], log[-2]["id"]):
        r = await client.get(URL, params={"after": after, "wait_s": 5})
        err = assert_error(r, 410, "cursor_expired")
        assert err["details"]["oldest_cursor"] == last
        assert err["details"]["after"] == after

    # The retention cursor itself is whole: reading from it misses nothing.
    assert await read(client, after=last) == {"events": [], "next_cursor": last}
    task = await new_task(client)
    body = await read(client, after=last)
    assert [(e["type"], e["task_id"]) for e in body["events"]] == [("task.created", task["id"])]


async def test_a_cursor_inside_a_partly_pruned_log_is_gone(
    client: httpx.AsyncClient, register: Register, runtime: Runtime
) -> None:
    log = await build_log(client, register)
    # The store cuts the log in batches: after one batch of three, the cursor is the third.
    pruned = await runtime.store.prune(
        events_before=utcnow() + timedelta(days=1), tasks_before=None, limit=3
    )
    assert pruned.events == 3
    oldest = log[2]["id"]

    err = assert_error(await client.get(URL, params={"after": log[1]["id"]}), 410, "cursor_expired")
    assert err["details"]["oldest_cursor"] == oldest
    assert await read(client, after=oldest) == {"events": log[3:], "next_cursor": log[-1]["id"]}
    # Everything that is left reads the same as before.
    assert (await read(client, after=log[4]["id"]))["events"] == log[5:]


async def test_the_retention_cursor_stays_valid_after_a_restart(
    tmp_path: Path, database_url: str | None
) -> None:
    """Retention may delete the whole log; the cursor it answers with (oldest_cursor) must
    still be served by the next server process, which finds no event in the database."""
    settings = make_settings(tmp_path, database_url)
    async with Runtime.build(settings) as rt:
        transport = httpx.ASGITransport(app=app_for(rt))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "a"}
        ) as client:
            await new_task(client)
            last = (await read(client))["next_cursor"]
            await rt.pruner.prune(now=utcnow() + timedelta(days=31))
            assert await read(client, after=last) == {"events": [], "next_cursor": last}

    async with Runtime.build(settings) as rt:
        transport = httpx.ASGITransport(app=app_for(rt))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "a"}
        ) as client:
            err = assert_error(await client.get(URL, params={"after": "0"}), 410, "cursor_expired")
            assert err["details"]["oldest_cursor"] == last
            assert await read(client, after=last) == {"events": [], "next_cursor": last}
            task = await new_task(client)
            body = await read(client, after=last)
            assert [(e["type"], e["task_id"]) for e in body["events"]] == [
                ("task.created", task["id"])
            ]
