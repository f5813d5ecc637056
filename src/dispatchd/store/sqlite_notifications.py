"""The notifications part of the SQLite engine, mixed into `SQLiteStore`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar, assert_never

from dispatchd.domain.notifications import Digest, Notification
from dispatchd.errors import ConcurrentUpdate
from dispatchd.store.base import AdvanceCursor, InsertNotification, SaveDigest
from dispatchd.store.notifications import (
    OPEN,
    NotificationOp,
    digest_from_row,
    digest_params,
    notification_from_row,
    notification_params,
    notification_sql,
)
from dispatchd.store.rows import SQLITE

T = TypeVar("T")

SQL = notification_sql(lambda name: f":{name}", "id IN (SELECT value FROM json_each(:ids))")


class SQLiteNotifications:
    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    def _apply_notification(self, conn: sqlite3.Connection, op: NotificationOp) -> None:
        """One write of `commit`, inside its transaction."""
        match op:
            case AdvanceCursor(name, expected, last, at):
                params = {"name": name, "last": last, "at": SQLITE.dump_time(at)}
                if expected is None:
                    cur = conn.execute(SQL.cursor_insert, params)
                else:
                    cur = conn.execute(SQL.cursor_update, {**params, "expected": expected})
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"cursor {name} moved meanwhile", cursor=name)
            case InsertNotification(notification):
                conn.execute(SQL.insert, notification_params(notification, SQLITE))
            case SaveDigest(digest, at):
                if digest is None:
                    conn.execute(SQL.drop_digest, {"name": OPEN})
                else:
                    conn.execute(SQL.save_digest, digest_params(digest, at, SQLITE))
            case _:
                assert_never(op)

    async def open_digest(self) -> Digest | None:
        def run(conn: sqlite3.Connection) -> Digest | None:
            row = conn.execute(SQL.select_digest, {"name": OPEN}).fetchone()
            return digest_from_row(row, SQLITE) if row else None

        return await self._read(run)

    async def list_notifications(
        self, *, after: int, limit: int, unacknowledged_only: bool = False
    ) -> list[Notification]:
        sql = SQL.list_unacknowledged if unacknowledged_only else SQL.list_all

        def run(conn: sqlite3.Connection) -> list[Notification]:
            rows = conn.execute(sql, {"after": after, "limit": limit}).fetchall()
            return [notification_from_row(r, SQLITE) for r in rows]

        return await self._read(run)

    async def acknowledge_notifications(
        self,
        *,
        ids: Sequence[int] | None = None,
        up_to: int | None = None,
        by: str,
        at: datetime,
    ) -> int:
        params: dict[str, object] = {"by": by, "at": SQLITE.dump_time(at)}
        if ids is not None:
            sql = SQL.ack_ids
            params["ids"] = SQLITE.dump_json(list(ids))
        elif up_to is not None:
            sql = SQL.ack_up_to
            params["up_to"] = up_to
        else:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, params).rowcount)

        return await self._write(run)
