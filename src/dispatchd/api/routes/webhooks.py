"""Webhook routes of API v1 (SPEC §4; docs/webhooks.md). Admin only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.params import PageCursor
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas.webhooks import (
    DeliveryList,
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
    WebhookPatch,
    WebhookRemoved,
)
from dispatchd.domain.access import require_admin
from dispatchd.domain.ids import utcnow
from dispatchd.domain.webhooks import DeliveryStatus

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], responses=ERRORS)

WebhookId = Annotated[str, Path(min_length=1, max_length=128)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
async def create_webhook(body: WebhookCreate, caller: CallerDep, rt: RuntimeDep) -> WebhookCreated:
    """Subscribe a URL to events. The answer holds the signing secret, shown only here."""
    require_admin(caller)
    webhook = await rt.webhooks.create(
        url=body.url,
        types=body.types,
        secret=body.secret,
        description=body.description,
        active=body.active,
    )
    return WebhookCreated(webhook=WebhookOut.of(webhook, utcnow()), secret=webhook.secret)


@router.get("", response_model=WebhookList)
async def list_webhooks(
    caller: CallerDep, rt: RuntimeDep, limit: Limit = 100, cursor: PageCursor = None
) -> WebhookList:
    require_admin(caller)
    page = await rt.webhooks.page(limit=limit, cursor=cursor)
    now = utcnow()
    return WebhookList(
        items=[WebhookOut.of(w, now) for w in page.items], next_cursor=page.next_cursor
    )


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: WebhookId, caller: CallerDep, rt: RuntimeDep) -> WebhookOut:
    require_admin(caller)
    return WebhookOut.of(await rt.webhooks.get(webhook_id), utcnow())


@router.patch("/{webhook_id}", response_model=WebhookOut)
async def patch_webhook(
    webhook_id: WebhookId, body: WebhookPatch, caller: CallerDep, rt: RuntimeDep
) -> WebhookOut:
    """Change a webhook. `active: false` abandons what it is still owed; `active: true`
    starts it again at the head of the log. A new URL or `active: true` closes its circuit."""
    require_admin(caller)
    webhook = await rt.webhooks.update(webhook_id, body.model_dump(exclude_unset=True))
    return WebhookOut.of(webhook, utcnow())


@router.delete("/{webhook_id}", response_model=WebhookRemoved)
async def delete_webhook(
    webhook_id: WebhookId, caller: CallerDep, rt: RuntimeDep
) -> WebhookRemoved:
    """Delete a webhook and its deliveries; nothing more is sent to it."""
    require_admin(caller)
    await rt.webhooks.delete(webhook_id)
    return WebhookRemoved(id=webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
async def list_deliveries(
    webhook_id: WebhookId,
    caller: CallerDep,
    rt: RuntimeDep,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Limit = 100,
    cursor: PageCursor = None,
) -> DeliveryList:
    """The webhook's deliveries, newest event first, each with its attempts."""
    require_admin(caller)
    page = await rt.webhooks.deliveries(webhook_id, status=status_, limit=limit, cursor=cursor)
    return DeliveryList(items=[DeliveryOut.of(d) for d in page.items], next_cursor=page.next_cursor)
