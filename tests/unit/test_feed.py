"""EventFeed waits: woken by the log, cancelled cleanly."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from dispatchd.engine.feed import EventFeed
from dispatchd.store.base import Store


def feed() -> EventFeed:
    return EventFeed(cast(Store, None))  # waiting never touches the store


async def test_a_wait_ends_when_the_log_passes_the_cursor() -> None:
    f = feed()
    waiting = asyncio.create_task(f.wait(0, 30))
    await asyncio.sleep(0)
    f.advanced(1)
    assert await waiting is True


async def test_a_wait_times_out_false() -> None:
    assert await feed().wait(0, 0.01) is False


async def test_a_cancellation_that_meets_a_wake_up_is_not_lost() -> None:
    """The log grows and the reader is cancelled in the same loop turn (a shutdown during
    traffic): the reader must end cancelled, not carry on as if woken."""
    f = feed()
    waiting = asyncio.create_task(f.wait(0, 30))
    await asyncio.sleep(0)
    f.advanced(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
