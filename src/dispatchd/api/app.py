"""The API application (port 8600)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatchd import __version__
from dispatchd.api import errors, mcp_http, openapi
from dispatchd.api.guard import BodyGuard
from dispatchd.api.hot import HotRoutes
from dispatchd.api.limits import RateLimit
from dispatchd.api.routes import (
    agents,
    events,
    notifications,
    rooms,
    schedules,
    stats,
    tasks,
    webhooks,
)
from dispatchd.config import Settings
from dispatchd.metrics import Metrics
from dispatchd.runtime import Runtime
from dispatchd.web import install as install_dashboard


class RequestMetrics:
    """Counts and times each request under its route template, not its raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                template, scope["method"], status, time.perf_counter() - started
            )


# The routes an agent calls for every task, answered without FastAPI's own layers
# (`dispatchd.api.hot`).
HOT_ENDPOINTS = (
    tasks.claim_tasks,
    tasks.start_task,
    tasks.report_progress,
    tasks.complete_task,
    tasks.fail_task,
    tasks.complete_batch,
    tasks.create_batch,
    agents.heartbeat,
)


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, *, hot_routes: bool = True
) -> FastAPI:
    """The API app. Given a runtime, it uses it; otherwise it opens its own at startup.
    `hot_routes` False leaves every request to FastAPI (what the hot path is tested
    against)."""
    if runtime is None and settings is None:
        raise ValueError("create_app needs settings or a runtime")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            async with mcp_http.hosting(app, runtime.settings.server.host):
                yield
            return
        assert settings is not None
        async with Runtime.build(settings) as owned:
            app.state.runtime = owned
            async with mcp_http.hosting(app, owned.settings.server.host):
                yield

    app = FastAPI(
        title="dispatchd",
        version=__version__,
        summary="Task broker and work scheduler for fleets of AI agents",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    errors.install(app)
    openapi.install(app)
    app.include_router(tasks.router)
    app.include_router(agents.router)
    app.include_router(events.router)
    app.include_router(stats.router)
    app.include_router(webhooks.router)
    app.include_router(rooms.router)
    app.include_router(notifications.router)
    app.include_router(schedules.router)
    # The MCP toolset over streamable HTTP (SPEC §6), behind the same bearer tokens.
    app.router.routes.append(mcp_http.route())
    # The dashboard at `/` (its routes are not part of the API's OpenAPI document).
    install_dashboard(app)
    limit = (runtime.settings if runtime else settings or Settings()).server.max_body_bytes
    if hot_routes:
        # From the routers themselves: they are included as they are (no prefix or
        # dependency added at inclusion), so their routes are what FastAPI serves.
        routes = [*tasks.router.routes, *agents.router.routes]
        hot = [r for r in routes if isinstance(r, APIRoute) and r.endpoint in HOT_ENDPOINTS]
        app.add_middleware(HotRoutes, routes=hot)
    app.add_middleware(BodyGuard, max_body_bytes=limit)
    # Outside the body guard: a caller over its limit is refused before its body is read.
    app.add_middleware(RateLimit)
    if runtime is not None:
        app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    else:
        app.add_middleware(_LateMetrics)
    return app


class _LateMetrics:
    """Request metrics for an app whose runtime opens at startup."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app_state = scope.get("app")
        runtime = getattr(getattr(app_state, "state", None), "runtime", None)
        if scope["type"] != "http" or runtime is None:
            await self.app(scope, receive, send)
            return
        await RequestMetrics(self.app, runtime.metrics)(scope, receive, send)
