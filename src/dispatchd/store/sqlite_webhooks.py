"""The webhook part of the SQLite engine, mixed into `SQLiteStore`.

Writes run on the store's single writer thread, so a read-then-write inside one of them
(the cursor check of `enqueue_deliveries`) cannot be overtaken by another writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from dispatchd.domain.webhooks import Advance, Delivery, DeliveryStatus, Head, Outcome, Webhook
from dispatchd.errors import ConcurrentUpdate, DuplicateKey
from dispatchd.store.base import Page
from dispatchd.store.rows import SQLITE
from dispatchd.store.webhook_rows import (
    WebhookSQL,
    deliveries_page_cursor,
    delivery_from_row,
    delivery_params,
    outcome_params,
    webhook_from_row,
    webhook_params,
    webhooks_page_cursor,
)

T = TypeVar("T")

SQL = WebhookSQL(lambda name: f":{name}")


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


class SQLiteWebhooks:
    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def create_webhook(self, webhook: Webhook) -> None:
        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(SQL.insert_webhook, webhook_params(webhook, SQLITE))
            except sqlite3.IntegrityError as exc:
                raise DuplicateKey(f"webhook {webhook.id} already exists", field="id") from exc

        await self._write(run)

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        def run(conn: sqlite3.Connection) -> Webhook | None:
            row = conn.execute(SQL.select_webhook, {"id": webhook_id}).fetchone()
            return webhook_from_row(row, SQLITE) if row else None

        return await self._read(run)

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> Page[Webhook]:
        sql, params = SQL.list_webhooks(limit, cursor)

        def run(conn: sqlite3.Connection) -> Page[Webhook]:
            rows = conn.execute(sql, params).fetchall()
            items = [webhook_from_row(r, SQLITE) for r in rows[:limit]]
            return Page(items, webhooks_page_cursor(items, len(rows) > limit))

        return await self._read(run)

    async def active_webhooks(self) -> list[Webhook]:
        def run(conn: sqlite3.Connection) -> list[Webhook]:
            return [webhook_from_row(r, SQLITE) for r in conn.execute(SQL.select_active)]

        return await self._read(run)

    async def update_webhook(
        self, webhook: Webhook, *, reset_breaker: bool = False, last_event_id: int | None = None
    ) -> None:
        params = webhook_params(webhook, SQLITE)
        params["reset"] = int(reset_breaker)
        params["last_event_id"] = last_event_id

        def apply(conn: sqlite3.Connection) -> None:
            if conn.execute(SQL.update_webhook, params).rowcount != 1:
                raise ConcurrentUpdate(f"webhook {webhook.id} changed meanwhile")
            if not webhook.active:
                now = SQLITE.dump_time(webhook.updated_at)
                conn.execute(SQL.abandon_pending, {"id": webhook.id, "now": now})

        await self._write(lambda conn: _transaction(conn, apply))

    async def delete_webhook(self, webhook_id: str) -> bool:
        def apply(conn: sqlite3.Connection) -> bool:
            found = conn.execute(SQL.delete_webhook, {"id": webhook_id}).rowcount == 1
            conn.execute(SQL.delete_deliveries, {"id": webhook_id})
            return found

        return await self._write(lambda conn: _transaction(conn, apply))

    async def enqueue_deliveries(self, advances: Sequence[Advance]) -> int:
        def apply(conn: sqlite3.Connection) -> int:
            written = 0
            for advance in sorted(advances, key=lambda a: a.webhook_id):
                row = conn.execute(SQL.select_webhook, {"id": advance.webhook_id}).fetchone()
                if row is None or not row["active"]:
                    continue
                cursor = int(row["last_event_id"])
                if cursor >= advance.last_event_id:
                    continue
                for delivery in advance.deliveries:
                    if delivery.event_id > cursor:
                        params = delivery_params(delivery, SQLITE)
                        written += conn.execute(SQL.insert_delivery, params).rowcount
                conn.execute(SQL.advance, {"id": advance.webhook_id, "last": advance.last_event_id})
            return written

        return await self._write(lambda conn: _transaction(conn, apply))

    async def delivery_heads(self) -> list[Head]:
        def run(conn: sqlite3.Connection) -> list[Head]:
            hooks = {r["id"]: webhook_from_row(r, SQLITE) for r in conn.execute(SQL.select_active)}
            heads = []
            for row in conn.execute(SQL.heads):
                delivery = delivery_from_row(row, SQLITE)
                hook = hooks.get(delivery.webhook_id)
                if hook is not None:
                    heads.append(Head(hook, delivery))
            return heads

        return await self._read(run)

    async def claim_delivery(
        self, delivery_id: str, attempt: int, *, until: datetime, now: datetime
    ) -> Delivery | None:
        params = {
            "id": delivery_id,
            "attempt": attempt,
            "until": SQLITE.dump_time(until),
            "now": SQLITE.dump_time(now),
        }

        def apply(conn: sqlite3.Connection) -> Delivery | None:
            # fetchall: a RETURNING statement is finished only once its rows are read.
            rows = conn.execute(SQL.claim, params).fetchall()
            return delivery_from_row(rows[0], SQLITE) if rows else None

        return await self._write(lambda conn: _transaction(conn, apply))

    async def record_delivery(self, outcome: Outcome) -> bool:
        params = outcome_params(outcome, SQLITE)

        def apply(conn: sqlite3.Connection) -> bool:
            if conn.execute(SQL.record, params).rowcount != 1:
                return False
            if outcome.breaker == "success":
                conn.execute(SQL.breaker_success, params)
            elif outcome.breaker == "failure":
                conn.execute(SQL.breaker_failure, params)
            return True

        return await self._write(lambda conn: _transaction(conn, apply))

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        sql, params = SQL.list_deliveries(webhook_id, status, limit, cursor)

        def run(conn: sqlite3.Connection) -> Page[Delivery]:
            rows = conn.execute(sql, params).fetchall()
            items = [delivery_from_row(r, SQLITE) for r in rows[:limit]]
            return Page(items, deliveries_page_cursor(items, len(rows) > limit))

        return await self._read(run)

    async def prune_deliveries(self, *, before: datetime, limit: int) -> int:
        params = {"before": SQLITE.dump_time(before), "limit": limit}

        def apply(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(SQL.prune, params).fetchall()]
            conn.executemany("DELETE FROM webhook_deliveries WHERE id = ?", [(i,) for i in ids])
            return len(ids)

        return await self._write(lambda conn: _transaction(conn, apply))
