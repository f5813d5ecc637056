"""The webhook part of the PostgreSQL engine, mixed into `PostgresStore`.

Every transaction that touches both a webhook and its deliveries locks the webhook row
first, so replicas writing cursors, outcomes and settings at once queue on that row
instead of deadlocking on each other's delivery rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dispatchd.domain.webhooks import Advance, Delivery, DeliveryStatus, Head, Outcome, Webhook
from dispatchd.errors import ConcurrentUpdate, DuplicateKey
from dispatchd.store.base import Page
from dispatchd.store.rows import POSTGRES
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

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow

SQL = WebhookSQL(lambda name: f"%({name})s")
LOCK_WEBHOOK = "SELECT * FROM webhooks WHERE id = %(id)s FOR UPDATE"
DELETE_DELIVERIES_BY_ID = "DELETE FROM webhook_deliveries WHERE id = ANY(%(ids)s)"


class PostgresWebhooks:
    if TYPE_CHECKING:

        def _connection(
            self, wait_s: float | None = None
        ) -> AbstractAsyncContextManager[AsyncConnection[DictRow]]: ...

        async def _fetchone(self, query: str, params: Mapping[str, Any]) -> DictRow | None: ...

        async def _fetchall(self, query: str, params: Mapping[str, Any]) -> list[DictRow]: ...

    async def create_webhook(self, webhook: Webhook) -> None:
        try:
            async with self._connection() as conn:
                await conn.execute(SQL.insert_webhook, webhook_params(webhook, POSTGRES))
        except DuplicateKey as exc:
            raise DuplicateKey(f"webhook {webhook.id} already exists", field="id") from exc

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = await self._fetchone(SQL.select_webhook, {"id": webhook_id})
        return webhook_from_row(row, POSTGRES) if row else None

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> Page[Webhook]:
        sql, params = SQL.list_webhooks(limit, cursor)
        rows = await self._fetchall(sql, params)
        items = [webhook_from_row(r, POSTGRES) for r in rows[:limit]]
        return Page(items, webhooks_page_cursor(items, len(rows) > limit))

    async def active_webhooks(self) -> list[Webhook]:
        rows = await self._fetchall(SQL.select_active, {})
        return [webhook_from_row(r, POSTGRES) for r in rows]

    async def update_webhook(
        self, webhook: Webhook, *, reset_breaker: bool = False, last_event_id: int | None = None
    ) -> None:
        params = webhook_params(webhook, POSTGRES)
        params["reset"] = reset_breaker
        params["last_event_id"] = last_event_id
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(SQL.update_webhook, params)
            if cur.rowcount != 1:
                raise ConcurrentUpdate(f"webhook {webhook.id} changed meanwhile")
            if not webhook.active:
                await conn.execute(
                    SQL.abandon_pending, {"id": webhook.id, "now": webhook.updated_at}
                )

    async def delete_webhook(self, webhook_id: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(SQL.delete_webhook, {"id": webhook_id})
            found = cur.rowcount == 1
            await conn.execute(SQL.delete_deliveries, {"id": webhook_id})
        return found

    async def enqueue_deliveries(self, advances: Sequence[Advance]) -> int:
        written = 0
        async with self._connection() as conn, conn.transaction():
            # In id order, so two replicas advancing the same webhooks never wait on each
            # other's rows in opposite orders.
            for advance in sorted(advances, key=lambda a: a.webhook_id):
                cur = await conn.execute(LOCK_WEBHOOK, {"id": advance.webhook_id})
                row = await cur.fetchone()
                if row is None or not row["active"]:
                    continue
                cursor = int(row["last_event_id"])
                if cursor >= advance.last_event_id:
                    continue
                for delivery in advance.deliveries:
                    if delivery.event_id > cursor:
                        params = delivery_params(delivery, POSTGRES)
                        cur = await conn.execute(SQL.insert_delivery, params)
                        written += cur.rowcount
                await conn.execute(
                    SQL.advance, {"id": advance.webhook_id, "last": advance.last_event_id}
                )
        return written

    async def delivery_heads(self) -> list[Head]:
        async with self._connection() as conn:
            hooks_rows = await (await conn.execute(SQL.select_active)).fetchall()
            head_rows = await (await conn.execute(SQL.heads)).fetchall()
        hooks = {r["id"]: webhook_from_row(r, POSTGRES) for r in hooks_rows}
        heads = []
        for row in head_rows:
            delivery = delivery_from_row(row, POSTGRES)
            hook = hooks.get(delivery.webhook_id)
            if hook is not None:
                heads.append(Head(hook, delivery))
        return heads

    async def claim_delivery(
        self, delivery_id: str, attempt: int, *, until: datetime, now: datetime
    ) -> Delivery | None:
        params = {"id": delivery_id, "attempt": attempt, "until": until, "now": now}
        row = await self._fetchone(SQL.claim, params)
        return delivery_from_row(row, POSTGRES) if row else None

    async def record_delivery(self, outcome: Outcome) -> bool:
        params = outcome_params(outcome, POSTGRES)
        async with self._connection() as conn, conn.transaction():
            await conn.execute(LOCK_WEBHOOK, {"id": outcome.webhook_id})
            cur = await conn.execute(SQL.record, params)
            if cur.rowcount != 1:
                return False
            if outcome.breaker == "success":
                await conn.execute(SQL.breaker_success, params)
            elif outcome.breaker == "failure":
                await conn.execute(SQL.breaker_failure, params)
        return True

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        sql, params = SQL.list_deliveries(webhook_id, status, limit, cursor)
        rows = await self._fetchall(sql, params)
        items = [delivery_from_row(r, POSTGRES) for r in rows[:limit]]
        return Page(items, deliveries_page_cursor(items, len(rows) > limit))

    async def prune_deliveries(self, *, before: datetime, limit: int) -> int:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(SQL.prune, {"before": before, "limit": limit})
            ids = [r["id"] for r in await cur.fetchall()]
            if ids:
                await conn.execute(DELETE_DELIVERIES_BY_ID, {"ids": ids})
        return len(ids)
