"""Stand-ins for the external services of docs/providers.md: PromptForge (capabilities)
and Warren (availability and wake), each a real HTTP/1.1 server on 127.0.0.1 and a free port.

Tests script them: set what they say about agents (`agents`), make them fail with a status
(`fail`), never answer (`hang`), answer an arbitrary body (`answer_raw`), and read every
request they received (`requests`, `Warren.wakes`).

    async with PromptForge() as forge, Warren(token="t") as warren:
        forge.agents["a1"] = {"code": 0.9}
        warren.agents["a1"] = "sleeping"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

AGENTS_PATH = "/api/v1/agents"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StandIn:
    """An HTTP server that records every request; answers 200 {} unless told otherwise."""

    name = "stand-in"

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.url = ""
        self._failure: int | None = None
        self._hanging = False
        self._raw: bytes | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._stopping = asyncio.Event()

    # --- scripting ------------------------------------------------------------------

    def fail(self, status: int = 500) -> None:
        """Answer every request with `status` and an error body."""
        self._failure, self._hanging, self._raw = status, False, None

    def hang(self) -> None:
        """Accept every request and never answer it."""
        self._failure, self._hanging, self._raw = None, True, None

    def answer_raw(self, body: str | bytes) -> None:
        """Answer every request 200 with exactly `body`."""
        raw = body.encode() if isinstance(body, str) else body
        self._failure, self._hanging, self._raw = None, False, raw

    def recover(self) -> None:
        self._failure, self._hanging, self._raw = None, False, None

    def asked(self, path: str = AGENTS_PATH, method: str = "GET") -> int:
        """How many `method path` requests arrived so far."""
        return sum(1 for r in self.requests if r.method == method and r.path == path)

    async def answer(self, request: Request) -> tuple[int, Any]:
        return 200, {}

    # --- serving --------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        # Connections end by themselves (a cancelled handler upsets asyncio's streams).
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while (request := await _read(reader)) is not None:
                self.requests.append(request)
                if self._hanging:
                    await self._stopping.wait()
                    break
                if self._failure is not None:
                    status, raw = self._failure, b'{"error": "stand-in told to fail"}'
                elif self._raw is not None:
                    status, raw = 200, self._raw
                else:
                    status, payload = await self.answer(request)
                    raw = json.dumps(payload).encode()
                head = (
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
                )
                writer.write(head.encode() + raw)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._connections.pop(task, None)


async def _read(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Request(method, target, headers, body)


class PromptForge(StandIn):
    """`GET /api/v1/agents` → {"agents": [{"id", "capabilities"}]} from `agents`, whose
    values are {tag: weight} or a list of tags."""

    name = "PromptForge"

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, dict[str, float] | list[str]] = {}

    async def answer(self, request: Request) -> tuple[int, Any]:
        if request.method == "GET" and request.path == AGENTS_PATH:
            listed = [{"id": k, "capabilities": v} for k, v in self.agents.items()]
            return 200, {"agents": listed}
        return 404, {"error": "not found"}


@dataclass(frozen=True)
class Wake:
    agent_id: str
    authorization: str | None
    body: Any


class Warren(StandIn):
    """`GET /api/v1/agents` → {"agents": [{"id", "status"}]} from `agents`;
    `POST /api/v1/agents/{id}/wake` recorded in `wakes` (even when refused), 202. With
    `token`, both answer 401 to a request without `Authorization: Bearer <token>`."""

    name = "Warren"

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.agents: dict[str, str] = {}
        self.wakes: list[Wake] = []

    async def answer(self, request: Request) -> tuple[int, Any]:
        authorization = request.headers.get("authorization")
        prefix, suffix = AGENTS_PATH + "/", "/wake"
        waking = (
            request.method == "POST"
            and request.path.startswith(prefix)
            and request.path.endswith(suffix)
        )
        if waking:
            agent_id = unquote(request.path[len(prefix) : -len(suffix)])
            self.wakes.append(Wake(agent_id, authorization, request.json()))
        if self.token is not None and authorization != f"Bearer {self.token}":
            return 401, {"error": "bad token"}
        if waking:
            return 202, {"accepted": True}
        if request.method == "GET" and request.path == AGENTS_PATH:
            listed = [{"id": k, "status": v} for k, v in self.agents.items()]
            return 200, {"agents": listed}
        return 404, {"error": "not found"}
