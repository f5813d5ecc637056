"""The storage contract of webhooks and their deliveries, on every engine."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatchd.domain.ids import new_id
from dispatchd.domain.webhooks import (
    Advance,
    AttemptRecord,
    Delivery,
    DeliveryStatus,
    Policy,
    Webhook,
    after_attempt,
    interrupted,
)
from dispatchd.errors import ConcurrentUpdate, DuplicateKey, ValidationFailed
from dispatchd.store.base import Store

T0 = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
S = DeliveryStatus


def make_webhook(**changes: Any) -> Webhook:
    hook = Webhook(
        id=new_id(),
        url="https://receiver.example/hook",
        secret="s" * 32,
        types=("task.*",),
        description="a receiver",
        active=True,
        created_at=T0,
        updated_at=T0,
    )
    return hook.evolve(**changes)


def make_delivery(webhook_id: str, event_id: int, **changes: Any) -> Delivery:
    delivery = Delivery(
        id=new_id(),
        webhook_id=webhook_id,
        event_id=event_id,
        event_type="task.created",
        payload=f'{{"id":"{event_id}","type":"task.created","data":{{"é":"ü"}}}}',
        status=S.PENDING,
        created_at=T0,
        updated_at=T0,
        next_attempt_at=T0,
    )
    return dataclasses.replace(delivery, **changes)


async def enqueue(store: Store, hook: Webhook, last: int, *event_ids: int) -> int:
    deliveries = tuple(make_delivery(hook.id, e) for e in event_ids)
    return await store.enqueue_deliveries([Advance(hook.id, last, deliveries)])


async def all_deliveries(store: Store, webhook_id: str) -> list[Delivery]:
    return (await store.list_deliveries(webhook_id, limit=500)).items


# --- webhooks ---------------------------------------------------------------------------


async def test_a_webhook_reads_back_as_written(store: Store) -> None:
    hook = make_webhook(
        types=("task.completed", "agent.*"),
        open_until=T0 + timedelta(microseconds=1),
        consecutive_failures=2,
        last_event_id=41,
        active=False,
    )
    await store.create_webhook(hook)
    assert await store.get_webhook(hook.id) == hook
    assert await store.get_webhook("nope") is None
    with pytest.raises(DuplicateKey):
        await store.create_webhook(hook)


async def test_webhooks_are_listed_by_id_page_by_page(store: Store) -> None:
    hooks = [make_webhook() for _ in range(5)]
    for hook in hooks:
        await store.create_webhook(hook)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await store.list_webhooks(limit=2, cursor=cursor)
        seen.extend(h.id for h in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(h.id for h in hooks)
    with pytest.raises(ValidationFailed):
        await store.list_webhooks(limit=2, cursor="%%%")


async def test_only_active_webhooks_are_active(store: Store) -> None:
    on, off = make_webhook(), make_webhook(active=False)
    await store.create_webhook(on)
    await store.create_webhook(off)
    assert [h.id for h in await store.active_webhooks()] == [on.id]


async def test_an_update_needs_the_version_it_was_computed_from(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    changed = hook.evolve(url="http://other.example/", description="new", version=2)
    await store.update_webhook(changed)
    assert await store.get_webhook(hook.id) == changed
    with pytest.raises(ConcurrentUpdate):
        await store.update_webhook(hook.evolve(description="stale", version=2))
    assert await store.get_webhook(hook.id) == changed


async def test_an_update_leaves_the_dispatcher_columns_unless_asked(store: Store) -> None:
    hook = make_webhook(consecutive_failures=7, open_until=T0, last_event_id=10)
    await store.create_webhook(hook)
    # What a PATCH computed from an older read: the cursor and breaker in it are stale.
    await enqueue(store, hook, 20, 15)
    await store.update_webhook(hook.evolve(description="x", version=2, last_event_id=0))
    got = await store.get_webhook(hook.id)
    assert got is not None
    assert (got.last_event_id, got.consecutive_failures, got.open_until) == (20, 7, T0)
    await store.update_webhook(got.evolve(version=3), reset_breaker=True, last_event_id=99)
    got = await store.get_webhook(hook.id)
    assert got is not None
    assert (got.last_event_id, got.consecutive_failures, got.open_until) == (99, 0, None)


async def test_switching_a_webhook_off_abandons_what_it_is_owed(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    await enqueue(store, hook, 3, 1, 2, 3)
    first = (await store.delivery_heads())[0].delivery
    claimed = await store.claim_delivery(first.id, 0, until=T0, now=T0)
    assert claimed is not None
    outcome = after_attempt(claimed, ok=True, at=T0, now=T0, policy=Policy(), jitter=0)
    assert await store.record_delivery(outcome)
    await store.update_webhook(hook.evolve(active=False, version=2, updated_at=T0))
    statuses = {d.event_id: d.status for d in await all_deliveries(store, hook.id)}
    assert statuses == {1: S.DELIVERED, 2: S.ABANDONED, 3: S.ABANDONED}
    assert await store.delivery_heads() == []


async def test_deleting_a_webhook_deletes_its_deliveries(store: Store) -> None:
    hook, other = make_webhook(), make_webhook()
    await store.create_webhook(hook)
    await store.create_webhook(other)
    await enqueue(store, hook, 2, 1, 2)
    await enqueue(store, other, 2, 1)
    assert await store.delete_webhook(hook.id)
    assert not await store.delete_webhook(hook.id)
    assert await store.get_webhook(hook.id) is None
    assert await all_deliveries(store, hook.id) == []
    assert len(await all_deliveries(store, other.id)) == 1


# --- enqueueing -------------------------------------------------------------------------


async def test_enqueue_writes_deliveries_and_moves_the_cursor_together(store: Store) -> None:
    hook = make_webhook(last_event_id=5)
    await store.create_webhook(hook)
    # Events at or before the cursor are already handled; the cursor moves to the advance.
    assert await enqueue(store, hook, 9, 4, 5, 6, 8) == 2
    got = await store.get_webhook(hook.id)
    assert got is not None and got.last_event_id == 9
    assert [d.event_id for d in await all_deliveries(store, hook.id)] == [8, 6]
    # The same read again (another replica, or a retry): nothing new, cursor unchanged.
    assert await enqueue(store, hook, 9, 6, 8) == 0
    # A stale read behind the cursor writes nothing and does not move it back.
    assert await enqueue(store, hook, 7, 6) == 0
    got = await store.get_webhook(hook.id)
    assert got is not None and got.last_event_id == 9
    assert len(await all_deliveries(store, hook.id)) == 2


async def test_enqueue_keeps_the_body_byte_for_byte(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    delivery = make_delivery(hook.id, 1, payload='{"b":1,  "a":"\\u00e9é"}')
    await store.enqueue_deliveries([Advance(hook.id, 1, (delivery,))])
    [stored] = await all_deliveries(store, hook.id)
    assert stored == delivery


async def test_enqueue_skips_webhooks_gone_or_switched_off(store: Store) -> None:
    on, off = make_webhook(), make_webhook(active=False)
    await store.create_webhook(on)
    await store.create_webhook(off)
    advances = [
        Advance(on.id, 3, (make_delivery(on.id, 3),)),
        Advance(off.id, 3, (make_delivery(off.id, 3),)),
        Advance("deleted", 3, (make_delivery("deleted", 3),)),
    ]
    assert await store.enqueue_deliveries(advances) == 1
    got = await store.get_webhook(off.id)
    assert got is not None and got.last_event_id == 0
    assert await all_deliveries(store, off.id) == []
    assert await all_deliveries(store, "deleted") == []


async def test_concurrent_enqueues_of_the_same_events_write_each_once(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    results = await asyncio.gather(*(enqueue(store, hook, 50, *range(1, 51)) for _ in range(4)))
    assert sum(results) == 50
    assert len(await all_deliveries(store, hook.id)) == 50


# --- heads, claims and outcomes ---------------------------------------------------------


async def test_the_head_is_each_active_webhooks_oldest_pending_delivery(store: Store) -> None:
    a, b, c = make_webhook(), make_webhook(), make_webhook()
    for hook in (a, b, c):
        await store.create_webhook(hook)
    await enqueue(store, a, 9, 7, 3, 9)
    await enqueue(store, b, 4, 4)
    heads = {h.webhook.id: h for h in await store.delivery_heads()}
    assert set(heads) == {a.id, b.id}
    assert heads[a.id].delivery.event_id == 3
    assert heads[a.id].webhook == await store.get_webhook(a.id)
    # Once the head is finished, the next one in event order takes its place.
    head = heads[a.id].delivery
    claimed = await store.claim_delivery(head.id, 0, until=T0, now=T0)
    assert claimed is not None
    failed = after_attempt(
        claimed, ok=False, at=T0, now=T0, policy=Policy(max_attempts=1), jitter=0
    )
    assert await store.record_delivery(failed)
    heads = {h.webhook.id: h for h in await store.delivery_heads()}
    assert heads[a.id].delivery.event_id == 7


async def test_a_claim_counts_the_attempt_and_only_one_claimer_wins(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    await enqueue(store, hook, 1, 1)
    head = (await store.delivery_heads())[0].delivery
    until = T0 + timedelta(seconds=15)
    claims = await asyncio.gather(
        *(store.claim_delivery(head.id, 0, until=until, now=T0) for _ in range(5))
    )
    won = [c for c in claims if c is not None]
    assert len(won) == 1
    assert won[0].attempt == 1
    assert won[0].next_attempt_at == until
    assert await store.claim_delivery(head.id, 0, until=until, now=T0) is None


async def test_an_outcome_is_written_once_under_its_claim(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    await enqueue(store, hook, 1, 1)
    head = (await store.delivery_heads())[0].delivery
    claimed = await store.claim_delivery(head.id, 0, until=T0, now=T0)
    assert claimed is not None
    done = T0 + timedelta(milliseconds=30)
    outcome = after_attempt(
        claimed, ok=True, at=T0, now=done, policy=Policy(), jitter=0, response_status=204
    )
    assert await store.record_delivery(outcome)
    # A late second report of the same attempt changes nothing.
    late = after_attempt(claimed, ok=False, at=T0, now=done, policy=Policy(), jitter=0)
    assert not await store.record_delivery(late)
    [stored] = await all_deliveries(store, hook.id)
    assert stored.status == S.DELIVERED
    assert (stored.attempt, stored.response_status, stored.delivered_at) == (1, 204, done)
    assert stored.history == (AttemptRecord(1, T0, "delivered", 204, None, 30, None),)


async def test_failures_count_up_and_open_the_circuit_at_the_threshold(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    await enqueue(store, hook, 1, 1)
    policy = Policy(max_attempts=10, breaker_threshold=3, breaker_cooldown=timedelta(seconds=60))
    now = T0
    for n in range(1, 5):
        head = (await store.delivery_heads())[0].delivery
        claimed = await store.claim_delivery(head.id, head.attempt, until=now, now=now)
        assert claimed is not None and claimed.attempt == n
        outcome = after_attempt(
            claimed, ok=False, at=now, now=now, policy=policy, jitter=0.5, error=f"boom {n}"
        )
        assert await store.record_delivery(outcome)
        got = await store.get_webhook(hook.id)
        assert got is not None and got.consecutive_failures == n
        # Opened by the third failure in a row; the fourth (the half-open trial) reopens it.
        assert got.open_until == (now + timedelta(seconds=60) if n >= 3 else None)
        now += timedelta(seconds=61)
    [stored] = await all_deliveries(store, hook.id)
    assert stored.status == S.PENDING and stored.error == "boom 4"
    assert [r.attempt for r in stored.history] == [1, 2, 3, 4]
    # A success closes it.
    claimed = await store.claim_delivery(stored.id, 4, until=now, now=now)
    assert claimed is not None
    assert await store.record_delivery(
        after_attempt(claimed, ok=True, at=now, now=now, policy=policy, jitter=0)
    )
    got = await store.get_webhook(hook.id)
    assert got is not None and (got.consecutive_failures, got.open_until) == (0, None)


async def test_an_interrupted_attempt_is_given_back(store: Store) -> None:
    hook = make_webhook(consecutive_failures=2)
    await store.create_webhook(hook)
    await enqueue(store, hook, 1, 1)
    head = (await store.delivery_heads())[0].delivery
    claimed = await store.claim_delivery(head.id, 0, until=T0 + timedelta(hours=1), now=T0)
    assert claimed is not None
    assert await store.record_delivery(interrupted(claimed, at=T0, now=T0))
    [head] = await store.delivery_heads()
    assert head.delivery.attempt == 0 and head.delivery.next_attempt_at == T0
    assert head.webhook.consecutive_failures == 2


async def test_deliveries_are_listed_newest_first_and_by_status(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    await enqueue(store, hook, 5, 1, 2, 3, 4, 5)
    head = (await store.delivery_heads())[0].delivery
    claimed = await store.claim_delivery(head.id, 0, until=T0, now=T0)
    assert claimed is not None
    await store.record_delivery(
        after_attempt(claimed, ok=True, at=T0, now=T0, policy=Policy(), jitter=0)
    )
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        page = await store.list_deliveries(hook.id, limit=2, cursor=cursor)
        seen.extend(d.event_id for d in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    pending = await store.list_deliveries(hook.id, status=S.PENDING, limit=10)
    assert [d.event_id for d in pending.items] == [5, 4, 3, 2]
    delivered = await store.list_deliveries(hook.id, status=S.DELIVERED, limit=10)
    assert [d.event_id for d in delivered.items] == [1]
    with pytest.raises(ValidationFailed):
        await store.list_deliveries(hook.id, limit=2, cursor="bm90LWEtbnVtYmVy")


async def test_retention_deletes_old_finished_deliveries_only(store: Store) -> None:
    hook = make_webhook()
    await store.create_webhook(hook)
    await enqueue(store, hook, 3, 1, 2, 3)
    for _ in range(2):
        head = (await store.delivery_heads())[0].delivery
        claimed = await store.claim_delivery(head.id, 0, until=T0, now=T0)
        assert claimed is not None
        await store.record_delivery(
            after_attempt(claimed, ok=True, at=T0, now=T0, policy=Policy(), jitter=0)
        )
    assert await store.prune_deliveries(before=T0, limit=10) == 0
    assert await store.prune_deliveries(before=T0 + timedelta(seconds=1), limit=1) == 1
    assert await store.prune_deliveries(before=T0 + timedelta(seconds=1), limit=10) == 1
    assert [d.event_id for d in await all_deliveries(store, hook.id)] == [3]
