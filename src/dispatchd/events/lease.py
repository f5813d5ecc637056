"""One replica at a time: the lease on a role that must not run twice (publishing to NATS).

On PostgreSQL the lease is a session advisory lock held on a dedicated connection: the
database releases it the moment that connection ends, so a replica that dies or loses the
database hands the role over without any timeout to wait out. A replica that does not
hold it tries again every `check_s`; the holder checks its connection as often, and stops
the role when the connection is gone (another replica may hold the lock by then, so for a
moment both may act: the roles that use a lease tolerate that, e.g. by at-least-once
delivery). On SQLite one process owns the database file, so the lease is always held.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Protocol

import psycopg
from psycopg import AsyncConnection

from dispatchd.store.base import Store
from dispatchd.store.postgres import PostgresStore

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5


class Lease(Protocol):
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
    """Always held: the only process using the store."""

    async def acquire(self) -> None:
        return None

    async def lost(self) -> None:
        await asyncio.Event().wait()

    async def release(self) -> None:
        return None


def lock_key(name: str) -> int:
    """The advisory lock id of the role `name`: the same in every process."""
    digest = hashlib.blake2b(f"dispatchd:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLease:
    """A PostgreSQL session advisory lock named after the role, on its own connection."""

    def __init__(self, url: str, name: str, *, check_s: float) -> None:
        self.url = url
        self.name = name
        self.key = lock_key(name)
        self.check_s = check_s
        self._conn: AsyncConnection[tuple[object, ...]] | None = None

    async def acquire(self) -> None:
        waiting = False
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                    )
                cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                row = await cur.fetchone()
                if row is not None and row[0] is True:
                    log.info("this replica holds the %s lease", self.name)
                    return
                if not waiting:
                    log.info("another replica holds the %s lease; standing by", self.name)
                    waiting = True
            except psycopg.Error as exc:
                log.warning("cannot take the %s lease: %s", self.name, exc)
                await self.release()
            await asyncio.sleep(self.check_s)

    async def lost(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            conn = self._conn
            if conn is None or conn.closed:
                break
            try:
                async with asyncio.timeout(max(self.check_s, CONNECT_TIMEOUT_S)):
                    await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("lost the %s lease: %s", self.name, exc or "no answer")
                break

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()  # ending the session releases its advisory locks


def lease_for(store: Store, name: str, *, check_s: float) -> Lease:
    if isinstance(store, PostgresStore):
        return AdvisoryLease(store.url, name, check_s=check_s)
    return LocalLease()
