"""Notifications (SPEC §4): failures, timeouts, escalations and questions at once;
completions and progress gathered into one digest per `notifications.batch_window_s`;
acknowledgement and cursor paging; the open digest survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, as_agent, make_settings
from tests.api.helpers import (
    ADMIN,
    BOTH,
    Register,
    act,
    assert_error,
    create_code_task,
    eventually,
    task_events,
    ts,
    wait_assigned,
    wait_task,
)

URL = "/api/v1/notifications"
Json = dict[str, Any]


@pytest.fixture
def window_s() -> float:
    """`notifications.batch_window_s`; a test parametrizes it when it needs another."""
    return 1.0


@pytest.fixture
def settings_overrides(window_s: float) -> dict[str, Any]:
    return {
        "notifications": {"batch_window_s": window_s},
        "assignment": {"lease_ms": 30_000},
        "retry": {"backoff_base_ms": 50, "backoff_cap_ms": 100},
    }


# --- helpers ----------------------------------------------------------------------------


async def read(client: httpx.AsyncClient, **params: Any) -> Json:
    r = await client.get(URL, params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def entries(client: httpx.AsyncClient, kind: str | None = None) -> list[Json]:
    """Every finished entry, oldest first (paging through them all)."""
    found: list[Json] = []
    after = "0"
    while True:
        page = await read(client, after=after, limit=500)
        found += page["items"]
        if not page["items"]:
            return [e for e in found if kind is None or e["kind"] == kind]
        after = page["next_cursor"]


async def wait_entries(
    client: httpx.AsyncClient, check: Callable[[list[Json]], bool], what: str
) -> list[Json]:
    async def probe() -> list[Json] | None:
        found = await entries(client)
        return found if check(found) else None

    return await eventually(probe, what)


def digests(found: list[Json]) -> list[Json]:
    return [e for e in found if e["kind"] == "digest"]


async def running(client: httpx.AsyncClient, agent: str, **fields: Any) -> Json:
    """A task of `agent`, started."""
    task = await create_code_task(client, **fields)
    await wait_assigned(client, task["id"], agent)
    await act(client, task["id"], "start", agent)
    return task


async def complete_many(client: httpx.AsyncClient, agent: str, titles: list[str]) -> list[Json]:
    """Create, claim and complete one task per title; the tasks."""
    r = await client.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"title": t, "capabilities": ["code"]} for t in titles]},
    )
    assert r.status_code == 201, r.text
    wanted = {t["id"] for t in r.json()["items"]}
    held: set[str] = set()

    async def claimed() -> bool:
        r = await client.post(
            "/api/v1/tasks/claim", json={"max_tasks": len(titles)}, headers=as_agent(agent)
        )
        assert r.status_code == 200, r.text
        held.update(t["id"] for t in r.json()["tasks"])
        return wanted <= held

    await eventually(claimed, f"{agent} to hold {len(titles)} tasks")
    items = [{"task_id": i, "result": None, "summary": f"done {i}"} for i in sorted(wanted)]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent(agent)
    )
    assert r.status_code == 200, r.text
    assert all(o["ok"] for o in r.json()["items"]), r.text
    return list(r.json()["items"])


async def completion_times(client: httpx.AsyncClient, task_ids: list[str]) -> list[Any]:
    times = []
    for task_id in task_ids:
        (done,) = await task_events(client, task_id, "task.completed")
        times.append(ts(done["created_at"]))
    return times


def named(digest: Json) -> list[str]:
    return [item["task_id"] for item in digest["data"]["completed"]]


# --- the digest -------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("window_s", [2.0])
async def test_twenty_completions_in_one_window_give_one_digest_naming_them(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=20)
    titles = [f"job {i:02}" for i in range(20)]
    done = await complete_many(client, "w1", titles)
    ids = sorted(o["task_id"] for o in done)

    found = await wait_entries(client, lambda f: bool(digests(f)), "a closed digest")
    (digest,) = digests(found)
    assert [e["kind"] for e in found] == ["digest"]  # completions notify nothing else
    data = digest["data"]
    # The premise: every completion happened inside the digest's window.
    opened, closes = ts(data["opened_at"]), ts(data["closes_at"])
    assert (closes - opened).total_seconds() == 2.0
    assert all(opened <= t < closes for t in await completion_times(client, ids))

    assert sorted(named(digest)) == ids and len(named(digest)) == 20
    assert sorted(item["title"] for item in data["completed"]) == titles
    assert {item["summary"] for item in data["completed"]} == {f"done {i}" for i in ids}
    assert all(item["agent_id"] == "w1" for item in data["completed"])
    assert data["counts"] == {"completed": 20, "progress": 0, "progress_updates": 0}
    assert data["progress"] == [] and data["message"] == "20 tasks completed"
    assert digest["task_id"] is None and ts(digest["created_at"]) >= closes
    completions = [e for i in ids for e in await task_events(client, i, "task.completed")]
    assert int(digest["event_id"]) == max(int(e["id"]) for e in completions)
    assert digest["acknowledged_at"] is None and digest["acknowledged_by"] is None
    # Closed with nothing after it: no digest is open any more.
    assert (await read(client))["open_digest"] is None


@BOTH
@pytest.mark.parametrize("window_s", [2.0])
async def test_progress_is_batched_with_the_last_message_of_each_task(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=5)
    one = await running(client, "w1", title="indexing")
    two = await running(client, "w1", title="crawling")
    for i, percent in enumerate((10, 40, 80)):
        await act(client, one["id"], "progress", "w1", message=f"step {i}", percent=percent)
    await act(client, two["id"], "progress", "w1", message="started")

    found = await wait_entries(client, lambda f: bool(digests(f)), "a closed digest")
    (digest,) = digests(found)
    assert [e["kind"] for e in found] == ["digest"]
    data = digest["data"]
    assert data["counts"] == {"completed": 0, "progress": 2, "progress_updates": 4}
    by_task = {item["task_id"]: item for item in data["progress"]}
    assert by_task[one["id"]]["title"] == "indexing"
    assert by_task[one["id"]]["message"] == "step 2" and by_task[one["id"]]["percent"] == 80
    assert by_task[one["id"]]["updates"] == 3
    assert by_task[two["id"]]["message"] == "started" and by_task[two["id"]]["percent"] is None
    assert by_task[two["id"]]["updates"] == 1
    assert data["message"] == "4 progress updates on 2 tasks"


# --- what needs a person now ------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("window_s", [120.0])
async def test_failures_escalations_questions_and_timeouts_are_notified_at_once(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=10)
    # A completion opens a digest whose window outlasts the test.
    await complete_many(client, "w1", ["warm-up"])
    opened = await eventually(
        lambda: _open_digest(client), "the completion to reach the open digest"
    )
    assert opened["data"]["counts"]["completed"] == 1

    # A failure with attempts left is retried: nothing to tell anyone yet.
    retried = await running(client, "w1", title="flaky", max_attempts=3)
    await act(client, retried["id"], "fail", "w1", error="blip", retryable=True)

    failed = await running(client, "w1", title="broken build", max_attempts=1)
    child = await create_code_task(client, title="deploy", depends_on=[failed["id"]])
    await act(client, failed["id"], "fail", "w1", error="tests red", retryable=False)

    escalated = await running(client, "w1", title="hard bug", max_attempts=1, escalate_to="senior")
    await act(client, escalated["id"], "fail", "w1", error="stuck", retryable=False)

    asking = await running(client, "w1", title="schema change")
    await act(client, asking["id"], "input-request", "w1", question="Drop column x?")

    slow = await running(client, "w1", title="long job", timeout_s=1, max_attempts=1)
    await wait_task(client, slow["id"], lambda t: t["status"] == "timed_out", "its timeout")

    found = await wait_entries(
        client,
        lambda f: any(e["kind"] == "timed_out" for e in f),
        "the timeout's notification",
    )
    # Each its own entry, in the order it happened, while the digest is still open.
    assert digests(found) == []
    assert (await read(client))["open_digest"] is not None
    kinds = [(e["kind"], e["task_id"]) for e in found]
    assert kinds == [
        ("failed", failed["id"]),
        ("failed", child["id"]),
        ("failed", escalated["id"]),
        ("escalated", escalated["id"]),
        ("question", asking["id"]),
        ("timed_out", slow["id"]),
    ]
    by = {(e["kind"], e["task_id"]): e for e in found}
    broken = by[("failed", failed["id"])]["data"]
    assert broken["title"] == "broken build" and broken["agent_id"] == "w1"
    assert broken["message"] == "task 'broken build' failed: tests red"
    assert broken["details"]["error"] == "tests red" and broken["event_type"] == "task.failed"
    dependency = by[("failed", child["id"])]["data"]
    assert dependency["details"]["dependency"] == failed["id"] and dependency["title"] == "deploy"
    moved = by[("escalated", escalated["id"])]["data"]
    assert moved["details"]["to"] == "senior"
    assert moved["message"] == "task 'hard bug' escalated to senior after: stuck"
    question = by[("question", asking["id"])]["data"]
    assert question["question"] == "Drop column x?" and question["title"] == "schema change"
    timeout = by[("timed_out", slow["id"])]["data"]
    assert timeout["details"]["error"] == "timed out after 1s" and timeout["title"] == "long job"
    for entry in found:
        (event,) = [
            e for e in await task_events(client, entry["task_id"]) if e["id"] == entry["event_id"]
        ]
        assert event["type"] == entry["data"]["event_type"]
    assert retried["id"] not in {e["task_id"] for e in found}


async def _open_digest(client: httpx.AsyncClient) -> Json | None:
    digest = (await read(client))["open_digest"]
    return dict(digest) if digest else None


# --- reading and acknowledging ------------------------------------------------------------


async def fail_tasks(client: httpx.AsyncClient, agent: str, n: int) -> list[Json]:
    """`n` tasks failed for good; their notifications, in order."""
    tasks = [await running(client, agent, title=f"doomed {i}", max_attempts=1) for i in range(n)]
    for task in tasks:
        await act(client, task["id"], "fail", agent, error="no", retryable=False)
    found = await wait_entries(client, lambda f: len(f) >= n, f"{n} failure notifications")
    assert [e["task_id"] for e in found] == [t["id"] for t in tasks]
    return found


@BOTH
async def test_cursor_paging_and_acknowledgement(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code"], max_concurrent=10)
    found = await fail_tasks(client, "w1", 5)
    ids = [e["id"] for e in found]
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)

    # Paging: two at a time, then an empty page that keeps the cursor.
    first = await read(client, limit=2)
    assert [e["id"] for e in first["items"]] == ids[:2] and first["next_cursor"] == ids[1]
    second = await read(client, after=first["next_cursor"], limit=2)
    assert [e["id"] for e in second["items"]] == ids[2:4]
    third = await read(client, after=second["next_cursor"], limit=2)
    assert [e["id"] for e in third["items"]] == ids[4:]
    last = await read(client, after=third["next_cursor"], limit=2)
    assert last["items"] == [] and last["next_cursor"] == ids[4]

    # By ids (strings or numbers); an id already acknowledged does not count again.
    r = await client.post(f"{URL}/ack", json={"ids": [ids[0], int(ids[2])]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"acknowledged": 2}
    r = await client.post(f"{URL}/ack", json={"ids": [ids[0]]}, headers=ADMIN)
    assert r.json() == {"acknowledged": 0}
    acked = {e["id"]: e for e in await entries(client)}
    assert acked[ids[0]]["acknowledged_by"] == "admin"
    assert acked[ids[0]]["acknowledged_at"] is not None
    assert acked[ids[1]]["acknowledged_at"] is None

    pending = await read(client, unacknowledged="true")
    assert [e["id"] for e in pending["items"]] == [ids[1], ids[3], ids[4]]
    paged = await read(client, unacknowledged="true", after=ids[1], limit=1)
    assert [e["id"] for e in paged["items"]] == [ids[3]] and paged["next_cursor"] == ids[3]

    # Up to an id: everything not yet acknowledged at or below it.
    r = await client.post(f"{URL}/ack", json={"up_to": ids[3]}, headers=ADMIN)
    assert r.json() == {"acknowledged": 2}
    pending = await read(client, unacknowledged="true")
    assert [e["id"] for e in pending["items"]] == [ids[4]]
    # The full list still holds everything.
    assert [e["id"] for e in (await read(client))["items"]] == ids


@BOTH
async def test_only_an_admin_acknowledges(client: httpx.AsyncClient, register: Register) -> None:
    """Reading is open to requesters (tests/api/test_notification_readers.py); an
    acknowledgement is everyone's, so only the admin gives one."""
    _, token = await register("w1", ["code"])
    for headers in (as_agent("alice"), as_agent("w1", token)):
        assert (await client.get(URL, headers=headers)).status_code == 200
    for headers, status, code in (
        (as_agent("alice"), 401, "admin_token_required"),
        (as_agent("w1", token), 403, "admin_required"),
    ):
        r = await client.post(f"{URL}/ack", json={"up_to": "1"}, headers=headers)
        assert_error(r, status, code)
    assert_error(await client.get(URL, headers={"X-Agent-ID": ""}), 401, "missing_agent_id")


@BOTH
@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"after": "abc"}, "invalid_cursor"),
        ({"after": "-1"}, "invalid_cursor"),
        ({"after": "1" * 19}, "invalid_cursor"),
        ({"limit": 0}, None),
        ({"limit": 501}, None),
        ({"unacknowledged": "perhaps"}, None),
        ({"wait_s": "61"}, None),
        ({"wait_s": "-1"}, None),
        ({"wait_s": "soon"}, None),
    ],
)
async def test_bad_list_parameters_are_refused(
    client: httpx.AsyncClient, params: Json, code: str | None
) -> None:
    r = await client.get(URL, params=params, headers=ADMIN)
    assert_error(r, 422, code)


@BOTH
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_acknowledgement"),
        ({"ids": ["1"], "up_to": "2"}, "invalid_acknowledgement"),
        ({"ids": []}, None),
        ({"ids": ["x"]}, None),
        ({"ids": [-1]}, None),
        ({"ids": [2**63]}, None),
        ({"ids": ["1" * 19]}, None),
        ({"ids": [1.5]}, None),
        ({"ids": "1"}, None),
        ({"ids": [str(i) for i in range(1001)]}, None),
        ({"up_to": None}, "invalid_acknowledgement"),
        ({"up_to": "one"}, None),
        ({"up_to": "1", "by": "someone"}, None),
        ([1, 2], None),
    ],
)
async def test_bad_acknowledgements_are_refused(
    client: httpx.AsyncClient, body: Any, code: str | None
) -> None:
    r = await client.post(f"{URL}/ack", json=body, headers=ADMIN)
    assert_error(r, 422, code)


@BOTH
async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"{URL}/ack",
        content=b"{not json",
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500
    assert_error(r, r.status_code, None)


# --- restart and replicas -----------------------------------------------------------------


@asynccontextmanager
async def serving(
    tmp_path: Path, database_url: str | None, window_s: float
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, database_url, notifications={"batch_window_s": window_s})
    async with Runtime.build(settings) as rt:
        transport = httpx.ASGITransport(app=app_for(rt))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "alice"}
        ) as client:
            yield client


async def register_on(client: httpx.AsyncClient, agent: str) -> None:
    r = await client.post(
        "/api/v1/agents",
        json={"capabilities": ["code"], "max_concurrent": 20},
        headers=as_agent(agent),
    )
    assert r.status_code in (200, 201), r.text


async def test_restart_keeps_the_open_digest_and_closes_it_with_every_item(
    tmp_path: Path,
) -> None:
    window = 4.0
    async with serving(tmp_path, None, window) as client:
        await register_on(client, "w1")
        before = [o["task_id"] for o in await complete_many(client, "w1", ["a", "b", "c"])]

        async def holds_all() -> Json | None:
            digest = await _open_digest(client)
            return digest if digest and len(named(digest)) == 3 else None

        opened = await eventually(holds_all, "the open digest to hold the first three")
        assert sorted(named(opened)) == sorted(before)
        assert await entries(client) == []

    # Stopped: the digest is kept with its items, and the cursor with it.
    settings = make_settings(tmp_path, None, notifications={"batch_window_s": window})
    async with Runtime.build(settings, background=False) as idle:
        kept = await idle.store.open_digest()
        assert kept is not None and sorted(kept.data()["completed"], key=str) == sorted(
            opened["data"]["completed"], key=str
        )
        assert await idle.store.get_cursor("notifications") == kept.event_id

    # A new process on the same file takes it up.
    async with serving(tmp_path, None, window) as client:
        await register_on(client, "w1")
        after = [o["task_id"] for o in await complete_many(client, "w1", ["d", "e"])]
        everyone = before + after

        def all_named(found: list[Json]) -> bool:
            return sorted(i for d in digests(found) for i in named(d)) == sorted(everyone)

        found = await wait_entries(client, all_named, "digests naming all five tasks")
        closed = digests(found)
        assert [e["kind"] for e in found] == ["digest"] * len(closed)
        # Each task named once, by the digest whose window holds its completion.
        (first,) = [d for d in closed if d["data"]["opened_at"] == opened["data"]["opened_at"]]
        assert set(before) <= set(named(first))
        for digest in closed:
            start, end = ts(digest["data"]["opened_at"]), ts(digest["data"]["closes_at"])
            ids = named(digest)
            assert all(start <= t < end for t in await completion_times(client, ids)), digest
            assert digest["data"]["counts"]["completed"] == len(ids)
        # With a quick restart (the usual case) that is one digest for all five.
        times = await completion_times(client, everyone)
        if max(times) < ts(first["data"]["closes_at"]):
            assert len(closed) == 1 and sorted(named(first)) == sorted(everyone)


@pytest.mark.postgres
async def test_two_replicas_write_each_notification_once(tmp_path: Path, postgres_url: str) -> None:
    async with (
        serving(tmp_path / "a", postgres_url, 1.0) as one,
        serving(tmp_path / "b", postgres_url, 1.0) as two,
    ):
        await register_on(one, "w1")
        done = [o["task_id"] for o in await complete_many(one, "w1", [f"t{i}" for i in range(6)])]
        doomed = await running(one, "w1", title="doomed", max_attempts=1)
        await act(one, doomed["id"], "fail", "w1", error="no", retryable=False)

        def settled(found: list[Json]) -> bool:
            return bool(digests(found)) and any(e["kind"] == "failed" for e in found)

        await wait_entries(two, settled, "the digest and the failure, read on the other replica")
        found = await entries(one)
        assert sorted(i for d in digests(found) for i in named(d)) == sorted(done)
        assert [e["task_id"] for e in found if e["kind"] == "failed"] == [doomed["id"]]
        assert len({e["id"] for e in found}) == len(found)
