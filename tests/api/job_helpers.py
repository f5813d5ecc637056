"""Helpers of the background-job tests: the injected failure, and what /health and
/metrics say about a job."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dispatchd.api.ops import create_ops_app
from dispatchd.runtime import Runtime
from tests.api.helpers import eventually


class Boom(RuntimeError):
    """The injected failure."""


def ops_client(runtime: Runtime) -> httpx.AsyncClient:
    """A client of the runtime's ops port (/health, /metrics)."""
    transport = httpx.ASGITransport(app=create_ops_app(runtime))
    return httpx.AsyncClient(transport=transport, base_url="http://ops.test")


def counter(text: str, name: str, job: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("job") == job:
                return s.value
    return 0.0


async def metric(ops: httpx.AsyncClient, name: str, job: str) -> float:
    r = await ops.get("/metrics")
    assert r.status_code == 200
    return counter(r.text, name, job)


async def health_says(
    ops: httpx.AsyncClient, job: str, *, down: bool, state: str | None = None
) -> dict[str, Any]:
    """/health once `job` is down (503, named among the jobs down; in `state`, if given)
    or up again (200)."""

    async def probe() -> dict[str, Any] | None:
        r = await ops.get("/health")
        body: dict[str, Any] = r.json()
        named = r.status_code == 503 and job in body["jobs_down"]
        if down and named and (state is None or body["jobs"][job]["state"] == state):
            return body
        if not down and r.status_code == 200 and body["jobs"][job]["state"] == "running":
            return body
        return None

    return await eventually(probe, f"/health saying {job} is {'down' if down else 'up'}")
