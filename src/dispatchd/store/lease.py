"""Leases: one replica at a time in a role that must not run twice (`Store.lease`)."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Lease(Protocol):
    """One replica at a time in a role that must not run twice (see `Store.lease`)."""

    async def acquire(self) -> None:
        """Return once this replica holds the lease (waiting as long as it takes)."""
        ...

    async def lost(self) -> None:
        """Return when the lease held since `acquire` is lost."""
        ...

    async def release(self) -> None:
        """Give the lease up (nothing happens when it is not held)."""
        ...


class LocalLease:
    """Always held: for a store one process owns (SQLite), and for roles that need no lease."""

    async def acquire(self) -> None:
        return None

    async def lost(self) -> None:
        await asyncio.Event().wait()

    async def release(self) -> None:
        return None
