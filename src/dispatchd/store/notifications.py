"""The notifications tables in either dialect: SQL and rows (migration 0007)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatchd.domain.notifications import Digest, Kind, Notification
from dispatchd.store.base import AdvanceCursor, InsertNotification, SaveDigest
from dispatchd.store.rows import Codec, Row

Placeholder = Callable[[str], str]

# The name of the open digest's row.
OPEN = "open"


@dataclass(frozen=True, slots=True)
class NotificationSQL:
    insert: str
    save_digest: str
    drop_digest: str
    select_digest: str
    cursor_insert: str
    cursor_update: str
    list_all: str
    list_unacknowledged: str
    ack_up_to: str
    ack_ids: str


def notification_sql(ph: Placeholder, ids_clause: str) -> NotificationSQL:
    """`ids_clause` tests `id` against the list bound as `ids`."""
    ack = (
        f"UPDATE notifications SET acknowledged_at = {ph('at')}, acknowledged_by = {ph('by')} "
        "WHERE acknowledged_at IS NULL AND "
    )
    return NotificationSQL(
        insert=(
            "INSERT INTO notifications (kind, task_id, data, event_id, created_at) "
            f"VALUES ({ph('kind')}, {ph('task_id')}, {ph('data')}, {ph('event_id')}, "
            f"{ph('created_at')})"
        ),
        save_digest=(
            "INSERT INTO notification_digest "
            "(name, opened_at, closes_at, event_id, data, updated_at) "
            f"VALUES ({ph('name')}, {ph('opened_at')}, {ph('closes_at')}, {ph('event_id')}, "
            f"{ph('data')}, {ph('updated_at')}) "
            "ON CONFLICT (name) DO UPDATE SET opened_at = excluded.opened_at, "
            "closes_at = excluded.closes_at, event_id = excluded.event_id, "
            "data = excluded.data, updated_at = excluded.updated_at"
        ),
        drop_digest=f"DELETE FROM notification_digest WHERE name = {ph('name')}",
        select_digest=f"SELECT * FROM notification_digest WHERE name = {ph('name')}",
        # The cursor moves only from where the writer read it: a second writer working
        # from the same position fails instead of writing the same entries again.
        cursor_insert=(
            "INSERT INTO cursors (name, last_event_id, updated_at) "
            f"VALUES ({ph('name')}, {ph('last')}, {ph('at')}) ON CONFLICT (name) DO NOTHING"
        ),
        cursor_update=(
            f"UPDATE cursors SET last_event_id = {ph('last')}, updated_at = {ph('at')} "
            f"WHERE name = {ph('name')} AND last_event_id = {ph('expected')}"
        ),
        list_all=(
            f"SELECT * FROM notifications WHERE id > {ph('after')} ORDER BY id LIMIT {ph('limit')}"
        ),
        list_unacknowledged=(
            f"SELECT * FROM notifications WHERE id > {ph('after')} "
            f"AND acknowledged_at IS NULL ORDER BY id LIMIT {ph('limit')}"
        ),
        ack_up_to=ack + f"id <= {ph('up_to')}",
        ack_ids=ack + ids_clause,
    )


def notification_params(n: Notification, codec: Codec) -> dict[str, Any]:
    return {
        "kind": n.kind.value,
        "task_id": n.task_id,
        "data": codec.dump_json(n.data),
        "event_id": n.event_id,
        "created_at": codec.dump_time(n.created_at),
    }


def notification_from_row(row: Row, codec: Codec) -> Notification:
    acked = row["acknowledged_at"]
    return Notification(
        id=int(row["id"]),
        kind=Kind(row["kind"]),
        task_id=row["task_id"],
        data=codec.load_json(row["data"]),
        event_id=int(row["event_id"]),
        created_at=codec.load_time(row["created_at"]),
        acknowledged_at=codec.load_time(acked) if acked is not None else None,
        acknowledged_by=row["acknowledged_by"],
    )


def digest_params(digest: Digest, at: datetime, codec: Codec) -> dict[str, Any]:
    return {
        "name": OPEN,
        "opened_at": codec.dump_time(digest.opened_at),
        "closes_at": codec.dump_time(digest.closes_at),
        "event_id": digest.event_id,
        "data": codec.dump_json(digest.data()),
        "updated_at": codec.dump_time(at),
    }


def digest_from_row(row: Row, codec: Codec) -> Digest:
    return Digest.from_data(
        codec.load_time(row["opened_at"]),
        codec.load_time(row["closes_at"]),
        int(row["event_id"]),
        codec.load_json(row["data"]),
    )


# The writes of the notifier that each engine applies in `commit`.
NotificationOp = AdvanceCursor | InsertNotification | SaveDigest
