"""Fixtures for API tests: a runtime on a fresh store and an in-process HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from dispatchd.api.app import create_app
from dispatchd.config import Settings
from dispatchd.runtime import Runtime

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def make_settings(tmp_path: Path, database_url: str | None = None, **sections: Any) -> Settings:
    raw: dict[str, Any] = {
        "server": {"data_dir": str(tmp_path), "admin_token": ADMIN_TOKEN},
        "database": {"url": database_url} if database_url else {},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return Settings.model_validate(raw)


@pytest.fixture(params=["sqlite"])
def engine(request: pytest.FixtureRequest) -> str:
    """The store engine; parametrize with `indirect=True` to run on ["sqlite", "postgres"]."""
    return str(request.param)


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> str | None:
    if engine == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override to change configuration sections for a test module or test."""
    return {}


@pytest.fixture
async def runtime(
    tmp_path: Path, database_url: str | None, settings_overrides: dict[str, Any]
) -> AsyncIterator[Runtime]:
    settings = make_settings(tmp_path, database_url, **settings_overrides)
    async with Runtime.build(settings) as rt:
        yield rt


# FastAPI prepares an app's routes on its first request, which takes ~0.1 s for ours: the
# tests share one app per body limit (the only setting the app itself reads) and point it
# at each test's runtime, which is where every route finds the store and the engine.
_apps: dict[int, FastAPI] = {}


def app_for(runtime: Runtime) -> FastAPI:
    limit = runtime.settings.server.max_body_bytes
    app = _apps.get(limit)
    if app is None:
        app = _apps[limit] = create_app(settings=runtime.settings)
    app.state.runtime = runtime
    return app


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client speaking as agent `alice`, with no token."""
    transport = httpx.ASGITransport(app=app_for(runtime))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://dispatchd.test", headers={"X-Agent-ID": "alice"}
    ) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    """Headers of an admin call."""
    return {"X-Agent-ID": "admin", "Authorization": f"Bearer {ADMIN_TOKEN}"}


def as_agent(agent_id: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Agent-ID": agent_id}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@pytest.fixture
def register(client: httpx.AsyncClient) -> Callable[..., Any]:
    """Register an agent; returns (agent json, token)."""

    async def do(
        agent_id: str, capabilities: Any = ("code",), **fields: Any
    ) -> tuple[dict[str, Any], str]:
        body = {
            "capabilities": list(capabilities) if isinstance(capabilities, tuple) else capabilities,
            **fields,
        }
        r = await client.post("/api/v1/agents", json=body, headers=as_agent(agent_id))
        assert r.status_code == 201, r.text
        return r.json()["agent"], r.json()["token"]

    return do
