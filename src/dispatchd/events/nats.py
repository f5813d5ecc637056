"""Publishing the event log to NATS ("Hermes").

With `hermes.url` set, every event goes to the subject `<hermes.subject_prefix>.<type>`
(`dispatch.task.completed`), as the same JSON the HTTP API returns for an event, with a
`Nats-Msg-Id` header holding the event id, so that a JetStream stream de-duplicates.

Delivery is at least once, in log order. The publisher follows the log (`events/follower.py`)
from the cursor it keeps in the store (`nats`): it publishes a batch, waits until the NATS
server has confirmed it (a flush: PING answered by PONG after every message of the batch)
and only then saves the cursor. When NATS is unreachable, or the connection breaks, it backs
off (doubling, with jitter, capped) and reconnects, resuming from the saved cursor: an
outage or a restart only delays delivery. A batch that was published but whose cursor was
not yet saved (the connection broke before the confirmation, or dispatchd died in between)
is published again, so a consumer may see an event twice; it keeps the order of first
deliveries and can drop repeats by the event id. Core NATS hands a message only to the
subscribers connected when it arrives: a consumer that must not miss any while it is itself
away reads from a JetStream stream on `dispatch.>`.

The first time it runs on a database (no saved cursor) the publisher starts from the head of
the log as it was when dispatchd started, not from its beginning: turning NATS on for an old
database does not replay its history. That starting point is saved at once, so events
written while NATS is still unreachable are delivered once it is back. Events deleted by
retention before they could be published (NATS down for longer than
`events.retention_days`) are skipped, with an error in the log.

On PostgreSQL one replica publishes at a time: the one holding the `nats` lease (a session
advisory lock, see `Store.lease`); the others stand by and take over when it goes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from dispatchd.api.schemas.events import EventOut
from dispatchd.config import HermesConfig
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Event
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import DispatchError
from dispatchd.events.follower import Backoff, Consumer, Follower, stored_cursor
from dispatchd.events.follower import backoff_s as backoff_s
from dispatchd.store.base import Lease, SaveCursor, Store

log = logging.getLogger(__name__)

CURSOR = "nats"
# An idle publisher reads the log this often even without news from the feed.
IDLE_S = 30.0
MSG_ID_HEADER = "Nats-Msg-Id"

# What a lost or unreachable NATS server raises.
NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)
# What the client refuses in one message (larger than the server takes, say): not an
# outage but that event's own failure, so it is set aside rather than waited on for ever.
MESSAGE_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
)


def subject_of(prefix: str, event_type: str) -> str:
    return f"{prefix}.{event_type}"


def payload_of(event: Event) -> dict[str, Any]:
    """The event as the API shows it (`EventOut`): id as a string, RFC 3339 time."""
    return EventOut.of(event).model_dump()


def encode(event: Event) -> bytes:
    return json.dumps(payload_of(event), separators=(",", ":"), ensure_ascii=False).encode()


class NatsPublisher(Consumer):
    def __init__(
        self, store: Store, feed: EventFeed, config: HermesConfig, *, lease: Lease | None = None
    ) -> None:
        assert config.url, "hermes.url is not set"
        self.store = store
        self.config = config
        self.servers = [server.strip() for server in config.url.split(",")]
        self.lease = lease or store.lease(CURSOR, check_s=config.lease_check_s)
        self.cursor: int | None = None  # the last event confirmed by NATS and saved
        self.head = 0  # where to start on a database that has no saved cursor yet
        self.published = 0
        self._client: Client | None = None
        self.follower = Follower(
            "NATS publisher",
            store,
            feed,
            self,
            batch=config.batch_size,
            idle_s=IDLE_S,
            backoff=Backoff(config.retry_base_s, config.retry_cap_s),
            lease=self.lease,
        )

    async def run(self, head: int) -> None:
        """Publish while this replica holds the lease; runs until cancelled. `head` is the
        log's last event when the runtime started: where publishing begins if no cursor
        was ever saved."""
        self.head = head
        try:
            await self.follower.run()
        finally:
            await self.close()

    async def close(self) -> None:
        await self._disconnect()
        await self.lease.release()

    # --- the follower's consumer ------------------------------------------------------

    async def resume(self) -> int:
        """The saved cursor (recorded before NATS is first reached), then a connection."""
        await self._disconnect()
        self.cursor = await stored_cursor(self.store, CURSOR, self.head)
        await self._connect()
        log.info(
            "publishing events to NATS after event %d",
            self.cursor,
            extra={"action": "nats_connected"},
        )
        return self.cursor

    async def handle(self, events: Sequence[Event]) -> None:
        assert self._client is not None, "handle before resume"
        await self._send(self._client, self.config.subject_prefix, events)
        last = events[-1].id
        assert last is not None
        await self.store.commit([SaveCursor(CURSOR, last, utcnow())])
        self.cursor = last
        self.published += len(events)

    async def skip(self, event: Event) -> bool:
        assert event.id is not None
        await self.store.commit([SaveCursor(CURSOR, event.id, utcnow())])
        self.cursor = event.id
        return True

    def explain(self, exc: Exception) -> str | None:
        if isinstance(exc, MESSAGE_ERRORS):
            return None
        if isinstance(exc, NATS_ERRORS):
            return f"NATS unavailable ({_describe(exc)})"
        if isinstance(exc, DispatchError):
            return f"cannot read or record the NATS cursor ({exc})"
        return None

    async def pause(self) -> None:
        await self._disconnect()

    # --- NATS -------------------------------------------------------------------------

    async def _connect(self) -> Client:
        async def error_cb(exc: Exception) -> None:
            log.debug("NATS client error: %s", _describe(exc))

        client = await nats.connect(
            self.servers,
            name="dispatchd",
            connect_timeout=math.ceil(self.config.connect_timeout_s),
            # Reconnection is ours: after a break we resume from the saved cursor, waiting
            # as `retry_*` say. (Even without reconnecting, the client tries each server
            # until it has failed more than `max_reconnect_attempts` times: twice, at once.)
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=error_cb,
        )
        self._client = client
        return client

    async def _send(self, client: Client, prefix: str, events: Sequence[Event]) -> None:
        """Publish `events` and wait until the server has them all."""
        for event in events:
            await client.publish(
                subject_of(prefix, event.type),
                encode(event),
                headers={MSG_ID_HEADER: str(event.id)},
            )
        async with asyncio.timeout(self.config.flush_timeout_s):  # see EventFeed.wait
            await client.flush(timeout=math.ceil(self.config.flush_timeout_s) + 1)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except NATS_ERRORS as exc:
                log.debug("closing the NATS connection: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
