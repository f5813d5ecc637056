"""The notifications part of the PostgreSQL engine, mixed into `PostgresStore`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, assert_never

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
from dispatchd.store.rows import POSTGRES

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow

SQL = notification_sql(lambda name: f"%({name})s", "id = ANY(%(ids)s)")


class PostgresNotifications:
    if TYPE_CHECKING:

        def _connection(
            self, wait_s: float | None = None
        ) -> AbstractAsyncContextManager[AsyncConnection[DictRow]]: ...

        async def _fetchone(self, query: str, params: Mapping[str, Any]) -> DictRow | None: ...

        async def _fetchall(self, query: str, params: Mapping[str, Any]) -> list[DictRow]: ...

    async def _apply_notification(self, conn: AsyncConnection[DictRow], op: NotificationOp) -> None:
        """One write of `commit`, inside its transaction."""
        match op:
            case AdvanceCursor(name, expected, last, at):
                params: dict[str, Any] = {"name": name, "last": last, "at": at}
                if expected is None:
                    cur = await conn.execute(SQL.cursor_insert, params)
                else:
                    # Waits for a concurrent writer of the same cursor, then finds it moved.
                    cur = await conn.execute(SQL.cursor_update, {**params, "expected": expected})
                if cur.rowcount != 1:
                    raise ConcurrentUpdate(f"cursor {name} moved meanwhile", cursor=name)
            case InsertNotification(notification):
                await conn.execute(SQL.insert, notification_params(notification, POSTGRES))
            case SaveDigest(digest, at):
                if digest is None:
                    await conn.execute(SQL.drop_digest, {"name": OPEN})
                else:
                    await conn.execute(SQL.save_digest, digest_params(digest, at, POSTGRES))
            case _:
                assert_never(op)

    async def open_digest(self) -> Digest | None:
        row = await self._fetchone(SQL.select_digest, {"name": OPEN})
        return digest_from_row(row, POSTGRES) if row else None

    async def list_notifications(
        self, *, after: int, limit: int, unacknowledged_only: bool = False
    ) -> list[Notification]:
        sql = SQL.list_unacknowledged if unacknowledged_only else SQL.list_all
        rows = await self._fetchall(sql, {"after": after, "limit": limit})
        return [notification_from_row(r, POSTGRES) for r in rows]

    async def acknowledge_notifications(
        self,
        *,
        ids: Sequence[int] | None = None,
        up_to: int | None = None,
        by: str,
        at: datetime,
    ) -> int:
        params: dict[str, Any] = {"by": by, "at": at}
        if ids is not None:
            sql = SQL.ack_ids
            params["ids"] = list(ids)
        elif up_to is not None:
            sql = SQL.ack_up_to
            params["up_to"] = up_to
        else:
            return 0
        async with self._connection() as conn:
            cur = await conn.execute(sql, params)
            return int(cur.rowcount)
