"""The `store` fixture: every contract test runs once per engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dispatchd.store.base import Store
from dispatchd.store.postgres import PostgresStore
from dispatchd.store.sqlite import SQLiteStore

StoreFactory = Callable[[], Store]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes (unopened) stores on this test's migrated database; each call a new instance."""
    if engine == "sqlite":
        path = tmp_path / "test.db"
        return lambda: SQLiteStore(path)
    url: str = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


@pytest.fixture
def make_empty_store(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes (unopened) stores on a database of its own with no migration applied."""
    if engine == "sqlite":
        path = tmp_path / "empty.db"
        return lambda: SQLiteStore(path)
    url: str = request.getfixturevalue("postgres_empty_url")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    opened = make_store()
    await opened.open()
    try:
        # A no-op on PostgreSQL, whose databases are cloned from a migrated template.
        await opened.migrate()
        yield opened
    finally:
        await opened.close()
