"""Metrics fed by the event log (/metrics, checked with prometheus-client's parser) and
`GET /api/v1/stats`: queue depth by state and priority, the oldest pending task's age,
wait and run time percentiles, throughput over 1, 5 and 15 minutes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatchd.api.ops import create_ops_app
from dispatchd.domain.ids import utcnow
from dispatchd.engine import stats as stats_module
from dispatchd.engine.stats import percentile, stats
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import ADMIN, BOTH, eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"assignment": {"tick_interval_ms": 50}}


@pytest.fixture
async def ops(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_ops_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as c:
        yield c


async def samples(ops: httpx.AsyncClient) -> Samples:
    r = await ops.get("/metrics")
    assert r.status_code == 200
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def transitions(got: Samples, outcome: str, priority: str) -> float:
    key = (("outcome", outcome), ("priority", priority))
    return got.get(("dispatchd_task_transitions_total", key), 0.0)


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/tasks", json={"title": "t", **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def act(client: httpx.AsyncClient, task_id: str, action: str, **body: Any) -> None:
    r = await client.post(f"/api/v1/tasks/{task_id}/{action}", json=body, headers=as_agent("w1"))
    assert r.status_code == 200, r.text


async def claim_all(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 10}, headers=as_agent("w1"))
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


# --- /metrics ---------------------------------------------------------------------------


@BOTH
async def test_transitions_are_counted_by_priority(
    client: httpx.AsyncClient, ops: httpx.AsyncClient, register: Any
) -> None:
    await register("w1", ["code"], max_concurrent=10)
    done = await create(client, priority="high", capabilities=["code"])
    broken = await create(client, priority="low", capabilities=["code"])
    flaky = await create(client, priority="high", capabilities=["code"], max_attempts=3)
    slow = await create(client, priority="critical", capabilities=["code"], timeout_s=1)
    await create(client, priority="medium", capabilities=["nobody-has-this"])
    held = {t["id"] for t in await claim_all(client)}
    assert held == {done["id"], broken["id"], flaky["id"], slow["id"]}
    await act(client, done["id"], "complete", result="ok")
    await act(client, broken["id"], "fail", error="no", retryable=False)
    await act(client, flaky["id"], "fail", error="again", retryable=True)

    async def counted() -> Samples | None:
        got = await samples(ops)
        return got if transitions(got, "timed_out", "critical") == 1 else None

    got = await eventually(counted, "the timeout to be counted", limit_s=15)
    assert transitions(got, "created", "high") == 2
    assert transitions(got, "created", "low") == 1
    assert transitions(got, "created", "critical") == 1
    assert transitions(got, "created", "medium") == 1
    assert transitions(got, "completed", "high") == 1
    assert transitions(got, "failed", "low") == 1
    assert transitions(got, "retried", "high") == 1
    assert transitions(got, "completed", "low") == 0
    # Every assignment was timed (retries keep being assigned: read the log first, then
    # the metrics, which follow it), and each run that ended by completion or failure.
    assigned = await assignments(client, [done, broken, flaky, slow])

    async def timed() -> Samples | None:
        latest = await samples(ops)
        count = latest[("dispatchd_assignment_latency_seconds_count", ())]
        return latest if count >= assigned else None

    got = await eventually(timed, "every assignment to be timed")
    assert got[("dispatchd_assignment_latency_seconds_count", ())] >= assigned
    assert got[("dispatchd_task_run_seconds_count", (("outcome", "completed"),))] == 1
    assert got[("dispatchd_task_run_seconds_count", (("outcome", "failed"),))] == 1
    assert got[("dispatchd_events_total", (("type", "task.created"),))] == 5


async def assignments(client: httpx.AsyncClient, tasks: list[dict[str, Any]]) -> int:
    total = 0
    for task in tasks:
        r = await client.get(f"/api/v1/tasks/{task['id']}/events")
        total += sum(e["type"] == "task.assigned" for e in r.json()["events"])
    return total


async def test_metrics_start_from_the_head_of_the_log(
    runtime: Runtime, client: httpx.AsyncClient, ops: httpx.AsyncClient
) -> None:
    """A replica counts what happens while it runs, not the history it starts on."""
    await create(client, priority="low")

    async def counted() -> Samples | None:
        got = await samples(ops)
        return got if transitions(got, "created", "low") == 1 else None

    got = await eventually(counted, "the creation to be counted")
    assert transitions(got, "created", "high") == 0


# --- /api/v1/stats ------------------------------------------------------------------------


@BOTH
async def test_stats_show_the_queue_and_its_flow(
    client: httpx.AsyncClient, runtime: Runtime, register: Any
) -> None:
    r = await client.get("/api/v1/stats", headers=ADMIN)
    assert r.status_code == 200, r.text
    empty = r.json()
    assert empty["queue"]["oldest_pending_age_s"] is None
    assert empty["wait_s"] == {"n": 0, "p50": None, "p95": None}

    await create(client, priority="high", capabilities=["rare"])
    await create(client, priority="low", capabilities=["rare"])
    await create(client, priority="low", capabilities=["rare"])
    await register("w1", ["code"], max_concurrent=10)
    first = await create(client, capabilities=["code"])
    second = await create(client, capabilities=["code"])
    assert {t["id"] for t in await claim_all(client)} == {first["id"], second["id"]}
    await act(client, first["id"], "complete", result=1)
    await act(client, second["id"], "fail", error="no", retryable=False)

    r = await client.get("/api/v1/stats", headers=ADMIN)
    assert r.status_code == 200, r.text
    got = r.json()
    queue = got["queue"]
    assert queue["by_state"]["pending"] == 3
    assert queue["by_state"]["completed"] == 1 and queue["by_state"]["failed"] == 1
    assert queue["by_state_and_priority"]["pending"] == {
        "low": 2,
        "medium": 0,
        "high": 1,
        "critical": 0,
    }
    assert queue["oldest_pending_age_s"] > 0
    assert got["wait_s"]["n"] == 2 and got["run_s"]["n"] == 2
    assert 0 <= got["wait_s"]["p50"] <= got["wait_s"]["p95"]
    for window in ("1m", "5m", "15m"):
        assert got["throughput"][window]["completed"] == 1
        assert got["throughput"][window]["failed"] == 1
    assert got["agents"]["by_state"]["ready"] == 1

    # Seen from ten minutes on, the finishes fall out of the 1 and 5 minute windows.
    later = await stats(runtime.store, now=utcnow() + timedelta(minutes=10))
    assert later["throughput"]["1m"]["completed"] == 0
    assert later["throughput"]["5m"]["completed"] == 0
    assert later["throughput"]["15m"]["completed"] == 1
    assert later["queue"]["oldest_pending_age_s"] >= 600


async def test_throughput_counts_every_finish_beyond_the_timing_sample(
    client: httpx.AsyncClient, runtime: Runtime, register: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait and run percentiles come from a bounded sample of the latest finishes; the
    # throughput must not: it counts every task that finished in each window.
    monkeypatch.setattr(stats_module, "SAMPLE", 2)
    await register("w1", ["code"], max_concurrent=10)
    made = [await create(client, capabilities=["code"]) for _ in range(5)]
    assert {t["id"] for t in await claim_all(client)} == {t["id"] for t in made}
    for task in made[:4]:
        await act(client, task["id"], "complete", result=1)
    await act(client, made[4]["id"], "fail", error="no", retryable=False)

    got = await stats(runtime.store)
    assert got["sample"] == {"window_s": 900, "tasks": 2, "limit": 2}
    assert got["wait_s"]["n"] == 2
    for window in ("1m", "5m", "15m"):
        assert got["throughput"][window]["completed"] == 4
        assert got["throughput"][window]["failed"] == 1
    assert got["throughput"]["1m"]["completed_per_s"] == round(4 / 60, 4)


async def test_stats_are_for_admins(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/stats")  # no token: 401, asked for one
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "admin_token_required"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 0.0], 1.0) == 10.0
    assert percentile([float(x) for x in range(101)], 0.95) == pytest.approx(95.0)
