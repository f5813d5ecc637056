"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.nats import NatsServer, NatsUnavailable
from tests.support.postgres import PostgresServer, PostgresUnavailable

# --- PostgreSQL -------------------------------------------------------------------------
# One throwaway server per session; each test gets its own database, cloned from a migrated
# template. Without the server binaries the tests that need them skip, except on CI
# (`CI=true`), where a missing PostgreSQL must not pass silently.


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required on CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database with the schema applied."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def postgres_empty_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database with nothing in it, not even the schema."""
    url = postgres_server.create_empty_database()
    yield url
    postgres_server.drop_database(url)


# --- NATS -------------------------------------------------------------------------------
# A real nats-server per test (it starts in milliseconds), so a test may stop and restart it.
# Skipped without the binary, except on CI, where a missing nats-server fails.


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    try:
        server = NatsServer()
    except NatsUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"nats-server is required on CI: {exc}", pytrace=False)
        pytest.skip(f"nats-server unavailable: {exc}")
    with server:
        yield server
