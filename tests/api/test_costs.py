"""Costs through the API (docs/costs.md): reported on progress, completion and failure as
the attempt's running total, summed per attempt, per task and per requester, agent and
day; a task's `max_cost_usd` stops the attempt that crosses it; a requester's daily
budget refuses its creates; bad costs are refused whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatchd.api.ops import create_ops_app
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import (
    ADMIN,
    BOTH,
    act,
    assert_error,
    create_task,
    detail,
    eventually,
    task_events,
    wait_assigned,
)
from tests.api.test_review import open_review

ZERO = {"usd": 0.0, "input_tokens": 0, "output_tokens": 0}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # A failed attempt is retried at once.
    return {"retry": {"backoff_base_ms": 0, "backoff_cap_ms": 0}}


def cost(usd: float = 0.0, input_tokens: int = 0, output_tokens: int = 0) -> dict[str, Any]:
    return {"usd": usd, "input_tokens": input_tokens, "output_tokens": output_tokens}


async def hold(client: httpx.AsyncClient, agent: str = "w1", **fields: Any) -> dict[str, Any]:
    """Create a task for `agent`'s capability and claim it: the task, running."""
    body = {"title": "costly", "capabilities": ["spend"], **fields}
    r = await client.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 1}, headers=as_agent(agent))
    assert r.status_code == 200, r.text
    (task,) = r.json()["tasks"]
    assert task["id"] == r.json()["tasks"][0]["id"] and task["status"] == "running"
    return dict(task)


async def post(
    client: httpx.AsyncClient, task_id: str, action: str, agent: str = "w1", **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/tasks/{task_id}/{action}", json=body, headers=as_agent(agent)
    )


async def cost_stats(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/v1/stats", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json()["costs"])


@BOTH
async def test_progress_reports_running_totals_that_never_count_twice(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"])
    task = await hold(client)
    assert task["cost"] == ZERO and task["max_cost_usd"] is None
    first = await act(client, task["id"], "progress", "w1", cost=cost(0.1, 100, 10))
    assert first["cost"] == cost(0.1, 100, 10)
    # The same report again (a retried call) changes nothing.
    again = await act(client, task["id"], "progress", "w1", cost=cost(0.1, 100, 10))
    assert again["cost"] == cost(0.1, 100, 10)
    # A total with a field left out keeps that field; a lower one never lowers it.
    later = await act(client, task["id"], "progress", "w1", cost={"usd": 0.25, "input_tokens": 50})
    assert later["cost"] == cost(0.25, 100, 10)
    # Completion reports the attempt's final total: only its excess is added.
    done = await act(client, task["id"], "complete", "w1", result="ok", cost=cost(0.3, 400, 60))
    assert done["status"] == "completed"
    assert done["cost"] == cost(0.3, 400, 60)
    shown = await detail(client, task["id"])
    assert shown["cost"] == cost(0.3, 400, 60)
    assert [a["cost"] for a in shown["attempts"]] == [cost(0.3, 400, 60)]
    # Each event carries what its report added; their sum is the total.
    added = [
        e["data"]["cost"] for e in await task_events(client, task["id"]) if "cost" in e["data"]
    ]
    assert len(added) == 3  # the repeat added nothing and says nothing
    assert round(sum(c["usd"] for c in added), 9) == 0.3
    assert sum(c["input_tokens"] for c in added) == 400
    assert sum(c["output_tokens"] for c in added) == 60


@BOTH
async def test_attempts_cost_apart_and_the_task_sums_them(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"])
    task = await hold(client)
    failed = await act(
        client, task["id"], "fail", "w1", error="flaky", retryable=True, cost=cost(0.2, 1000, 5)
    )
    assert failed["status"] == "pending" and failed["cost"] == cost(0.2, 1000, 5)
    # The next attempt starts from nothing: its first total counts whole.
    await eventually(lambda: claim_one(client, "w1"), "the retry to be claimed")
    done = await act(
        client, task["id"], "complete", "w1", result="ok", attempt=2, cost=cost(0.05, 10, 1)
    )
    assert done["cost"] == cost(0.25, 1010, 6)
    shown = await detail(client, task["id"])
    assert [a["cost"] for a in shown["attempts"]] == [cost(0.2, 1000, 5), cost(0.05, 10, 1)]
    stats = await cost_stats(client)
    assert stats["by_requester"]["alice"] == cost(0.25, 1010, 6)
    assert stats["by_agent"]["w1"] == cost(0.25, 1010, 6)
    today = datetime.now(UTC).date().isoformat()
    assert stats["by_day"][today] == cost(0.25, 1010, 6)
    assert stats["total"] == cost(0.25, 1010, 6)
    assert stats["lines"] == [{"day": today, "requester": "alice", "agent": "w1", **done["cost"]}]


async def claim_one(client: httpx.AsyncClient, agent: str) -> dict[str, Any] | None:
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 1}, headers=as_agent(agent))
    assert r.status_code == 200, r.text
    tasks = r.json()["tasks"]
    return dict(tasks[0]) if tasks else None


async def test_stats_split_costs_by_requester_agent_and_day(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"])
    await register("w2", ["spend"])
    mine = await hold(client, "w1")
    await act(client, mine["id"], "complete", "w1", cost=cost(1.5, 10, 20))
    r = await client.post(
        "/api/v1/tasks", json={"title": "b", "capabilities": ["spend"]}, headers=as_agent("bob")
    )
    assert r.status_code == 201
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 1}, headers=as_agent("w2"))
    (theirs,) = r.json()["tasks"]
    await act(client, theirs["id"], "progress", "w2", cost=cost(0.5, 1, 2))
    stats = await cost_stats(client, days=1)
    assert stats["days"] == 1 and stats["since"] == datetime.now(UTC).date().isoformat()
    assert stats["by_requester"] == {"alice": cost(1.5, 10, 20), "bob": cost(0.5, 1, 2)}
    assert stats["by_agent"] == {"w1": cost(1.5, 10, 20), "w2": cost(0.5, 1, 2)}
    assert stats["total"] == cost(2.0, 11, 22)
    assert stats["truncated"] is False
    r = await client.get("/api/v1/stats", params={"days": 0}, headers=ADMIN)
    assert_error(r, 422, "validation_error")


@BOTH
async def test_a_budget_crossed_on_progress_fails_the_task_for_good(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"], max_concurrent=1)
    task = await hold(client, max_cost_usd=1.0, max_attempts=3, escalate_to="spend")
    # Spending exactly the budget is allowed.
    at = await act(client, task["id"], "progress", "w1", cost=cost(1.0, 5, 5))
    assert at["status"] == "running" and at["max_cost_usd"] == 1.0
    over = await act(client, task["id"], "progress", "w1", message="more", cost=cost(1.2, 9, 9))
    assert over["status"] == "failed"
    assert over["error_code"] == "budget_exceeded"
    assert "budget" in over["error"]
    assert over["cost"] == cost(1.2, 9, 9)
    assert over["attempt"] == 1 and over["assignee"] == "w1"
    shown = await detail(client, task["id"])
    assert shown["attempts"][0]["outcome"] == "failed"
    assert shown["attempts"][0]["cost"] == cost(1.2, 9, 9)
    assert shown["progress_log"][-1]["message"] == "more"
    (failure,) = await task_events(client, task["id"], "task.failed")
    assert failure["data"]["code"] == "budget_exceeded" and failure["data"]["final"] is True
    assert failure["data"]["cost"] == cost(0.2, 4, 4)
    # Not retried, not escalated (another attempt would spend more); the agent is free.
    assert await task_events(client, task["id"], "task.retrying") == []
    assert all(
        e["data"].get("to") is None for e in await task_events(client, task["id"], "task.escalated")
    )
    agent = (await client.get("/api/v1/agents/w1", headers=as_agent("w1"))).json()
    assert agent["active_tasks"] == 0
    # The agent's later reports are refused: the attempt is over.
    r = await post(client, task["id"], "complete", result="late")
    assert_error(r, 409, None)
    assert (await detail(client, task["id"]))["cost"] == cost(1.2, 9, 9)


async def test_a_completion_over_budget_fails_but_keeps_its_result(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"])
    task = await hold(client, max_cost_usd=0.5)
    done = await act(
        client, task["id"], "complete", "w1", result={"answer": 42}, summary="s", cost={"usd": 0.75}
    )
    assert done["status"] == "failed" and done["error_code"] == "budget_exceeded"
    assert done["result"] == {"answer": 42} and done["summary"] == "s"
    assert done["cost"]["usd"] == 0.75
    assert await task_events(client, task["id"], "task.completed") == []


async def test_a_budget_stops_a_retryable_failure_from_retrying(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"])
    task = await hold(client, max_cost_usd=0.5, max_attempts=5)
    out = await act(client, task["id"], "fail", "w1", error="x", retryable=True, cost={"usd": 0.6})
    assert out["status"] == "failed" and out["error_code"] == "budget_exceeded"


async def test_a_batch_completion_carries_each_items_cost(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"], max_concurrent=5)
    a = await hold(client)
    b = await hold(client, max_cost_usd=0.1)
    items = [
        {"task_id": a["id"], "result": 1, "cost": cost(0.2, 3, 4)},
        {"task_id": b["id"], "result": 2, "cost": {"usd": 0.3}},
    ]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["items"]
    assert first["task"]["status"] == "completed" and first["task"]["cost"] == cost(0.2, 3, 4)
    assert second["task"]["status"] == "failed"
    assert second["task"]["error_code"] == "budget_exceeded"
    assert (await cost_stats(client))["by_requester"]["alice"]["usd"] == 0.5


class TestDailyBudgets:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        budgets = {"requester_daily_usd": 1.0, "requesters": {"bob": 0.0, "carol": 5.0}}
        return {"budgets": budgets}

    @BOTH
    async def test_a_requester_over_its_daily_budget_may_not_create(
        self, client: httpx.AsyncClient, register
    ) -> None:
        await over_budget(client, register)


async def over_budget(client: httpx.AsyncClient, register: Any) -> None:
    await register("w1", ["spend"])
    task = await hold(client)
    keyed = await client.post(
        "/api/v1/tasks", json={"title": "kept"}, headers={"Idempotency-Key": "k1"}
    )
    assert keyed.status_code == 201
    await act(client, task["id"], "complete", "w1", cost={"usd": 0.6})
    # Under the budget still.
    assert (await client.post("/api/v1/tasks", json={"title": "ok"})).status_code == 201
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 1}, headers=as_agent("w1"))
    (second,) = r.json()["tasks"]
    await act(client, second["id"], "progress", "w1", cost={"usd": 0.4})
    before = (await client.get("/api/v1/tasks", params={"requester": "alice"})).json()["items"]
    r = await client.post("/api/v1/tasks", json={"title": "one too many"})
    err = assert_error(r, 429, "budget_exceeded")
    now = datetime.now(UTC)
    reset = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    assert err["details"]["reset_at"] == reset.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert err["details"]["budget_usd"] == 1.0 and err["details"]["spent_usd"] == 1.0
    assert 0 < int(r.headers["Retry-After"]) <= 86_401
    r = await client.post("/api/v1/tasks/batch", json={"tasks": [{"title": "x"}]})
    assert_error(r, 429, "budget_exceeded")
    after = (await client.get("/api/v1/tasks", params={"requester": "alice"})).json()["items"]
    assert [t["id"] for t in after] == [t["id"] for t in before]
    # A repeat of a create made before answers as ever: nothing new is made.
    again = await client.post(
        "/api/v1/tasks", json={"title": "kept"}, headers={"Idempotency-Key": "k1"}
    )
    assert again.status_code == 200 and again.json()["id"] == keyed.json()["id"]
    # Budgets are per requester: carol's own is larger, bob's is nothing at all.
    carol = await client.post("/api/v1/tasks", json={"title": "c"}, headers=as_agent("carol"))
    assert carol.status_code == 201
    bob = await client.post("/api/v1/tasks", json={"title": "b"}, headers=as_agent("bob"))
    assert_error(bob, 429, "budget_exceeded")


BAD_COSTS = [
    ({"usd": -0.01}, "cost.usd"),
    ({"usd": "0.5"}, "cost.usd"),
    ({"usd": "lots"}, "cost.usd"),
    ({"usd": True}, "cost.usd"),
    ({"input_tokens": -1}, "cost.input_tokens"),
    ({"input_tokens": 1.5}, "cost.input_tokens"),
    ({"output_tokens": "9"}, "cost.output_tokens"),
    ({"dollars": 1}, "cost.dollars"),
    ("1.0", "cost"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_COSTS)
@pytest.mark.parametrize("action", ["progress", "complete", "fail"])
async def test_a_bad_cost_is_refused_naming_its_field_and_nothing_is_written(
    client: httpx.AsyncClient, register, action: str, bad: Any, field: str
) -> None:
    await register("w1", ["spend"])
    task = await hold(client)
    events = await task_events(client, task["id"])
    body: dict[str, Any] = {"cost": bad, "result": "r", "error": "e", "message": "m"}
    body = {k: v for k, v in body.items() if k == "cost" or _fits(action, k)}
    r = await post(client, task["id"], action, **body)
    err = assert_error(r, 422, "validation_error")
    assert err["message"].startswith(field), err
    shown = await detail(client, task["id"])
    assert shown["status"] == "running" and shown["cost"] == ZERO
    assert shown["progress_log"] == [] and shown["result"] is None
    assert await task_events(client, task["id"]) == events
    assert (await cost_stats(client))["lines"] == []


def _fits(action: str, key: str) -> bool:
    return {"progress": "message", "complete": "result", "fail": "error"}[action] == key


async def test_a_bad_cost_in_a_batch_completion_refuses_the_whole_batch(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"], max_concurrent=2)
    a = await hold(client)
    b = await hold(client)
    items = [
        {"task_id": a["id"], "result": 1, "cost": {"usd": 0.1}},
        {"task_id": b["id"], "result": 2, "cost": {"usd": -1}},
    ]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("w1")
    )
    err = assert_error(r, 422, "validation_error")
    assert err["message"].startswith("items.1.cost.usd"), err
    for t in (a, b):
        shown = await detail(client, t["id"])
        assert shown["status"] == "running" and shown["cost"] == ZERO


@pytest.mark.parametrize("bad", [-1, "5", True, 1e12, {"usd": 1}])
async def test_a_bad_budget_is_refused_at_creation(client: httpx.AsyncClient, bad: Any) -> None:
    before = (await client.get("/api/v1/tasks")).json()["items"]
    r = await client.post("/api/v1/tasks", json={"title": "t", "max_cost_usd": bad})
    err = assert_error(r, 422, "validation_error")
    assert err["message"].startswith("max_cost_usd"), err
    assert (await client.get("/api/v1/tasks")).json()["items"] == before


@pytest.fixture
async def ops(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_ops_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as c:
        yield c


async def test_prometheus_counts_costs_by_requester_and_agent(
    client: httpx.AsyncClient, register, ops: httpx.AsyncClient
) -> None:
    await register("w1", ["spend"])
    task = await hold(client)
    await act(client, task["id"], "progress", "w1", cost=cost(0.25, 100, 7))
    await act(client, task["id"], "progress", "w1", cost=cost(0.25, 100, 7))
    await act(client, task["id"], "complete", "w1", cost=cost(0.75, 300, 9))

    async def counted() -> dict[str, float] | None:
        found: dict[str, float] = {}
        text = (await ops.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("requester") == "alice" and s.labels.get("agent") == "w1":
                    found[s.name + s.labels.get("direction", "")] = s.value
        return found if found.get("dispatchd_cost_usd_total") == 0.75 else None

    found = await eventually(counted, "the cost counters")
    assert found["dispatchd_cost_tokens_totalinput"] == 300
    assert found["dispatchd_cost_tokens_totaloutput"] == 9


async def test_a_reviewed_task_counts_each_attempt_and_its_review_apart(
    client: httpx.AsyncClient, register
) -> None:
    await register("w1", ["spend"])
    await register("aegis", ["audit"])
    task = await create_task(client, capabilities=["spend"], review=True, reviewer="aegis")
    await wait_assigned(client, task["id"], "w1")
    first = await act(client, task["id"], "complete", "w1", result="v1", cost={"usd": 0.3})
    assert first["status"] == "review" and first["cost"]["usd"] == 0.3
    review = await open_review(client, task["id"], 1)
    await wait_assigned(client, review["id"], "aegis")
    rejected = {"verdict": "rejected", "feedback": "again"}
    await act(client, review["id"], "complete", "aegis", result=rejected, cost={"usd": 0.05})
    # The reviewer's cost is the review task's own.
    await wait_assigned(client, task["id"], "w1", attempt=2)
    again = await act(client, task["id"], "complete", "w1", result="v2", cost={"usd": 0.2})
    assert again["cost"]["usd"] == 0.5
    shown = await detail(client, task["id"])
    assert [a["cost"]["usd"] for a in shown["attempts"]] == [0.3, 0.2]
    r = await client.post(
        f"/api/v1/tasks/{review['id']}/progress",
        json={"cost": {"usd": 0.01}},
        headers=as_agent("aegis"),
    )
    assert r.status_code == 409  # the review is done; its cost was reported with the verdict
    assert (await detail(client, review["id"]))["cost"]["usd"] == 0.05
    stats = await cost_stats(client)
    assert stats["by_agent"]["w1"]["usd"] == 0.5 and stats["by_agent"]["aegis"]["usd"] == 0.05
