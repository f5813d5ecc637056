"""`/mcp` on the API port of `dispatchd serve`: the same tools over streamable HTTP,
behind the API's bearer tokens, calling the broker as the caller."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from dispatchd.client import AsyncClient
from mcp import Client
from tests.agent.conftest import LiveServer
from tests.integration.server import ServerProcess
from tests.mcp.helpers import call, call_error
from tests.mcp.test_stdio_tools import TOOLS

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@asynccontextmanager
async def http_session(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


async def test_without_a_token_the_endpoint_answers_401_in_the_error_form(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient() as http:
        bare = await http.post(f"{live_server.url}/mcp", json=INITIALIZE, headers=ACCEPT)
        wrong = await http.post(
            f"{live_server.url}/mcp",
            json=INITIALIZE,
            headers={**ACCEPT, "Authorization": "Bearer not-a-token-of-anyone"},
        )
        not_bearer = await http.post(
            f"{live_server.url}/mcp",
            json=INITIALIZE,
            headers={**ACCEPT, "Authorization": f"Basic {live_server.admin_token}"},
        )
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert bare.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_token"
    assert not_bearer.status_code == 401


async def test_with_the_admin_token_the_tools_answer_as_the_caller(
    live_server: LiveServer, unique: str
) -> None:
    headers = {"Authorization": f"Bearer {live_server.admin_token}", "X-Agent-ID": "boss"}
    async with http_session(live_server.url, headers) as session:
        assert {t.name for t in (await session.list_tools()).tools} == TOOLS
        dispatched = await call(
            session, "dispatch_task", {"prompt": "over http", "capabilities": [f"none-{unique}"]}
        )
        assert dispatched["task"]["requester"] == "boss"
        check = await call(session, "check_task", {"task_id": dispatched["task"]["id"]})
        assert check["task"]["status"] == "pending"
        missing = await call_error(session, "check_task", {"task_id": "no-such-task"})
        assert "no task no-such-task" in missing


async def test_an_agent_token_works_for_its_own_agent_only(
    live_server: LiveServer, unique: str
) -> None:
    agent_id = f"planner-{unique}"
    async with AsyncClient(live_server.url, agent_id=agent_id) as planner:
        token = (await planner.register_agent(capabilities=[f"plan-{unique}"])).token
    assert token is not None
    own = {"Authorization": f"Bearer {token}", "X-Agent-ID": agent_id}
    async with http_session(live_server.url, own) as session:
        dispatched = await call(
            session, "dispatch_task", {"prompt": "from an agent", "capabilities": [f"x-{unique}"]}
        )
        assert dispatched["task"]["requester"] == agent_id
    async with httpx.AsyncClient() as http:
        other = await http.post(
            f"{live_server.url}/mcp",
            json=INITIALIZE,
            headers={**ACCEPT, "Authorization": f"Bearer {token}", "X-Agent-ID": "someone-else"},
        )
        unnamed = await http.post(
            f"{live_server.url}/mcp",
            json=INITIALIZE,
            headers={**ACCEPT, "Authorization": f"Bearer {token}"},
        )
    assert other.status_code == 401
    assert other.json()["error"]["code"] == "token_mismatch"
    # Without X-Agent-ID the caller is `mcp`, whose token this is not.
    assert unnamed.status_code == 401


async def test_a_foreign_host_or_origin_is_refused_on_a_loopback_server(
    live_server: LiveServer,
) -> None:
    """DNS rebinding: a page on another site that resolves its name to 127.0.0.1 must not
    reach the tools, even with a token the browser somehow holds."""
    auth = {**ACCEPT, "Authorization": f"Bearer {live_server.admin_token}"}
    async with httpx.AsyncClient() as http:
        host = await http.post(
            f"{live_server.url}/mcp", json=INITIALIZE, headers={**auth, "Host": "evil.example"}
        )
        origin = await http.post(
            f"{live_server.url}/mcp",
            json=INITIALIZE,
            headers={**auth, "Origin": "http://evil.example"},
        )
        fine = await http.post(f"{live_server.url}/mcp", json=INITIALIZE, headers=auth)
    assert host.status_code in (403, 421), host.text
    assert origin.status_code == 403, origin.text
    assert fine.status_code == 200, fine.text


async def test_sigterm_answers_a_waiting_check_task_and_the_server_stops(
    tmp_path: Path,
) -> None:
    """A check_task waiting over /mcp holds the shutdown up no more than the API's own
    long-polls do: the server stops well inside ServerProcess.stop's 15 s."""
    token = "mcp-shutdown-admin-token"
    with ServerProcess(tmp_path / "data", env={"DISPATCH_ADMIN_TOKEN": token}) as server:
        headers = {"Authorization": f"Bearer {token}"}
        async with http_session(server.api_url, headers) as session:
            task = (await call(session, "dispatch_task", {"prompt": "nobody takes this"}))["task"]
            waiting = asyncio.create_task(
                session.call_tool("check_task", {"task_id": task["id"], "wait_s": 120})
            )
            await asyncio.sleep(1.0)  # time for the call to reach the server and wait
            started = time.monotonic()
            assert await asyncio.to_thread(server.stop) == 0
            assert time.monotonic() - started < 15
            # The wait was answered (the task as it is), not cut off.
            answered = await asyncio.wait_for(waiting, 5)
            assert isinstance(answered, CallToolResult) and not answered.is_error
            assert isinstance(answered.structured_content, dict)
            check = answered.structured_content
            assert (check["changed"], check["task"]["status"]) == (False, "pending")
            assert check["waited_s"] < 15


# Run in a fresh interpreter: an app that serves the API but not yet `/mcp` must not have
# imported the MCP SDK (it costs every request its event loop serves); the first request
# to `/mcp` loads it and is answered.
LAZY_SDK = """
import json, sys
from fastapi.testclient import TestClient
from dispatchd.api.app import create_app
from dispatchd.config import Settings

def sdk_loaded():
    return sorted(n for n in sys.modules if n == "mcp" or n.startswith("mcp."))

token = "dsp_admin_" + "z" * 32
settings = Settings.model_validate(
    {"server": {"data_dir": sys.argv[1], "admin_token": token}}
)
auth = {"Authorization": "Bearer " + token, "X-Agent-ID": "boss"}
with TestClient(create_app(settings=settings), base_url="http://127.0.0.1:8000") as client:
    created = client.post(
        "/api/v1/tasks", json={"title": "t", "capabilities": ["x"]}, headers=auth
    )
    before = sdk_loaded()
    bare = client.post("/mcp", json=INITIALIZE, headers=ACCEPT)
    after_refusal = sdk_loaded()
    answer = client.post("/mcp", json=INITIALIZE, headers={**ACCEPT, **auth})
    after = sdk_loaded()
print(json.dumps({
    "created": created.status_code, "before": before, "bare": bare.status_code,
    "after_refusal": after_refusal, "answer": answer.status_code,
    "server": answer.json()["result"]["serverInfo"]["name"], "after": after,
}))
"""


def test_the_sdk_is_loaded_by_the_first_request_to_mcp_not_with_the_app(
    tmp_path: Path,
) -> None:
    code = f"INITIALIZE = {INITIALIZE!r}\nACCEPT = {ACCEPT!r}\n{LAZY_SDK}"
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["created"] == 201
    assert seen["before"] == []
    # A refused caller loads nothing either.
    assert seen["bare"] == 401
    assert seen["after_refusal"] == []
    assert seen["answer"] == 200
    assert seen["server"] == "dispatchd"
    assert "mcp.server.streamable_http_manager" in seen["after"]
