"""`dispatchd mcp`: the toolset over stdio, for an MCP client that starts it as a
subprocess (Claude Code, Claude Desktop). It finds the broker and its credentials the way
the other client commands do (SPEC §6)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from mcp.server.mcpserver import Context

from dispatchd.client import AsyncClient
from dispatchd.mcp.server import build_server

DEFAULT_URL = "http://127.0.0.1:8600"
DEFAULT_AGENT = "mcp"


@dataclass(frozen=True)
class Target:
    """Where the broker is and who the MCP server is to it."""

    url: str
    agent_id: str
    token: str | None


def resolve(
    url: str | None = None,
    agent_id: str | None = None,
    token: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Target:
    """Options first, then `DISPATCH_API_URL` / `DISPATCH_AGENT_ID` / `DISPATCH_TOKEN`,
    then the admin token (`DISPATCH_ADMIN_TOKEN`, else `./.dispatchd/admin_token`, the
    file `dispatchd serve` keeps a generated token in, when it exists)."""
    env = os.environ if env is None else env
    here = Path.cwd() if cwd is None else cwd
    token = token or env.get("DISPATCH_TOKEN") or env.get("DISPATCH_ADMIN_TOKEN") or None
    if token is None:
        stored = here / ".dispatchd" / "admin_token"
        if stored.is_file():
            token = stored.read_text(encoding="utf-8").strip() or None
    return Target(
        url=url or env.get("DISPATCH_API_URL") or DEFAULT_URL,
        agent_id=agent_id or env.get("DISPATCH_AGENT_ID") or DEFAULT_AGENT,
        token=token,
    )


async def serve_stdio(target: Target) -> None:
    """Serve the tools on standard input and output until the client closes them."""
    async with AsyncClient(target.url, agent_id=target.agent_id, token=target.token) as client:

        @asynccontextmanager
        async def connect(ctx: Context) -> AsyncIterator[AsyncClient]:
            yield client

        await build_server(connect).run_stdio_async()
