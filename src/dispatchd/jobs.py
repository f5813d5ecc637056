"""Helpers for the background jobs (assigner, sweeper, event-log readers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


def stop_if_cancelled() -> None:
    """Raise the cancellation a library lost. On Python 3.11 `asyncio.wait_for` (which
    psycopg_pool uses while a caller waits for a connection) swallows a cancel that lands
    as the connection is handed over; the task still counts it (`cancelling()`). Loops
    call this once per turn, so a stopping job stops."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def first_of(*jobs: Awaitable[Any]) -> None:
    """Run `jobs` until one of them ends; cancel the others. Its error, if any, is raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()
