"""Operator calls of the async client: statistics, notifications and webhooks (admin)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from dispatchd.client._events import types_param
from dispatchd.client._http import HttpBase, compact
from dispatchd.client.models import (
    Delivery,
    NotificationPage,
    Page,
    Webhook,
    WebhookCreated,
    WebhookRemoved,
)

WEBHOOKS = "/api/v1/webhooks"
NOTIFICATIONS = "/api/v1/notifications"


def webhook_path(webhook_id: str, action: str = "") -> str:
    path = f"{WEBHOOKS}/{quote(webhook_id, safe='')}"
    return f"{path}/{action}" if action else path


class AdminApi(HttpBase):
    async def stats(self) -> dict[str, Any]:
        """Queue depth, wait and run times, throughput and agents by state."""
        stats: dict[str, Any] = await self.call_json("GET", "/api/v1/stats", admin=True)
        return stats

    async def list_notifications(
        self,
        after: str | None = None,
        *,
        limit: int = 100,
        unacknowledged: bool = False,
        wait_s: float = 0.0,
    ) -> NotificationPage:
        """Notifications for humans after the cursor `after`, oldest first, and the
        digest still collecting items. With the admin token, every entry; without it,
        those about the tasks this client's agent requested. With `wait_s`, an empty read
        waits that long for the next entry."""
        params = {
            "after": after,
            "limit": limit,
            "unacknowledged": unacknowledged or None,
            "wait_s": wait_s or None,
        }
        return await self.call(
            NotificationPage, "GET", NOTIFICATIONS, params=params, admin=True, wait_s=wait_s
        )

    async def ack_notifications(
        self, ids: Sequence[str | int] | None = None, *, up_to: str | int | None = None
    ) -> int:
        """Acknowledge the notifications `ids`, or all up to and including `up_to`;
        answers how many were newly acknowledged."""
        body = compact({"ids": [str(i) for i in ids] if ids is not None else None, "up_to": up_to})
        if isinstance(body.get("up_to"), int):
            body["up_to"] = str(body["up_to"])
        answer = await self.call_json("POST", f"{NOTIFICATIONS}/ack", json=body, admin=True)
        return int(answer["acknowledged"])

    async def create_webhook(
        self,
        url: str,
        *,
        types: str | Iterable[str] | None = None,
        secret: str | None = None,
        description: str | None = None,
        active: bool | None = None,
    ) -> WebhookCreated:
        """Subscribe `url` to events (`types`: names, globs or families; none: all).
        The answer carries the signing secret, shown only here."""
        body = compact(
            {
                "url": url,
                "types": _type_list(types),
                "secret": secret,
                "description": description,
                "active": active,
            }
        )
        return await self.call(WebhookCreated, "POST", WEBHOOKS, json=body, admin=True)

    async def list_webhooks(self, *, limit: int = 100, cursor: str | None = None) -> Page[Webhook]:
        """One page of webhooks."""
        params = {"limit": limit, "cursor": cursor}
        return await self.call(Page[Webhook], "GET", WEBHOOKS, params=params, admin=True)

    async def get_webhook(self, webhook_id: str) -> Webhook:
        return await self.call(Webhook, "GET", webhook_path(webhook_id), admin=True)

    async def update_webhook(
        self,
        webhook_id: str,
        *,
        url: str | None = None,
        types: str | Iterable[str] | None = None,
        secret: str | None = None,
        description: str | None = None,
        active: bool | None = None,
    ) -> Webhook:
        """Change the fields given. `active=False` drops what the webhook is still owed;
        `active=True` starts it again at the head of the log."""
        body = compact(
            {
                "url": url,
                "types": _type_list(types),
                "secret": secret,
                "description": description,
                "active": active,
            }
        )
        return await self.call(Webhook, "PATCH", webhook_path(webhook_id), json=body, admin=True)

    async def delete_webhook(self, webhook_id: str) -> WebhookRemoved:
        return await self.call(WebhookRemoved, "DELETE", webhook_path(webhook_id), admin=True)

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        """A webhook's deliveries, newest event first, each with its attempts."""
        params = {"status": status, "limit": limit, "cursor": cursor}
        path = webhook_path(webhook_id, "deliveries")
        return await self.call(Page[Delivery], "GET", path, params=params, admin=True)


def _type_list(types: str | Iterable[str] | None) -> list[str] | None:
    joined = types_param(types)
    if types is None:
        return None
    return [t.strip() for t in (joined or "").split(",") if t.strip()]
