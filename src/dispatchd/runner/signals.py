"""Running a worker or a runner until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def run_until_signalled(
    serve: Callable[[], Awaitable[None]],
    stop: Callable[[], None],
    is_stopping: Callable[[], bool],
    grace_s: float,
) -> None:
    """Run `serve()` in a new event loop: the first SIGTERM or SIGINT calls `stop()` (a
    graceful stop), the next one cancels `serve()` outright."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None

        def on_signal() -> None:
            if is_stopping():
                current.cancel()
            else:
                log.info("stopping: running work gets %gs to finish", grace_s)
                stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
