"""Fixtures of the MCP tests: one real `dispatchd serve` per module (SQLite, a known admin
token), an admin client of it, and unique names for each test's agents and tags."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from dispatchd.client import AsyncClient
from tests.agent.conftest import LiveServer
from tests.integration.server import ServerProcess

ADMIN_TOKEN = "mcp-tests-admin-token"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("server")
    env = {"DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN, "DISPATCH_NOTIFICATIONS__BATCH_WINDOW_S": "1"}
    with ServerProcess(data_dir, env=env) as server:
        yield LiveServer(server.api_url, ADMIN_TOKEN, server)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def admin(live_server: LiveServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        live_server.url, agent_id="operator", admin_token=live_server.admin_token
    ) as client:
        yield client
