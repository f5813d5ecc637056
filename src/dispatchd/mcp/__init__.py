"""The MCP server of dispatchd: the control-plane toolset for an LLM agent (SPEC §6),
served over stdio by `dispatchd mcp` and over streamable HTTP at `/mcp` by `dispatchd
serve`. It is a client of the broker's HTTP API and imports nothing of the server."""

from __future__ import annotations

from dispatchd.mcp.server import Connect, build_server

__all__ = ["Connect", "build_server"]
