"""Persistence behind one interface: one SQL store over an SQLite or a PostgreSQL connector."""

from __future__ import annotations

from pathlib import Path

from dispatchd.store.base import Store


def open_store(url: str, *, data_dir: Path, pool_size: int = 10) -> Store:
    """The store a database URL names (`sqlite:///rel.db`, `sqlite:////abs.db`, `postgresql://…`)."""
    if url.startswith(("postgresql://", "postgres://")):
        from dispatchd.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size)
    if url.startswith("sqlite:///"):
        from dispatchd.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:///"))
        # `sqlite:///x.db` is relative to the data directory; `sqlite:////x.db` is absolute.
        return SQLiteStore(path if path.is_absolute() else data_dir / path)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


__all__ = ["Store", "open_store"]
