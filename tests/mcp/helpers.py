"""Helpers of the MCP tests: an MCP client session against a real `dispatchd mcp` process
(the `mcp` SDK's own client over stdio), and tool calls that check their outcome."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp_types import CallToolResult, TextContent

from mcp import Client, StdioServerParameters


@asynccontextmanager
async def stdio_session(
    url: str | None,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> AsyncIterator[Client]:
    """An MCP client session with `dispatchd mcp [--url url] args...` started in `cwd`
    with only `env` (besides PATH and the like) for its DISPATCH_* environment."""
    argv = ["-m", "dispatchd", "mcp", *(["--url", url] if url else []), *args]
    params = StdioServerParameters(
        command=sys.executable,
        args=argv,
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
    )
    async with Client(params, read_timeout_seconds=120) as client:
        yield client


def texts(result: CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, TextContent)]


async def call(
    client: Client, tool: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result, checked against its text:
    a summary line first, then the same result as JSON."""
    result = await client.call_tool(tool, arguments or {})
    assert isinstance(result, CallToolResult)
    assert not result.is_error, texts(result)
    structured = result.structured_content
    assert isinstance(structured, dict)
    summary, as_json = texts(result)
    assert json.loads(as_json) == structured
    assert summary == structured["summary"]
    return structured


async def call_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """Call a tool that must fail; the error's text."""
    result = await client.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    assert result.is_error, result
    return "\n".join(texts(result))
