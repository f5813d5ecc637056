"""Helpers of the webhook API tests: the admin routes, events to deliver, waiting for the
receiver and the deliveries API, and runtimes built by a test itself (restarts, replicas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from dispatchd.api.app import create_app
from dispatchd.config import Settings
from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, make_settings
from tests.api.helpers import ADMIN, eventually
from tests.support.receiver import Receiver

# Small enough that a test retries in milliseconds; a breaker that does not get in the way
# unless a test asks for it.
FAST: dict[str, Any] = {
    "backoff_base_ms": 40,
    "backoff_cap_ms": 1000,
    "max_attempts": 4,
    "breaker_threshold": 100,
    "breaker_cooldown_s": 1,
    "timeout_s": 5,
}
API = "/api/v1/webhooks"


async def create_webhook(
    client: httpx.AsyncClient, url: str, **body: Any
) -> tuple[dict[str, Any], str]:
    """POST a webhook as admin; (the webhook, its secret)."""
    r = await client.post(API, json={"url": url, **body}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["webhook"], r.json()["secret"]


async def get_webhook(client: httpx.AsyncClient, hook_id: str) -> dict[str, Any]:
    r = await client.get(f"{API}/{hook_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def deliveries(client: httpx.AsyncClient, hook_id: str, **params: Any) -> list[Any]:
    """The webhook's deliveries, newest first."""
    r = await client.get(f"{API}/{hook_id}/deliveries", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def task_created(client: httpx.AsyncClient, title: str = "a task") -> str:
    """Create a task (no agent can take it); the id of its task.created event."""
    r = await client.post("/api/v1/tasks", json={"title": title, "capabilities": ["nobody"]})
    assert r.status_code == 201, r.text
    r = await client.get(f"/api/v1/tasks/{r.json()['id']}/events")
    assert r.status_code == 200, r.text
    [created] = [e for e in r.json()["events"] if e["type"] == "task.created"]
    return str(created["id"])


async def wait_deliveries(
    client: httpx.AsyncClient, hook_id: str, count: int, status: str = "delivered"
) -> list[Any]:
    """The webhook's deliveries, oldest first, once `count` of them have `status`."""

    async def probe() -> list[Any] | None:
        items = await deliveries(client, hook_id)
        done = [d for d in items if d["status"] == status]
        return list(reversed(items)) if len(done) >= count else None

    return await eventually(probe, f"{count} {status} deliveries of webhook {hook_id}")


async def wait_requests(receiver: Receiver, count: int, path: str | None = None) -> list[Any]:
    """What the receiver got (at `path`), once it is at least `count` requests."""

    def probe() -> list[Any] | None:
        got = receiver.requests(path)
        return got if len(got) >= count else None

    return await eventually(probe, f"{count} requests at the receiver")


def restart_settings(tmp_path: Path, database_url: str | None, **values: Any) -> Settings:
    """Settings for a runtime a test builds itself, `webhooks` over FAST."""
    return make_settings(tmp_path, database_url, webhooks={**FAST, **values})


async def api(rt: Runtime, *, own_app: bool = False) -> httpx.AsyncClient:
    """A client of `rt`'s API; `own_app` for runtimes that run side by side (the shared
    test app serves one runtime at a time)."""
    app = create_app(runtime=rt) if own_app else app_for(rt)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dispatchd.test",
        headers={"X-Agent-ID": "alice"},
    )
