"""Fixtures of the agent-side tests (SDK, Worker, Runner, local agent API, board sources).

They run against a real `dispatchd serve` process, one per test module, over real HTTP.
Tests in a module share that server, so each one names its agents and capability tags
with the `unique` fixture and never sees another test's tasks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from dispatchd.client import AsyncClient
from tests.integration.server import ServerProcess

ADMIN_TOKEN = "agent-side-admin-token"


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_token: str
    process: ServerProcess


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A `dispatchd serve` on SQLite with a known admin token, for the whole module."""
    data_dir = tmp_path_factory.mktemp("server")
    with ServerProcess(data_dir, env={"DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN}) as server:
        yield LiveServer(server.api_url, ADMIN_TOKEN, server)


@pytest.fixture
def unique() -> str:
    """A short random suffix for the agent ids and tags of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def requester(live_server: LiveServer) -> AsyncIterator[AsyncClient]:
    """A client for the person who submits tasks, holding the admin token."""
    async with AsyncClient(
        live_server.url, agent_id="requester", admin_token=live_server.admin_token
    ) as client:
        yield client
