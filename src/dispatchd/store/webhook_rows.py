"""Webhooks and deliveries as rows, and the SQL both engines share for them.

Each statement is built for a dialect from its placeholder style; what differs beyond that
(row locks on PostgreSQL) lives in the engine's own webhook module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dispatchd.domain.ids import isoformat, parse_iso
from dispatchd.domain.webhooks import AttemptRecord, Delivery, DeliveryStatus, Outcome, Webhook
from dispatchd.errors import ValidationFailed
from dispatchd.store.query import insert_sql
from dispatchd.store.rows import (
    Codec,
    Row,
    decode_cursor,
    dump_opt_time,
    encode_cursor,
    load_opt_time,
)

Placeholder = Callable[[str], str]

WEBHOOK_COLUMNS = (
    "id",
    "url",
    "secret",
    "types",
    "description",
    "active",
    "last_event_id",
    "consecutive_failures",
    "open_until",
    "created_at",
    "updated_at",
    "version",
)
DELIVERY_COLUMNS = (
    "id",
    "webhook_id",
    "event_id",
    "event_type",
    "payload",
    "status",
    "attempt",
    "response_status",
    "error",
    "history",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "delivered_at",
)


class WebhookSQL:
    """The statements of the webhook store methods, for one placeholder style."""

    def __init__(self, ph: Placeholder) -> None:
        self.insert_webhook = insert_sql("webhooks", WEBHOOK_COLUMNS, ph)
        self.insert_delivery = (
            insert_sql("webhook_deliveries", DELIVERY_COLUMNS, ph)
            + " ON CONFLICT (webhook_id, event_id) DO NOTHING"
        )
        self.select_webhook = f"SELECT * FROM webhooks WHERE id = {ph('id')}"
        self.select_active = "SELECT * FROM webhooks WHERE active ORDER BY id"
        # Config columns only: the dispatcher's columns (cursor, breaker) move under it,
        # and are written here only when asked to (`reset`, `last_event_id`).
        self.update_webhook = (
            f"UPDATE webhooks SET url = {ph('url')}, secret = {ph('secret')}, "
            f"types = {ph('types')}, description = {ph('description')}, "
            f"active = {ph('active')}, updated_at = {ph('updated_at')}, "
            f"version = {ph('version')}, "
            f"consecutive_failures = CASE WHEN {ph('reset')} THEN 0 "
            f"ELSE consecutive_failures END, "
            f"open_until = CASE WHEN {ph('reset')} THEN NULL ELSE open_until END, "
            f"last_event_id = COALESCE({ph('last_event_id')}, last_event_id) "
            f"WHERE id = {ph('id')} AND version = {ph('version')} - 1"
        )
        self.abandon_pending = (
            f"UPDATE webhook_deliveries SET status = 'abandoned', next_attempt_at = NULL, "
            f"updated_at = {ph('now')} WHERE webhook_id = {ph('id')} AND status = 'pending'"
        )
        self.delete_webhook = f"DELETE FROM webhooks WHERE id = {ph('id')}"
        self.delete_deliveries = f"DELETE FROM webhook_deliveries WHERE webhook_id = {ph('id')}"
        self.advance = (
            f"UPDATE webhooks SET last_event_id = {ph('last')} "
            f"WHERE id = {ph('id')} AND last_event_id < {ph('last')}"
        )
        self.heads = (
            "SELECT d.* FROM webhooks w JOIN webhook_deliveries d ON d.id = ("
            "SELECT p.id FROM webhook_deliveries p WHERE p.webhook_id = w.id "
            "AND p.status = 'pending' ORDER BY p.event_id LIMIT 1) WHERE w.active"
        )
        self.claim = (
            f"UPDATE webhook_deliveries SET attempt = attempt + 1, "
            f"next_attempt_at = {ph('until')}, updated_at = {ph('now')} "
            f"WHERE id = {ph('id')} AND status = 'pending' AND attempt = {ph('attempt')} "
            "RETURNING *"
        )
        self.record = (
            f"UPDATE webhook_deliveries SET status = {ph('status')}, attempt = {ph('attempt')}, "
            f"next_attempt_at = {ph('next_attempt_at')}, "
            f"response_status = {ph('response_status')}, error = {ph('error')}, "
            f"delivered_at = {ph('delivered_at')}, history = {ph('history')}, "
            f"updated_at = {ph('at')} WHERE id = {ph('delivery_id')} AND status = 'pending' "
            f"AND attempt = {ph('claimed_attempt')}"
        )
        self.breaker_success = (
            f"UPDATE webhooks SET consecutive_failures = 0, open_until = NULL "
            f"WHERE id = {ph('webhook_id')}"
        )
        self.breaker_failure = (
            f"UPDATE webhooks SET consecutive_failures = consecutive_failures + 1, "
            f"open_until = CASE WHEN consecutive_failures + 1 >= {ph('threshold')} "
            f"THEN {ph('reopen_at')} ELSE open_until END WHERE id = {ph('webhook_id')}"
        )
        self.prune = (
            f"SELECT id FROM webhook_deliveries WHERE status <> 'pending' "
            f"AND updated_at < {ph('before')} ORDER BY updated_at LIMIT {ph('limit')}"
        )
        self._ph = ph

    def list_webhooks(self, limit: int, cursor: str | None) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {}
        where = ""
        if cursor is not None:
            params["cursor"] = decode_cursor(cursor)
            where = f"WHERE id > {self._ph('cursor')} "
        return f"SELECT * FROM webhooks {where}ORDER BY id LIMIT {int(limit) + 1}", params

    def list_deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, limit: int, cursor: str | None
    ) -> tuple[str, dict[str, Any]]:
        ph = self._ph
        params: dict[str, Any] = {"webhook_id": webhook_id}
        clauses = [f"webhook_id = {ph('webhook_id')}"]
        if status is not None:
            params["status"] = status.value
            clauses.append(f"status = {ph('status')}")
        if cursor is not None:
            params["cursor"] = delivery_cursor(cursor)
            clauses.append(f"event_id < {ph('cursor')}")
        sql = (
            f"SELECT * FROM webhook_deliveries WHERE {' AND '.join(clauses)} "
            f"ORDER BY event_id DESC LIMIT {int(limit) + 1}"
        )
        return sql, params


def delivery_cursor(cursor: str) -> int:
    key = decode_cursor(cursor)
    if not key.isascii() or not key.isdigit() or len(key) > 19:
        raise ValidationFailed(
            "cursor is not one this server handed out", code="invalid_cursor", cursor=cursor
        )
    return int(key)


def deliveries_page_cursor(items: list[Delivery], more: bool) -> str | None:
    return encode_cursor(str(items[-1].event_id)) if more and items else None


def webhooks_page_cursor(items: list[Webhook], more: bool) -> str | None:
    return encode_cursor(items[-1].id) if more and items else None


# --- rows -------------------------------------------------------------------------------


def webhook_params(webhook: Webhook, codec: Codec) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "url": webhook.url,
        "secret": webhook.secret,
        "types": codec.dump_json(list(webhook.types)),
        "description": webhook.description,
        "active": codec.dump_bool(webhook.active),
        "last_event_id": webhook.last_event_id,
        "consecutive_failures": webhook.consecutive_failures,
        "open_until": dump_opt_time(codec, webhook.open_until),
        "created_at": codec.dump_time(webhook.created_at),
        "updated_at": codec.dump_time(webhook.updated_at),
        "version": webhook.version,
    }


def webhook_from_row(row: Row, codec: Codec) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        secret=row["secret"],
        types=tuple(codec.load_json(row["types"])),
        description=row["description"],
        active=bool(row["active"]),
        last_event_id=int(row["last_event_id"]),
        consecutive_failures=int(row["consecutive_failures"]),
        open_until=load_opt_time(codec, row["open_until"]),
        created_at=codec.load_time(row["created_at"]),
        updated_at=codec.load_time(row["updated_at"]),
        version=int(row["version"]),
    )


def _history_json(history: tuple[AttemptRecord, ...], codec: Codec) -> Any:
    # Times inside JSON are RFC 3339 text in both dialects.
    return codec.dump_json(
        [
            {
                "attempt": r.attempt,
                "at": isoformat(r.at),
                "outcome": r.outcome,
                "response_status": r.response_status,
                "error": r.error,
                "duration_ms": r.duration_ms,
                "next_attempt_at": None
                if r.next_attempt_at is None
                else isoformat(r.next_attempt_at),
            }
            for r in history
        ]
    )


def _history_from(raw: Any, codec: Codec) -> tuple[AttemptRecord, ...]:
    records = []
    for item in codec.load_json(raw) or []:
        records.append(
            AttemptRecord(
                attempt=int(item["attempt"]),
                at=parse_iso(item["at"]),
                outcome=item["outcome"],
                response_status=item.get("response_status"),
                error=item.get("error"),
                duration_ms=item.get("duration_ms"),
                next_attempt_at=parse_iso(item["next_attempt_at"])
                if item.get("next_attempt_at")
                else None,
            )
        )
    return tuple(records)


def delivery_params(delivery: Delivery, codec: Codec) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "payload": delivery.payload,
        "status": delivery.status.value,
        "attempt": delivery.attempt,
        "response_status": delivery.response_status,
        "error": delivery.error,
        "history": _history_json(delivery.history, codec),
        "next_attempt_at": dump_opt_time(codec, delivery.next_attempt_at),
        "created_at": codec.dump_time(delivery.created_at),
        "updated_at": codec.dump_time(delivery.updated_at),
        "delivered_at": dump_opt_time(codec, delivery.delivered_at),
    }


def delivery_from_row(row: Row, codec: Codec) -> Delivery:
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        event_id=int(row["event_id"]),
        event_type=row["event_type"],
        payload=row["payload"],
        status=DeliveryStatus(row["status"]),
        attempt=int(row["attempt"]),
        response_status=row["response_status"],
        error=row["error"],
        history=_history_from(row["history"], codec),
        next_attempt_at=load_opt_time(codec, row["next_attempt_at"]),
        created_at=codec.load_time(row["created_at"]),
        updated_at=codec.load_time(row["updated_at"]),
        delivered_at=load_opt_time(codec, row["delivered_at"]),
    )


def outcome_params(outcome: Outcome, codec: Codec) -> dict[str, Any]:
    return {
        "delivery_id": outcome.delivery_id,
        "webhook_id": outcome.webhook_id,
        "claimed_attempt": outcome.claimed_attempt,
        "status": outcome.status.value,
        "attempt": outcome.attempt,
        "next_attempt_at": dump_opt_time(codec, outcome.next_attempt_at),
        "response_status": outcome.response_status,
        "error": outcome.error,
        "delivered_at": dump_opt_time(codec, outcome.delivered_at),
        "history": _history_json(outcome.history, codec),
        "at": codec.dump_time(outcome.at),
        "threshold": outcome.threshold,
        "reopen_at": dump_opt_time(codec, outcome.reopen_at),
    }
