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
        """200 while the database answers and every background job runs; 503 with what
        is wrong otherwise (a job whose last turn failed, or that crashed and waits to be
        restarted, is down: the broker may have stopped assigning or delivering)."""
        jobs = {name: status.describe() for name, status in sorted(runtime.jobs.all.items())}
        down = runtime.jobs.down
        runtime.metrics.set_jobs(
            {name: not status.down for name, status in runtime.jobs.all.items()}
        )
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
                "jobs": jobs,
                "jobs_down": down,
            }
            return JSONResponse(body, status_code=503)
        runtime.metrics.database_up.set(1)
        return JSONResponse(
            {
                "status": "unavailable" if down else "ok",
                "version": __version__,
                "database": {"engine": runtime.store.dialect, "status": "ok"},
                "jobs": jobs,
                "jobs_down": down,
            },
            status_code=503 if down else 200,
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
        runtime.metrics.set_jobs(
            {name: not status.down for name, status in runtime.jobs.all.items()}
        )
        return Response(runtime.metrics.render(), media_type=PROMETHEUS_TEXT)

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics)])
