"""The MCP SDK's side of `/mcp`: the toolset's server and its session manager.

Kept apart from `api/mcp_http.py` so that the SDK (several hundred modules) is imported
only by a process that is asked for `/mcp`: loaded into every server, it made the event
loop's worst pauses several times longer (bench/README.md) for users who never call it.
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

from dispatchd.api.mcp_http import PATH, credentials
from dispatchd.client import AsyncClient
from dispatchd.mcp import build_server

# The in-process client's base URL; the ASGI transport never resolves it.
_LOCAL = "http://dispatchd.local"


@asynccontextmanager
async def session_manager(app: FastAPI, host: str) -> AsyncIterator[StreamableHTTPSessionManager]:
    """The toolset's session manager, running until the context ends.

    Each tool call goes to the broker through the SDK with the caller's own token and
    agent id, over an in-process ASGI transport to this very app: no socket, no second copy
    of the rules.
    """

    @asynccontextmanager
    async def connect(ctx: Context) -> AsyncIterator[AsyncClient]:
        request = ctx.request_context.request
        headers = request.headers if isinstance(request, Request) else Headers()
        token, agent_id = credentials(Headers(headers=dict(headers)))
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient(
            _LOCAL, agent_id=agent_id, token=token, transport=transport, retries=0
        ) as client:
            yield client

    server = build_server(connect)
    # Creates the session manager; the routing is ours (`mcp_http.route`), behind the token.
    server.streamable_http_app(
        streamable_http_path=PATH, stateless_http=True, json_response=True, host=host
    )
    manager = server.session_manager
    async with manager.run():
        yield manager
