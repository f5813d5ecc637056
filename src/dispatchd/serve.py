"""`dispatchd serve`: both listeners in one process, sharing one runtime."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable

import uvicorn

from dispatchd import logs
from dispatchd.api.app import create_app
from dispatchd.api.ops import create_ops_app
from dispatchd.config import Settings
from dispatchd.errors import StoreError
from dispatchd.runtime import Runtime

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve`, which runs two of them."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    def capture_signals(self):  # type: ignore[no-untyped-def]  # uvicorn >= 0.29
        import contextlib

        return contextlib.nullcontext()


async def _serve(settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        await runtime.__aenter__()
    except StoreError as exc:
        log.error("cannot open the database: %s", exc.message)
        return 1
    try:
        app = create_app(runtime=runtime)
        api = _Server(
            uvicorn.Config(
                app,
                host=settings.server.host,
                port=settings.server.port,
                log_config=None,
                access_log=settings.logging.level == "debug",
                lifespan="on",
            )
        )
        ops = _Server(
            uvicorn.Config(
                create_ops_app(runtime),
                host=settings.server.metrics_host or settings.server.host,
                port=settings.server.metrics_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        loop = asyncio.get_running_loop()

        def stop() -> None:
            runtime.closing()
            api.should_exit = True
            ops.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        api_task = asyncio.create_task(api.serve())
        ops_task = asyncio.create_task(ops.serve())
        while not (api.started and ops.started):
            if api_task.done() or ops_task.done():
                stop()
                await asyncio.gather(api_task, ops_task, return_exceptions=True)
                log.error("could not start the listeners (is the port in use?)")
                return 1
            await asyncio.sleep(0.01)
        _announce(settings, runtime, api, ops, app.state.dashboard.once())
        # What start-up loaded (modules, the app, its schemas: ~120k objects) lives as long
        # as the server. Frozen, it is out of the collector's walk: a full collection then
        # looks only at what requests made, instead of pausing the event loop for tens of
        # milliseconds each time (bench/README.md).
        gc.collect()
        gc.freeze()
        await asyncio.gather(api_task, ops_task)
        return 0
    finally:
        await runtime.__aexit__(None, None, None)


def _bound_port(server: uvicorn.Server, fallback: int) -> int:
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    return fallback


def _announce(
    settings: Settings, runtime: Runtime, api: uvicorn.Server, ops: uvicorn.Server, once: str
) -> None:
    host = settings.server.host
    api_port = _bound_port(api, settings.server.port)
    ops_port = _bound_port(ops, settings.server.metrics_port)
    ops_host = settings.server.metrics_host or host
    lines = [
        f"dispatchd listening on http://{host}:{api_port} (API)",
        f"operations on http://{ops_host}:{ops_port} (/health, /metrics)",
        f"database: {runtime.store.dialect} {_redact(settings.database_url)}",
    ]
    if runtime.admin.generated:
        lines.append(
            f"admin token (generated, kept in {runtime.admin.path}): {runtime.admin.value}"
        )
    elif runtime.admin.path is not None:
        lines.append(f"admin token: in {runtime.admin.path}")
    # A link that signs one browser in to the dashboard, once, within 15 minutes.
    lines.append(f"dashboard: http://{host}:{api_port}/login?once={once}")
    print("\n".join(lines), flush=True)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def run(settings: Settings) -> int:
    logs.configure(settings.logging.level, settings.logging.format)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(settings))
    except KeyboardInterrupt:  # pragma: no cover
        return 130


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with `uvicorn[standard]`): request handling takes
    ~25 % less CPU on it. The default loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(Settings()))
