"""The MCP toolset over streamable HTTP at `/mcp` on the API port (SPEC §6).

The endpoint takes the API's own bearer tokens (the admin token, or an agent's token
with its `X-Agent-ID`; 401 without one). Each tool call then goes to the broker through
the SDK with that same token and agent id (default `mcp`), over an in-process ASGI
transport to this very app: no socket, no second copy of the rules, and the caller can do
through MCP exactly what its token lets it do through the API.

The MCP session manager runs for as long as the app's lifespan, which opens it
(`serving`); the server is stateless (each POST stands alone), so nothing is lost when a
client reconnects or reaches another replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dispatchd.api.errors import error_response
from dispatchd.client import AsyncClient
from dispatchd.engine.agents import tokens_equal
from dispatchd.errors import DispatchError
from dispatchd.mcp import build_server
from dispatchd.runtime import Runtime

PATH = "/mcp"
DEFAULT_AGENT = "mcp"
# The in-process client's base URL; the ASGI transport never resolves it.
_LOCAL = "http://dispatchd.local"


def _credentials(headers: Headers) -> tuple[str | None, str]:
    """The bearer token (None when absent or not a bearer) and the agent id."""
    raw = headers.get("authorization", "")
    scheme, _, value = raw.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return token, headers.get("x-agent-id") or DEFAULT_AGENT


class McpEndpoint:
    """The ASGI endpoint: the bearer check, then the app's MCP session manager."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app: FastAPI = scope["app"]
        runtime: Runtime = app.state.runtime
        token, agent_id = _credentials(Headers(scope=scope))
        refusal = await _refusal(runtime, token, agent_id)
        manager: StreamableHTTPSessionManager | None = getattr(app.state, "mcp", None)
        if refusal is None and manager is None:
            refusal = (503, "unavailable", "the MCP endpoint is not running")
        if refusal is not None:
            status, code, message = refusal
            response = error_response(status, code, message)
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="dispatchd"'
            await response(scope, receive, send)
            return
        assert manager is not None
        await manager.handle_request(scope, receive, send)


async def _refusal(
    runtime: Runtime, token: str | None, agent_id: str
) -> tuple[int, str, str] | None:
    if token is None:
        return 401, "unauthorized", "the MCP endpoint needs Authorization: Bearer <token>"
    if tokens_equal(token, runtime.admin.value):
        return None
    try:
        await runtime.agents.authenticate(agent_id, token)
    except DispatchError as exc:
        return exc.status, exc.code, exc.message
    return None


def route() -> Route:
    return Route(PATH, endpoint=McpEndpoint(), methods=["GET", "POST", "DELETE"])


@asynccontextmanager
async def serving(app: FastAPI, host: str) -> AsyncIterator[None]:
    """Run the MCP session manager for the app's lifetime (its lifespan)."""

    @asynccontextmanager
    async def connect(ctx: Context) -> AsyncIterator[AsyncClient]:
        request = ctx.request_context.request
        headers = request.headers if isinstance(request, Request) else Headers()
        token, agent_id = _credentials(Headers(headers=dict(headers)))
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient(
            _LOCAL, agent_id=agent_id, token=token, transport=transport, retries=0
        ) as client:
            yield client

    server = build_server(connect)
    # Creates the session manager; the routing is ours (`route`), behind the token.
    server.streamable_http_app(
        streamable_http_path=PATH, stateless_http=True, json_response=True, host=host
    )
    manager = server.session_manager
    async with manager.run():
        app.state.mcp = manager
        try:
            yield
        finally:
            app.state.mcp = None
