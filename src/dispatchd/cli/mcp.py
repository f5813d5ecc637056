"""`dispatchd mcp`: the control-plane toolset over stdio (docs/control-plane.md)."""

from __future__ import annotations

from typing import Annotated

import typer

MCP_HELP = (
    "Serve the control-plane tools over stdio to an MCP client.\n\n"
    "An MCP client (Claude Code, Claude Desktop) starts this command and talks to it on "
    "standard input and output; the tools call the broker's HTTP API.\n\n"
    "The broker is found with --url (DISPATCH_API_URL, default http://127.0.0.1:8600); the "
    "server calls it as --as (DISPATCH_AGENT_ID, default mcp) with --token (DISPATCH_TOKEN), "
    "else the admin token (DISPATCH_ADMIN_TOKEN, else ./.dispatchd/admin_token when that "
    "file exists)."
)


def mcp(
    url: Annotated[
        str | None, typer.Option("--url", help="The broker's API URL.", show_default=False)
    ] = None,
    as_: Annotated[
        str | None,
        typer.Option("--as", help="The agent id to call the broker as.", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Bearer token (agent or admin).", show_default=False),
    ] = None,
) -> None:
    import anyio

    from dispatchd import logs
    from dispatchd.mcp.stdio import resolve, serve_stdio

    # Standard output carries the protocol; logs go to standard error, warnings only
    # (the client shows them to its user; request lines would drown them).
    logs.configure("warning", "text")
    target = resolve(url, as_, token)
    anyio.run(serve_stdio, target)
