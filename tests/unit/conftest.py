"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatchd.store.sqlite import SQLiteConnector, SQLiteStore


@pytest.fixture
async def connector(tmp_path: Path) -> AsyncIterator[SQLiteConnector]:
    """A SQLite connector on a fresh file with one table, `t (k TEXT PRIMARY KEY, v INTEGER)`."""
    conn = SQLiteConnector(tmp_path / "db.sqlite")
    await conn.open()
    await conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)", {})
    yield conn
    await conn.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A migrated SQLite store on a fresh file."""
    opened = SQLiteStore(tmp_path / "store.db")
    await opened.open()
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()
