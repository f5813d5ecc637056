"""The loopback HTTP API a runner serves to its agent subprocesses (SPEC §5).

The runner holds the broker client, as the agent its tasks are assigned to; a subprocess
holds only the address of its task's scope (`DISPATCH_URL`, `http://127.0.0.1:<port>/s/
<secret>`) and its task id (`DISPATCH_TASK_ID`). What it asks there is forwarded to the
broker, fenced with the task's attempt, so the subprocess needs no broker credentials and
cannot touch another task. Agents written for a board of queues work unchanged: the
scope also answers `/tasks/{id}`, `/comments` with `{"comment"}`, `/move`, `/queues`,
`/status`.

Errors leave in the broker's form, `{"error": {"code", "message", "details"}}`: the
broker's refusals with their status, bad input as 422, a broker that cannot be reached or
fails as 502. Another task than the scope's is 403; an unknown or closed scope is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dispatchd.client import AsyncClient
from dispatchd.client.errors import ApiError, ClientError, ServerError, TransportError
from dispatchd.client.models import Task
from dispatchd.runner import local_routes, local_seed
from dispatchd.runner.local_scope import LocalContext, LocalError, TaskScope

__all__ = ["LocalApi", "TaskScope", "build_app"]

log = logging.getLogger(__name__)

# How long `close()` lets requests in flight finish before cancelling them.
SHUTDOWN_GRACE_S = 2


def _error(status: int, code: str, message: str, details: Mapping[str, Any]) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": dict(details)}}
    return JSONResponse(body, status_code=status)


async def _local_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LocalError)
    return _error(exc.status, exc.code, exc.message, exc.details)


async def _client_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ServerError):
        # The broker failed: to the agent that is a bad gateway, not its own mistake.
        details = {**exc.details, "broker_status": exc.status}
        return _error(502, exc.code, f"the broker failed: {exc.message}", details)
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.code, exc.message, exc.details)
    reason = str(exc.__cause__ or exc) or type(exc).__name__
    code = "broker_unreachable" if isinstance(exc, TransportError) else "broker_error"
    log.warning("local API could not reach the broker: %s", reason)
    return _error(502, code, f"the runner could not reach the broker: {reason}", {})


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return _error(422, "invalid_json", "the body is not valid JSON", {"errors": errors})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "request"
    return _error(422, "validation_error", f"{where}: {first['msg']}", {"errors": errors})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404:
        message = "no such route in the local agent API"
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), message, {})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("local agent API failed on %s", request.method)
    return _error(500, "internal_error", "the runner failed to handle this request", {})


def build_app(ctx: LocalContext) -> FastAPI:
    """The local API's ASGI app over `ctx` (the runner's client and open scopes)."""
    app = FastAPI(
        title="dispatchd local agent API", openapi_url=None, docs_url=None, redoc_url=None
    )
    app.state.local = ctx
    app.include_router(local_routes.router)
    app.include_router(local_seed.router)
    app.add_exception_handler(LocalError, _local_error)
    app.add_exception_handler(ClientError, _client_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    return app


def _listen(host: str, port: int) -> socket.socket:
    if not _loopback(host):
        log.warning(
            "the local agent API listens on %s, beyond this machine: anyone who can reach "
            "it and learns a task's address can act on that task",
            host,
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _abandon(
    server: uvicorn.Server, serving: asyncio.Task[None], sock: socket.socket
) -> None:
    """Stop a server that did not finish starting, and close its socket."""
    try:
        # uvicorn closes what it opened only once started: a stop asked earlier skips that.
        while not server.started:
            if serving.done():
                return
            await asyncio.sleep(0.01)
        if not serving.done():
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
    finally:
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn inside the runner's event loop: the runner, not the server, owns the
    process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LocalApi:
    """The runner's loopback API. `start()` serves it, `open(task)` gives a running task
    its scope, `close_scope(scope)` ends that scope, `close()` stops serving."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ctx = LocalContext(client=client, status=status)
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base address, once started."""
        if self._server is None:
            raise RuntimeError("the local API is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def scopes(self) -> list[TaskScope]:
        return list(self._ctx.scopes.values())

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the local API is already started")
        config = uvicorn.Config(
            build_app(self._ctx),
            host=self.host,
            port=self.port,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        # Bound here, so a port in use is an OSError for the caller (uvicorn would exit).
        sock = _listen(self.host, self.port)
        server = _Server(config)
        serving = asyncio.create_task(server.serve([sock]), name="dispatchd-local-api")
        try:
            while not server.started:
                if serving.done():
                    serving.result()
                    raise RuntimeError("the local agent API stopped while starting")
                await asyncio.sleep(0.01)
        except BaseException:
            # Failed or cancelled while starting: the server is stopped all the same (in a
            # task of its own, so that a second cancellation cannot cut it short), or its
            # socket would stay open with nobody left to close it.
            await asyncio.shield(asyncio.create_task(_abandon(server, serving, sock)))
            raise
        self._server, self._serving = server, serving
        self.port = sock.getsockname()[1]
        log.debug("local agent API on %s", self.url)

    async def close(self) -> None:
        """Close every scope and stop serving; requests in flight get a short grace."""
        for scope in self.scopes:
            self.close_scope(scope)
        server, serving = self._server, self._serving
        self._server = self._serving = None
        if server is None or serving is None:
            return
        server.should_exit = True
        await serving

    def open(self, task: Task) -> TaskScope:
        """A new scope for `task` (already claimed by the runner's agent) at its attempt."""
        secret = secrets.token_urlsafe(24)
        scope = TaskScope(
            task_id=task.id, attempt=task.attempt, url=f"{self.url}/s/{secret}", secret=secret
        )
        self._ctx.scopes[secret] = scope
        return scope

    def close_scope(self, scope: TaskScope) -> None:
        """End the scope: its address answers 404 and a wait for an answer ends."""
        scope.closed.set()
        self._ctx.scopes.pop(scope.secret, None)

    async def __aenter__(self) -> LocalApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
