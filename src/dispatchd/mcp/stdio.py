"""`dispatchd mcp`: the toolset over stdio, for an MCP client that starts it as a
subprocess (Claude Code, Claude Desktop). It finds the broker and its credentials the way
the other client commands do (SPEC §6)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from mcp.server.mcpserver import Context

from dispatchd.client import AsyncClient
from dispatchd.client.target import Target
from dispatchd.client.target import resolve as resolve_target
from dispatchd.mcp.server import build_server

__all__ = ["DEFAULT_AGENT", "Target", "resolve", "serve_stdio"]

DEFAULT_AGENT = "mcp"


def resolve(
    url: str | None = None,
    agent_id: str | None = None,
    token: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Target:
    """The broker and credentials as every client command finds them
    (`dispatchd.client.target.resolve`), with `mcp` as the default agent id."""
    return resolve_target(url, agent_id, token, default_agent_id=DEFAULT_AGENT, env=env, cwd=cwd)


async def serve_stdio(target: Target) -> None:
    """Serve the tools on standard input and output until the client closes them."""
    async with AsyncClient(target.url, agent_id=target.agent_id, token=target.token) as client:

        @asynccontextmanager
        async def connect(ctx: Context) -> AsyncIterator[AsyncClient]:
            yield client

        await build_server(connect).run_stdio_async()
