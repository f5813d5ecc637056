"""Webhook delivery: the event log, by cursor, to every subscribed HTTP receiver.

Two loops share the work. The follower (`events/follower.py`) reads the log after the
lowest cursor of the active webhooks and, in one transaction, writes a delivery for each
event a webhook's type filter matches and moves that webhook's cursor past what it read; so
an event is owed to a webhook from the moment its cursor passes it, and a restart or an
outage of the receiver loses nothing. The sender takes each webhook's oldest pending
delivery when it is due and its circuit allows, claims it (a fenced update, so two replicas
never send the same attempt), POSTs it signed, and records the outcome: delivered on 2xx,
otherwise another attempt after an exponential backoff with jitter, or failed after
`webhooks.max_attempts`.

Each webhook sends one delivery at a time, in event order: event N+1 waits while N is
being retried. `webhooks.breaker_threshold` failed attempts in a row open the webhook's
circuit for `webhooks.breaker_cooldown_s`; nothing is sent to it meanwhile, then one trial
(the head delivery) closes it again or reopens it. Deliveries wait, pending, while it is open.

A delivery that dispatchd itself fails on (not the receiver: its request cannot be built
or signed, its outcome cannot be recorded) is logged with its ids and tried again after a
backoff, without counting against the receiver; after `POISON_AFTER` such failures in a row
it is set aside: recorded failed, with the error as its reason, and counted by the sender's
job, so that the webhook's next deliveries go on.

Delivery is at least once: a server killed between the receiver's answer and the record of
it sends that attempt again after its claim lapses (`timeout_s` + a margin). Receivers drop
repeats by the `X-Dispatch-Delivery` id. See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx

from dispatchd import __version__
from dispatchd.api.schemas.events import EventOut
from dispatchd.config import WebhooksConfig
from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.models import Event
from dispatchd.domain.webhooks import (
    SIGNATURE_HEADER,
    Advance,
    Delivery,
    DeliveryStatus,
    Outcome,
    Policy,
    Webhook,
    after_attempt,
    interrupted,
    mishandled,
    signature_header,
)
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import DispatchError
from dispatchd.events.follower import Backoff, Consumer, Follower
from dispatchd.events.reader import TypeFilter
from dispatchd.jobs import POISON_AFTER, JobStatus, backoff_s, first_of, stop_if_cancelled
from dispatchd.outbound import Outbound, OutboundRefused
from dispatchd.store.base import Store

log = logging.getLogger(__name__)

# Events read per pass of the follower.
SCAN = 1000
# How often the active webhooks are read again (changes made on another replica), and the
# longest the sender sleeps without looking (a delivery another replica finished).
REFRESH_S = 5.0
# A claimed delivery is held this long past the request timeout before another may try.
LEASE_MARGIN_S = 5.0
# The wait after a database error before the sender tries again; the follower's waits.
RETRY_S = 1.0
FOLLOW_RETRY = Backoff(RETRY_S, 10.0)
# The waits before a delivery dispatchd failed on is tried again.
MISHANDLED_RETRY = Backoff(RETRY_S, 30.0)
PRUNE_EVERY_S = 300.0
PRUNE_BATCH = 1000
# How much of a failing receiver's answer is kept as the delivery's error.
EXCERPT = 200
# How long a shutdown waits to put an interrupted delivery back.
RELEASE_S = 2.0

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


def policy_of(config: WebhooksConfig) -> Policy:
    return Policy(
        max_attempts=config.max_attempts,
        backoff_base=timedelta(milliseconds=config.backoff_base_ms),
        backoff_cap=timedelta(milliseconds=config.backoff_cap_ms),
        breaker_threshold=config.breaker_threshold,
        breaker_cooldown=timedelta(seconds=config.breaker_cooldown_s),
    )


def event_body(event: Event) -> str:
    """The body of a delivery: the event as the events API shows it."""
    return EventOut.of(event).model_dump_json()


class DeliveryWriter(Consumer):
    """The follower's consumer: the events past each active webhook's cursor that its type
    filter matches become deliveries, written with the cursors' move."""

    def __init__(
        self, store: Store, clock: Callable[[], datetime], written: Callable[[], None]
    ) -> None:
        self.store = store
        self._clock = clock
        self._written = written
        self._hooks: dict[str, tuple[Webhook, TypeFilter]] = {}
        self._cursors: dict[str, int] = {}

    async def resume(self) -> int | None:
        """Read the active webhooks again: the lowest cursor among them."""
        hooks = await self.store.active_webhooks()
        self._cursors = {h.id: max(h.last_event_id, self._cursors.get(h.id, 0)) for h in hooks}
        self._hooks = {h.id: (h, TypeFilter(h.types)) for h in hooks}
        return min(self._cursors.values(), default=None)

    async def handle(self, events: Sequence[Event]) -> None:
        last = events[-1].id
        assert last is not None
        now = self._clock()
        bodies: dict[int, str] = {}
        advances = []
        for hook_id, (hook, wanted) in self._hooks.items():
            cursor = self._cursors[hook_id]
            if cursor >= last:
                continue
            deliveries = []
            for event in events:
                assert event.id is not None
                if event.id > cursor and wanted(event.type):
                    body = bodies.get(event.id)
                    if body is None:
                        body = bodies[event.id] = event_body(event)
                    deliveries.append(_delivery(hook, event, body, now))
            advances.append(Advance(hook_id, last, tuple(deliveries)))
        if not advances:
            return
        written = await self.store.enqueue_deliveries(advances)
        for advance in advances:
            self._cursors[advance.webhook_id] = last
        if written:
            self._written()

    async def skip(self, event: Event) -> bool:
        assert event.id is not None
        behind = [h for h, cursor in self._cursors.items() if cursor < event.id]
        if behind:
            await self.store.enqueue_deliveries([Advance(h, event.id, ()) for h in behind])
            for hook_id in behind:
                self._cursors[hook_id] = event.id
        return True


class WebhookDispatcher:
    def __init__(
        self,
        store: Store,
        feed: EventFeed,
        config: WebhooksConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        outbound: Outbound | None = None,
    ) -> None:
        self.store = store
        self.config = config
        # Where deliveries may go, checked on the address each request is sent to.
        self.outbound = outbound
        self.policy = policy_of(config)
        self.lease = timedelta(seconds=config.timeout_s + LEASE_MARGIN_S)
        self._clock = clock
        self._jitter = jitter
        self._send_wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.sender_job = JobStatus("webhook sender")
        self.prune_job = JobStatus("webhook retention")
        self.mishandled_retry = MISHANDLED_RETRY
        # Deliveries dispatchd failed on, by id: the failures in a row, and when the one
        # not claimed yet may be looked at again.
        self._mishandled: dict[str, tuple[int, datetime]] = {}
        # Made on the first delivery: building one (its TLS context) costs tens of ms,
        # which a runtime that never sends should not pay.
        self._client: httpx.AsyncClient | None = None
        # Every replica follows: the store writes each delivery once among them.
        self.follower = Follower(
            "webhook follower",
            store,
            feed,
            DeliveryWriter(store, clock, self._send_wake.set),
            batch=SCAN,
            idle_s=REFRESH_S,
            backoff=FOLLOW_RETRY,
            refresh_s=REFRESH_S,
        )

    def changed(self) -> None:
        """Webhooks were created, changed or deleted here: read them again at once."""
        self.follower.reload()
        self._send_wake.set()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout_s,
                follow_redirects=False,
                headers={"User-Agent": f"dispatchd-webhooks/{__version__}"},
            )
        return self._client

    async def run(self) -> None:
        """Follow the log and send deliveries until cancelled; if one of the loops ever
        ends, the others are stopped and its error raised (the supervisor restarts them)."""
        # Not a TaskGroup: on Python 3.11 one whose child fails while it is exiting leaves
        # its parent task marked as cancelled, and the supervisor would take that for a
        # stop and never restart the job.
        loops = [self.follower.run(), self._send_loop(self._spawn)]
        if self.config.delivery_retention_days > 0:
            loops.append(self._prune_loop())
        try:
            await first_of(*loops)
        finally:
            inflight = list(self._inflight.values())
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    def _spawn(self, delivery: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.create_task(delivery, name="dispatchd webhook delivery")

    # --- sending ----------------------------------------------------------------------

    async def _send_loop(self, spawn: Spawn) -> None:
        while True:
            stop_if_cancelled()
            self._send_wake.clear()
            try:
                wait_s = await self.send_due(spawn)
                self.sender_job.ok()
            except Exception as exc:
                log.exception("webhook sender failed", extra={"action": "webhook"})
                self.sender_job.failed(exc, "sending the due deliveries")
                wait_s = RETRY_S
            await _wait(self._send_wake, wait_s)

    async def send_due(self, spawn: Spawn) -> float:
        """Start every head delivery that is due and whose circuit allows it; the seconds
        until the next one will be."""
        heads = await self.store.delivery_heads()
        now = self._clock()
        soonest = REFRESH_S
        for head in heads:
            hook, delivery = head.webhook, head.delivery
            if hook.id in self._inflight:
                continue
            try:
                ready = delivery.next_attempt_at or now
                if hook.open_until is not None and hook.open_until > ready:
                    ready = hook.open_until
                held = self._mishandled.get(delivery.id)
                if held is not None and held[1] > ready:
                    ready = held[1]
                if ready > now:
                    soonest = min(soonest, (ready - now).total_seconds())
                    continue
                if len(self._inflight) >= self.config.max_in_flight:
                    break  # woken again as soon as one in flight ends
                claimed = await self.store.claim_delivery(
                    delivery.id, delivery.attempt, until=now + self.lease, now=now
                )
            except DispatchError:
                raise  # the database: the whole pass is tried again
            except Exception as exc:
                # This head alone: the others are still sent.
                await self._mishandle(hook, delivery, exc, claimed=False)
                continue
            if claimed is not None:
                self._inflight[hook.id] = spawn(self._deliver(hook, claimed))
        return soonest

    async def _deliver(self, hook: Webhook, delivery: Delivery) -> None:
        started = self._clock()
        try:
            ok, status, error = await self._post(hook, delivery, started)
            outcome = after_attempt(
                delivery,
                ok=ok,
                at=started,
                now=self._clock(),
                policy=self.policy,
                jitter=self._jitter(),
                response_status=status,
                error=error,
            )
            await self._record(hook, outcome)
            self._mishandled.pop(delivery.id, None)
        except asyncio.CancelledError:
            # Shutting down mid-request: put the delivery back, due at once, so the next
            # start sends it without waiting for the claim to lapse.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RELEASE_S):
                    await self.store.record_delivery(
                        interrupted(delivery, at=started, now=self._clock())
                    )
            raise
        except DispatchError as exc:
            # The database is out of reach: the claim lapses and the attempt is made again.
            log.warning(
                "could not record webhook delivery %s: %s",
                delivery.id,
                exc,
                extra={"action": "webhook", "webhook_id": hook.id, "delivery_id": delivery.id},
            )
        except Exception as exc:
            try:
                await self._mishandle(hook, delivery, exc, claimed=True, at=started)
            except Exception:
                # Not even that could be written: the claim lapses, and the next attempt
                # counts as another failure.
                log.exception(
                    "could not put webhook delivery %s back",
                    delivery.id,
                    extra={"action": "webhook", "webhook_id": hook.id, "delivery_id": delivery.id},
                )
        finally:
            self._inflight.pop(hook.id, None)
            self._send_wake.set()

    async def _mishandle(
        self,
        hook: Webhook,
        delivery: Delivery,
        exc: Exception,
        *,
        claimed: bool,
        at: datetime | None = None,
    ) -> None:
        """dispatchd failed on `delivery` (claimed or not yet): log it with its ids, and
        try it again after a backoff; after POISON_AFTER failures in a row, set it aside."""
        now = self._clock()
        tries = self._mishandled.get(delivery.id, (0, now))[0] + 1
        what = f"delivery {delivery.id} of webhook {hook.id}"
        extra = {"webhook_id": hook.id, "delivery_id": delivery.id}
        text = f"{type(exc).__name__}: {exc}"[:EXCERPT]
        if tries < POISON_AFTER:
            wait_s = backoff_s(tries, self.mishandled_retry.base_s, self.mishandled_retry.cap_s)
            later = now + timedelta(seconds=wait_s)
            self._mishandled[delivery.id] = (tries, later)
            log.error(
                "webhook sender failed on %s (%d of %d tries); trying again in %.2fs",
                what,
                tries,
                POISON_AFTER,
                wait_s,
                exc_info=exc,
                extra={"action": "webhook", **extra},
            )
            self.sender_job.failed(exc, f"sending {what}")
            if claimed:
                # Due again after the wait, rather than when the claim lapses.
                outcome = mishandled(delivery, at=at or now, now=now, error=text, retry_at=later)
                await self.store.record_delivery(outcome)
            return
        self._mishandled[delivery.id] = (tries, now)
        if not claimed:
            taken = await self.store.claim_delivery(
                delivery.id, delivery.attempt, until=now + self.lease, now=now
            )
            if taken is None:
                return  # it moved on meanwhile
            delivery = taken
        reason = f"set aside after {tries} failures to send it: {text}"
        outcome = mishandled(delivery, at=at or now, now=now, error=reason, retry_at=None)
        try:
            written = await self.store.record_delivery(outcome)
        except DispatchError:
            raise
        except Exception:
            # The history may be what cannot be written: keep this attempt's record alone.
            bare = replace(outcome, history=outcome.history[-1:])
            written = await self.store.record_delivery(bare)
        self._mishandled.pop(delivery.id, None)
        if not written:
            return  # the webhook was switched off or deleted meanwhile
        log.error(
            "webhook sender set aside %s after %d failures: %s",
            what,
            tries,
            text,
            exc_info=exc,
            extra={"action": "webhook_set_aside", **extra},
        )
        self.sender_job.set_aside(what, exc)

    async def _post(
        self, hook: Webhook, delivery: Delivery, at: datetime
    ) -> tuple[bool, int | None, str | None]:
        body = delivery.payload.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-Dispatch-Event": delivery.event_type,
            "X-Dispatch-Delivery": delivery.id,
            "X-Dispatch-Webhook": hook.id,
            "X-Dispatch-Attempt": str(delivery.attempt),
            SIGNATURE_HEADER: signature_header(hook.secret, int(at.timestamp()), body),
        }
        timeout_s = self.config.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                url, extensions = hook.url, dict[str, Any]()
                if self.outbound is not None:
                    url, pinned, extensions = await self.outbound.pin(hook.url)
                    headers.update(pinned)
                request = self._http().stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                )
                async with request as response:
                    if 200 <= response.status_code < 300:
                        return True, response.status_code, None
                    excerpt = await _excerpt(response)
                    error = f"the receiver answered {response.status_code}"
                    return False, response.status_code, f"{error}: {excerpt}" if excerpt else error
        except TimeoutError:
            return False, None, f"no answer within {timeout_s:g} s"
        except OutboundRefused as exc:
            return False, None, str(exc)[:EXCERPT]
        except Exception as exc:  # any failure to deliver is a failed attempt
            return False, None, f"{type(exc).__name__}: {exc}"[:EXCERPT]

    async def _record(self, hook: Webhook, outcome: Outcome) -> None:
        if not await self.store.record_delivery(outcome):
            return  # the webhook was switched off or deleted meanwhile
        extra = {"action": "webhook", "webhook_id": hook.id, "delivery_id": outcome.delivery_id}
        if outcome.status == DeliveryStatus.FAILED:
            log.warning(
                "webhook delivery %s failed after %d attempts: %s",
                outcome.delivery_id,
                outcome.attempt,
                outcome.error,
                extra=extra,
            )
        elif outcome.breaker == "failure":
            log.info(
                "webhook delivery %s attempt %d failed: %s",
                outcome.delivery_id,
                outcome.attempt,
                outcome.error,
                extra=extra,
            )
        if (
            outcome.breaker == "failure"
            and hook.consecutive_failures + 1 == self.policy.breaker_threshold
        ):
            log.warning(
                "webhook %s circuit open for %g s after %d failed attempts",
                hook.id,
                self.config.breaker_cooldown_s,
                self.policy.breaker_threshold,
                extra=extra,
            )

    # --- retention --------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        self.prune_job.ok()  # running: its first turn is an interval away
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            stop_if_cancelled()
            try:
                await self.prune_once()
                self.prune_job.ok()
            except Exception as exc:
                self.prune_job.failed(exc, "deleting finished deliveries")
                log.exception("webhook delivery retention failed", extra={"action": "prune"})

    async def prune_once(self) -> int:
        """Delete the finished deliveries older than `webhooks.delivery_retention_days`."""
        days = self.config.delivery_retention_days
        if days <= 0:
            return 0
        before = self._clock() - timedelta(days=days)
        total = 0
        while True:
            count = await self.store.prune_deliveries(before=before, limit=PRUNE_BATCH)
            total += count
            if count < PRUNE_BATCH:
                return total


def _delivery(hook: Webhook, event: Event, body: str, now: datetime) -> Delivery:
    assert event.id is not None
    return Delivery(
        id=new_id(),
        webhook_id=hook.id,
        event_id=event.id,
        event_type=event.type,
        payload=body,
        status=DeliveryStatus.PENDING,
        created_at=now,
        updated_at=now,
        next_attempt_at=now,
    )


async def _excerpt(response: httpx.Response) -> str:
    """The start of an answer's body, as text, without reading the rest of it."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= EXCERPT:
            break
    return data[:EXCERPT].decode("utf-8", "replace").strip()


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(timeout_s, 0.0)):
            await event.wait()
