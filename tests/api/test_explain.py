"""GET /api/v1/tasks/{id}/explain: every agent with its score or the reason it was left
out, why a task waits, and which model it runs on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import as_agent
from tests.api.helpers import (
    ADMIN,
    BOTH,
    agent_status,
    assert_error,
    create_task,
    eventually,
    explain,
    heartbeat,
    ts,
    wait_assigned,
)

# --- helpers ----------------------------------------------------------------------------


def excluded(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(x["agent_id"], x["reason"]) for x in report["excluded"]]


async def drain(client: httpx.AsyncClient, agent_id: str) -> None:
    r = await client.post(f"/api/v1/agents/{agent_id}/drain", headers=ADMIN)
    assert r.status_code == 200, r.text


# --- candidates -------------------------------------------------------------------------


@BOTH
async def test_candidates_are_scored_in_order_with_the_best_first(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("a-ready", {"code": 1.0})
    await register("b-sleepy", {"code": 1.0}, status="sleeping", max_concurrent=5)
    await register("c-weak", {"code": 0.5, "docs": 1.0})
    await register("d-busy", {"code": 0.9}, status="busy")
    await register("e-docs", {"docs": 1.0})
    task = await create_task(client, capabilities=["code"], priority="high")
    await wait_assigned(client, task["id"], "a-ready")

    report = await explain(client, task["id"])
    assert report["task_id"] == task["id"]
    assert report["status"] == "assigned"
    assert report["assignee"] == "a-ready"
    assert report["capabilities"] == ["code"]
    assert report["priority"] == "high"
    assert report["owner"] is None
    assert report["owner_filter"] is True
    assert report["waiting"] is None
    assert report["best"] == "a-ready"
    # Score = match x availability x priority weight (high = 3).
    assert [
        (c["agent_id"], c["score"], c["capability_match"], c["availability"], c["load"], c["limit"])
        for c in report["candidates"]
    ] == [
        ("a-ready", 3.0, 1.0, 1.0, 1, 3),
        ("b-sleepy", 2.4, 1.0, 0.8, 0, 5),
        ("c-weak", 1.5, 0.5, 1.0, 0, 3),
        ("d-busy", 1.35, 0.9, 0.5, 0, 3),
    ]
    first = report["candidates"][0]
    assert first["last_assigned_at"] is not None
    assert all(c["last_assigned_at"] is None for c in report["candidates"][1:])
    assert excluded(report) == [("e-docs", "missing_capability")]
    assert "code" in report["excluded"][0]["detail"]
    assert abs(ts(report["at"]) - datetime.now(UTC)) < timedelta(minutes=1)


@BOTH
async def test_tie_breaks_show_in_the_order(client: httpx.AsyncClient, register: Any) -> None:
    await register("a", ["tie"])
    await register("b", ["tie"])
    await register("c", ["tie"])
    held = await create_task(client, capabilities=["tie"], assigned_to="a")
    await wait_assigned(client, held["id"], "a")
    # a holds one; b and c hold none and were never given one: the smaller id of those.
    task = await create_task(client, capabilities=["nobody-has-it"])
    probe = await create_task(client, capabilities=["tie"])
    await wait_assigned(client, probe["id"], "b")
    # Now c holds none; a and b one each, and a has waited longer since.
    report = await explain(client, probe["id"])
    assert [(c["agent_id"], c["load"]) for c in report["candidates"]] == [
        ("c", 0),
        ("a", 1),
        ("b", 1),
    ]
    assert report["best"] == "c"
    assert (await explain(client, task["id"]))["best"] is None


# --- exclusions -------------------------------------------------------------------------


@BOTH
async def test_every_agent_left_out_is_listed_with_its_reason(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("a-docs", ["docs"], owner="carol")
    await register("b-bob", ["code"], owner="bob")
    await register("c-drained", ["code"], owner="carol")
    await drain(client, "c-drained")
    await register("d-degraded", ["code"], owner="carol", status="degraded")
    await register("e-full", ["code", "solo"], owner="carol", max_concurrent=1)
    held = await create_task(client, capabilities=["solo"], owner="carol")
    await wait_assigned(client, held["id"], "e-full")
    await register("f-nobody", ["code"])

    task = await create_task(client, capabilities=["code"], owner="carol")
    report = await explain(client, task["id"])
    assert report["status"] == "pending"
    assert report["owner"] == "carol"
    assert report["candidates"] == [] and report["best"] is None
    assert excluded(report) == [
        ("a-docs", "missing_capability"),
        ("b-bob", "owner_mismatch"),
        ("f-nobody", "owner_mismatch"),
        ("c-drained", "draining"),
        ("d-degraded", "degraded"),
        ("e-full", "at_capacity"),
    ]
    details = {x["agent_id"]: x["detail"] for x in report["excluded"]}
    assert "code" in details["a-docs"]
    assert "bob" in details["b-bob"] and "carol" in details["b-bob"]
    assert "1 of 1" in details["e-full"]
    assert report["waiting"] == "no agent can take it now: see excluded"


@pytest.mark.parametrize("settings_overrides", [{"assignment": {"owner_filter_enabled": False}}])
async def test_without_the_owner_filter_no_agent_is_left_out_for_its_owner(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("b-bob", ["code"], owner="bob", status="degraded")
    task = await create_task(client, capabilities=["code"], owner="carol")
    report = await explain(client, task["id"])
    assert report["owner_filter"] is False
    assert excluded(report) == [("b-bob", "degraded")]


@BOTH
@pytest.mark.parametrize("settings_overrides", [{"assignment": {"wake_timeout_ms": 300}}])
async def test_an_offline_agent_is_left_out_as_offline(
    client: httpx.AsyncClient, register: Any
) -> None:
    # Given a task it neither starts nor heartbeats for, the agent is taken as gone.
    await register("w1", ["code"], status="sleeping")
    task = await create_task(client, capabilities=["code"])

    async def offline() -> bool:
        return await agent_status(client, "w1") == "offline"

    await eventually(offline, "w1 to be marked offline")
    report = await explain(client, task["id"])
    assert excluded(report) == [("w1", "offline")]
    assert report["candidates"] == []


@BOTH
async def test_a_named_task_lists_the_others_as_not_named(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("a-strong", {"code": 1.0})
    await register("b-named", {"code": 0.2})
    await register("c-other", {"docs": 1.0})
    await drain(client, "b-named")
    task = await create_task(client, capabilities=["code"], assigned_to="b-named")
    report = await explain(client, task["id"])
    assert report["status"] == "pending"
    assert excluded(report) == [
        ("a-strong", "not_named"),
        ("c-other", "not_named"),
        ("b-named", "draining"),
    ]
    assert "b-named" in report["excluded"][0]["detail"]
    assert report["waiting"] == "waiting for b-named, named by the requester, to have room"


# --- waiting ----------------------------------------------------------------------------


@BOTH
async def test_a_task_blocked_on_dependencies_says_which(
    client: httpx.AsyncClient,
) -> None:
    first = await create_task(client, capabilities=["nobody-has-it"])
    second = await create_task(client, capabilities=["nobody-has-it"])
    child = await create_task(client, depends_on=[second["id"], first["id"]])
    report = await explain(client, child["id"])
    assert report["status"] == "blocked"
    assert report["waiting"] == f"blocked on {', '.join(sorted([first['id'], second['id']]))}"


@BOTH
async def test_a_deferred_task_says_until_when(client: httpx.AsyncClient) -> None:
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    task = await create_task(client, run_at=run_at.isoformat())
    report = await explain(client, task["id"])
    assert report["status"] == "blocked"
    assert report["waiting"].startswith("deferred until run_at ")
    assert ts(report["waiting"].removeprefix("deferred until run_at ")) == run_at


@BOTH
@pytest.mark.parametrize("settings_overrides", [{"retry": {"backoff_base_ms": 600_000}}])
async def test_a_task_backing_off_says_until_when(client: httpx.AsyncClient, register: Any) -> None:
    await register("w1", ["code"])
    task = await create_task(client, capabilities=["code"])
    await wait_assigned(client, task["id"], "w1")
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/fail",
        json={"error": "flaky", "retryable": True},
        headers=as_agent("w1"),
    )
    assert r.status_code == 200, r.text
    retry_at = r.json()["retry_at"]
    assert r.json()["status"] == "pending" and retry_at
    report = await explain(client, task["id"])
    assert report["status"] == "pending"
    assert report["waiting"].startswith("backing off until ")
    until = ts(report["waiting"].removeprefix("backing off until "))
    assert until == ts(retry_at)
    # The agent is free and able: only the backoff holds the task.
    assert [c["agent_id"] for c in report["candidates"]] == ["w1"]


@BOTH
async def test_a_task_nobody_can_take_says_so(client: httpx.AsyncClient, register: Any) -> None:
    task = await create_task(client, capabilities=["nobody-has-it"])
    report = await explain(client, task["id"])
    assert report["candidates"] == [] and report["excluded"] == []
    assert report["waiting"] == "no agent can take it now: see excluded"


# --- model routing ----------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("fields", "model"),
    [
        ({"title": "Debug the flaky login test"}, ("opus", "complex")),
        ({"title": "all hands", "priority": "critical"}, ("opus", "complex")),
        ({"title": "Summarize the thread", "priority": "low"}, ("haiku", "routine")),
        ({"title": "Summarize the thread", "priority": "high"}, (None, None)),
        ({"title": "Debug it", "model": "gpt-x"}, ("gpt-x", None)),
    ],
)
async def test_the_model_routing_of_a_waiting_task_is_shown(
    client: httpx.AsyncClient, fields: dict[str, Any], model: tuple[str | None, str | None]
) -> None:
    task = await create_task(client, capabilities=["nobody-has-it"], **fields)
    report = await explain(client, task["id"])
    assert (report["model"]["model"], report["model"]["tier"]) == model
    assert report["model"]["reason"]


@BOTH
async def test_the_best_agents_own_model_is_shown(client: httpx.AsyncClient, register: Any) -> None:
    await register("w1", ["code"], dispatch_model="local-llama", status="degraded")
    task = await create_task(client, title="Debug it", capabilities=["code"])
    # Nobody can take it: the routing is the tier's.
    report = await explain(client, task["id"])
    assert (report["model"]["model"], report["model"]["tier"]) == ("opus", "complex")
    await heartbeat(client, "w1", "ready")
    got = await wait_assigned(client, task["id"], "w1")
    assert got["model"] == "local-llama"
    report = await explain(client, task["id"])
    assert report["model"]["model"] == "local-llama"


@BOTH
async def test_an_assigned_task_shows_the_model_it_was_given(
    client: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"])
    task = await create_task(client, title="Refactor the store", capabilities=["code"])
    got = await wait_assigned(client, task["id"], "w1")
    assert got["model"] == "opus"
    report = await explain(client, task["id"])
    assert report["model"]["model"] == "opus"


# --- errors -----------------------------------------------------------------------------


@BOTH
async def test_an_unknown_task_is_a_404_in_the_error_form(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/tasks/no-such-task/explain")
    assert_error(r, 404, "not_found")
