"""The MCP toolset over streamable HTTP at `/mcp` on the API port (SPEC §6).

The endpoint takes the API's own bearer tokens (the admin token, or an agent's token
with its `X-Agent-ID`; 401 without one). Each tool call then goes to the broker through
the SDK with that same token and agent id (default `mcp`), over an in-process ASGI
transport to this very app (`api/mcp_serving.py`): the caller can do through MCP exactly
what its token lets it do through the API.

The MCP SDK is loaded, and its session manager started, by the first authorised request to
`/mcp`, not with the app: a server nobody asks for `/mcp` never imports it (it costs the
event loop, see `api/mcp_serving.py`). The manager then runs until the app's lifespan ends
(`McpHost`, opened by the lifespan); the server is stateless (each POST stands alone), so
nothing is lost when a client reconnects or reaches another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dispatchd.api.errors import error_response
from dispatchd.engine.agents import tokens_equal
from dispatchd.errors import DispatchError
from dispatchd.runtime import Runtime

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

log = logging.getLogger(__name__)

# The module that imports the MCP SDK (loaded on first use).
_SERVING = "dispatchd.api.mcp_serving"

PATH = "/mcp"
DEFAULT_AGENT = "mcp"


def credentials(headers: Headers) -> tuple[str | None, str]:
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
        token, agent_id = credentials(Headers(scope=scope))
        refusal = await _refusal(runtime, token, agent_id)
        manager: StreamableHTTPSessionManager | None = None
        if refusal is None:
            host: McpHost | None = getattr(app.state, "mcp", None)
            manager = await host.manager() if host is not None else None
            if manager is None:
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


class McpHost:
    """The MCP session manager, started by the first request that needs it.

    A task of the app's lifespan waits until asked, then imports the SDK (in a thread, so
    that the event loop goes on answering meanwhile), runs the session manager and keeps it
    running until the lifespan ends. Opened by `hosting`.
    """

    def __init__(self, app: FastAPI, host: str) -> None:
        self._app = app
        self._host = host
        self._wanted = asyncio.Event()
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._manager: StreamableHTTPSessionManager | None = None

    @property
    def started(self) -> bool:
        return self._manager is not None

    async def manager(self) -> StreamableHTTPSessionManager | None:
        """The running manager (started now if it is not yet); None once stopped."""
        self._wanted.set()
        await self._ready.wait()
        return self._manager

    async def run(self) -> None:
        await self._wanted.wait()
        try:
            module = await asyncio.to_thread(importlib.import_module, _SERVING)
            async with module.session_manager(self._app, self._host) as manager:
                self._manager = manager
                self._ready.set()
                await self._stop.wait()
        except Exception:
            log.exception("the MCP endpoint could not start", extra={"action": "mcp_start"})
        finally:
            self._manager = None
            self._ready.set()

    def stop(self) -> None:
        self._stop.set()


@asynccontextmanager
async def hosting(app: FastAPI, host: str) -> AsyncIterator[None]:
    """Offer `/mcp` for the app's lifetime (its lifespan); the SDK loads on first use."""
    mcp = McpHost(app, host)
    task = asyncio.create_task(mcp.run(), name="mcp-host")
    app.state.mcp = mcp
    try:
        yield
    finally:
        app.state.mcp = None
        mcp.stop()
        if not mcp.started:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
