"""Managing webhooks (the admin routes): create, read, change, delete, and their deliveries.

A new webhook starts at the head of the event log: it is owed the events committed after
it exists. Switching one off abandons what it was still owed and stops it being owed
more; switching it back on starts again at the head. Changing its URL, or switching it on,
closes its circuit. Every change tells the dispatcher, which reads the webhooks again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.webhooks import Delivery, DeliveryStatus, Webhook, check_url
from dispatchd.errors import ConcurrentUpdate, NotFound, ValidationFailed
from dispatchd.events.reader import TypeFilter
from dispatchd.outbound import Outbound
from dispatchd.store.base import Page, Store

MAX_TYPES = 50
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
# A PATCH that meets a concurrent one reads again this many times before giving up (409).
UPDATE_TRIES = 3


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_types(types: Sequence[str]) -> tuple[str, ...]:
    """Event type patterns as `TypeFilter` takes them, one per item, families widened
    (`agent` → `agent.*`), repeats dropped; an empty list means every event."""
    if len(types) > MAX_TYPES:
        raise ValidationFailed(
            f"at most {MAX_TYPES} event type patterns", code="invalid_types", count=len(types)
        )
    patterns: list[str] = []
    for item in types:
        if "," in item or not item.strip():
            raise ValidationFailed(
                f"bad event type filter {item[:100]!r}: one name or glob per item",
                code="invalid_types",
                types=item[:200],
            )
        for pattern in TypeFilter.parse(item).patterns:
            if pattern not in patterns:
                patterns.append(pattern)
    return tuple(patterns)


class WebhookService:
    def __init__(
        self, store: Store, changed: Callable[[], None], outbound: Outbound | None = None
    ) -> None:
        self.store = store
        self.changed = changed
        self.outbound = outbound

    def _check_url(self, url: str) -> str:
        url = check_url(url)
        return self.outbound.check_stored(url, "url") if self.outbound else url

    async def create(
        self,
        *,
        url: str,
        types: Sequence[str] = (),
        secret: str | None = None,
        description: str = "",
        active: bool = True,
    ) -> Webhook:
        now = utcnow()
        webhook = Webhook(
            id=new_id(),
            url=self._check_url(url),
            secret=secret or new_secret(),
            types=check_types(types),
            description=description,
            active=active,
            created_at=now,
            updated_at=now,
            last_event_id=await self.store.last_event_id(),
        )
        await self.store.create_webhook(webhook)
        self.changed()
        return webhook

    async def get(self, webhook_id: str) -> Webhook:
        webhook = await self.store.get_webhook(webhook_id)
        if webhook is None:
            raise NotFound(f"no webhook {webhook_id}", code="webhook_not_found", id=webhook_id)
        return webhook

    async def page(self, *, limit: int, cursor: str | None) -> Page[Webhook]:
        return await self.store.list_webhooks(limit=limit, cursor=cursor)

    async def update(self, webhook_id: str, fields: dict[str, Any]) -> Webhook:
        """Apply `fields` (url, types, secret, description, active; each optional)."""
        changes = dict(fields)
        if "url" in changes:
            changes["url"] = self._check_url(changes["url"])
        if "types" in changes:
            changes["types"] = check_types(changes["types"])
        for _ in range(UPDATE_TRIES):
            current = await self.get(webhook_id)
            switched_on = changes.get("active") is True and not current.active
            moved = "url" in changes and changes["url"] != current.url
            updated = current.evolve(**changes, updated_at=utcnow(), version=current.version + 1)
            try:
                await self.store.update_webhook(
                    updated,
                    reset_breaker=switched_on or moved,
                    last_event_id=await self.store.last_event_id() if switched_on else None,
                )
            except ConcurrentUpdate:
                continue
            self.changed()
            return await self.get(webhook_id)
        raise ConcurrentUpdate(
            f"webhook {webhook_id} is being changed by someone else; try again", id=webhook_id
        )

    async def delete(self, webhook_id: str) -> None:
        if not await self.store.delete_webhook(webhook_id):
            raise NotFound(f"no webhook {webhook_id}", code="webhook_not_found", id=webhook_id)
        self.changed()

    async def deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page[Delivery]:
        await self.get(webhook_id)
        return await self.store.list_deliveries(
            webhook_id, status=status, limit=limit, cursor=cursor
        )
