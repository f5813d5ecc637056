"""The operations listener: /health with the database's state, /metrics in Prometheus format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatchd.api.app import create_app
from dispatchd.api.ops import create_ops_app
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent, make_settings
from tests.api.helpers import BOTH


@pytest.fixture
async def ops(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_ops_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as c:
        yield c


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@BOTH
async def test_health_reports_the_database(ops: httpx.AsyncClient, engine: str) -> None:
    r = await ops.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["database"] == {
        "engine": "postgres" if engine == "postgres" else "sqlite",
        "status": "ok",
    }


@pytest.mark.postgres
async def test_health_is_503_when_postgres_is_gone(
    tmp_path: Path, postgres_server, postgres_url: str
) -> None:
    async with Runtime.build(make_settings(tmp_path, postgres_url)) as rt:
        transport = httpx.ASGITransport(app=create_ops_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as ops:
            assert (await ops.get("/health")).status_code == 200
            postgres_server.drop_database(postgres_url)
            r = await ops.get("/health")
            assert r.status_code == 503
            assert r.json()["status"] == "unavailable"
            assert r.json()["database"]["status"] == "unreachable"
            metrics = await ops.get("/metrics")
            assert metrics.status_code == 200
            assert samples(metrics.text)[("dispatchd_database_up", ())] == 0


async def test_health_is_503_when_the_sqlite_file_is_gone(tmp_path: Path) -> None:
    async with Runtime.build(make_settings(tmp_path)) as rt:
        transport = httpx.ASGITransport(app=create_ops_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as ops:
            assert (await ops.get("/health")).status_code == 200
            (tmp_path / "dispatchd.db").unlink()
            r = await ops.get("/health")
            assert r.status_code == 503
            assert r.json()["database"]["status"] == "unreachable"


@BOTH
async def test_metrics_count_requests_by_route_and_tasks_and_agents_by_state(
    client: httpx.AsyncClient, ops: httpx.AsyncClient, register, engine: str
) -> None:
    await register("w1")
    await register("w2")
    for _ in range(3):
        # Nobody registered can do these: they stay pending.
        await client.post("/api/v1/tasks", json={"title": "t", "capabilities": ["nobody"]})
    task = (await client.post("/api/v1/tasks", json={"title": "t", "assigned_to": "w1"})).json()
    await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("w1"))
    await client.get(f"/api/v1/tasks/{task['id']}")
    await client.get("/api/v1/tasks/does-not-exist")
    await client.post(
        "/api/v1/agents/w2/heartbeat", json={"status": "sleeping"}, headers=as_agent("w2")
    )

    r = await ops.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)

    def requests(route: str, method: str, status: str) -> float:
        key = (
            "dispatchd_http_requests_total",
            tuple(sorted({"route": route, "method": method, "status": status}.items())),
        )
        return got.get(key, 0)

    assert requests("/api/v1/tasks", "POST", "201") == 4
    # Every task id falls under one route template, not a label per id.
    assert requests("/api/v1/tasks/{task_id}", "GET", "200") == 1
    assert requests("/api/v1/tasks/{task_id}", "GET", "404") == 1
    latency = (
        "dispatchd_http_request_duration_seconds_count",
        (("method", "POST"), ("route", "/api/v1/tasks")),
    )
    assert got[latency] == 4
    assert got[("dispatchd_tasks", (("state", "pending"),))] == 3
    assert got[("dispatchd_tasks", (("state", "running"),))] == 1
    assert got[("dispatchd_tasks", (("state", "completed"),))] == 0
    assert got[("dispatchd_agents", (("state", "ready"),))] == 1
    assert got[("dispatchd_agents", (("state", "sleeping"),))] == 1
    assert got[("dispatchd_database_up", ())] == 1


async def test_openapi_describes_every_route(runtime: Runtime) -> None:
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        doc = (await c.get("/openapi.json")).json()
    paths = doc["paths"]
    expected = {
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks/batch", "post"),
        ("/api/v1/tasks/{task_id}", "get"),
        ("/api/v1/tasks/{task_id}", "patch"),
        ("/api/v1/tasks/{task_id}/start", "post"),
        ("/api/v1/tasks/{task_id}/progress", "post"),
        ("/api/v1/tasks/{task_id}/complete", "post"),
        ("/api/v1/tasks/{task_id}/fail", "post"),
        ("/api/v1/tasks/{task_id}/comments", "post"),
        ("/api/v1/tasks/{task_id}/retry", "post"),
        ("/api/v1/tasks/{task_id}/input-request", "post"),
        ("/api/v1/tasks/{task_id}/input", "post"),
        ("/api/v1/tasks/{task_id}/review", "post"),
        ("/api/v1/agents", "post"),
        ("/api/v1/agents", "get"),
        ("/api/v1/agents/{agent_id}", "get"),
        ("/api/v1/agents/{agent_id}", "patch"),
        ("/api/v1/agents/{agent_id}", "delete"),
        ("/api/v1/agents/{agent_id}/heartbeat", "post"),
        ("/api/v1/agents/{agent_id}/drain", "post"),
        ("/api/v1/agents/{agent_id}/undrain", "post"),
    }
    present = {(p, m) for p, ops_ in paths.items() for m in ops_}
    assert expected <= present
    schemas = doc["components"]["schemas"]
    for model in (
        "TaskCreate",
        "TaskOut",
        "TaskDetailOut",
        "TaskList",
        "AgentRegister",
        "AgentOut",
        "AgentRegistered",
        "ErrorOut",
    ):
        assert model in schemas
    # Every operation documents the error form.
    for path, methods in paths.items():
        for method, op in methods.items():
            assert "422" in op["responses"] or "404" in op["responses"], (path, method)
