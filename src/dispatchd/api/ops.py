"""The operations application (port 8601): health and Prometheus metrics."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatchd import __version__
from dispatchd.errors import StoreError
from dispatchd.runtime import Runtime

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
PING_TIMEOUT_S = 2.0


def create_ops_app(runtime: Runtime) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await runtime.store.ping()
        except (StoreError, TimeoutError, OSError) as exc:
            runtime.metrics.database_up.set(0)
            body = {
                "status": "unavailable",
                "version": __version__,
                "database": {
                    "engine": runtime.store.dialect,
                    "status": "unreachable",
                    "error": str(exc) or type(exc).__name__,
                },
            }
            return JSONResponse(body, status_code=503)
        runtime.metrics.database_up.set(1)
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "database": {"engine": runtime.store.dialect, "status": "ok"},
            }
        )

    async def metrics(request: Request) -> Response:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                counts = await runtime.store.counts()
        except (StoreError, TimeoutError, OSError):
            runtime.metrics.database_up.set(0)
        else:
            runtime.metrics.database_up.set(1)
            runtime.metrics.set_counts(counts)
        return Response(runtime.metrics.render(), media_type=PROMETHEUS_TEXT)

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics)])
