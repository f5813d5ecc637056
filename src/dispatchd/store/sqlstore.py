"""The store, written once over a `Connector` (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

from dispatchd.domain.costs import Cost
from dispatchd.domain.models import (
    Agent,
    Attempt,
    Comment,
    Event,
    ProgressEntry,
    Review,
    Task,
    TaskDetail,
    TaskStatus,
)
from dispatchd.domain.notifications import Digest, Notification
from dispatchd.domain.rooms import Room, RoomActivity
from dispatchd.domain.schedules import Fire, Schedule
from dispatchd.domain.webhooks import Advance, Delivery, DeliveryStatus, Head, Outcome, Webhook
from dispatchd.errors import ConcurrentUpdate
from dispatchd.jobs import JobStatus
from dispatchd.store import migrations, writes
from dispatchd.store.base import (
    AgentFilter,
    AgentLoad,
    ClaimPlan,
    ClaimQuery,
    ClaimView,
    CommitListener,
    CostTotal,
    Counts,
    Due,
    Lease,
    Op,
    Page,
    Pruned,
    QueueStats,
    TaskFilter,
    WriteListener,
)
from dispatchd.store.connector import Body, Connector, Query, all_rows, checked, execute, one, send
from dispatchd.store.queries import Queries
from dispatchd.store.readers import EventScope
from dispatchd.store.rows import OPEN_DIGEST, digest_from_row, encode_cursor, from_row, to_row

logger = logging.getLogger(__name__)

R = TypeVar("R")


class SQLStore:
    """Every `Store` method, over a connector that runs the statements."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.dialect = connector.dialect.name
        self.codec = connector.dialect.codec
        self.q = _queries(connector)
        self._listeners: list[CommitListener] = []
        self._writers: list[WriteListener] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self.connector.open()

    async def close(self) -> None:
        await self.connector.close()

    async def ping(self) -> None:
        await self.connector.ping()

    async def migrate(self) -> list[int]:
        def body() -> Body[list[int]]:
            # Two processes starting at once: the second waits, then finds nothing to do.
            if self.q.lock_migrations:
                yield execute(self.q.lock_migrations)
            yield execute(self.q.create_migrations)
            applied = {int(r["version"]) for r in (yield all_rows(self.q.migrations))}
            done = []
            for migration in migrations.pending(self.dialect, applied):
                yield Query("script", migration.sql)
                params = {"version": migration.version, "name": migration.name}
                yield execute(self.q.record_migration, params)
                done.append(migration.version)
            return done

        done = await self.connector.transaction(body())
        if done:
            logger.info("applied migrations", extra={"action": "migrate", "versions": done})
        return done

    def on_commit(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def on_written(self, listener: WriteListener) -> None:
        self._writers.append(listener)

    def _told(self, events: list[Event], ops: Sequence[Op]) -> list[Event]:
        if events:
            for writer in self._writers:
                writer(ops, events)
            for listener in self._listeners:
                listener(events)
        return events

    async def watch(self, advanced: Callable[[int], None], job: JobStatus | None = None) -> None:
        await self.connector.watch(advanced, job)

    def lease(self, name: str, *, check_s: float) -> Lease:
        return self.connector.lease(name, check_s=check_s)

    # --- writes ---------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> list[Event]:
        return self._told(await self.connector.transaction(writes.commit(self.q, ops)), ops)

    async def claim(self, query: ClaimQuery, plan: ClaimPlan) -> list[Event]:
        planned: list[Sequence[Op]] = []

        def planning(view: ClaimView) -> Sequence[Op]:
            ops = plan(view)
            planned.append(ops)
            return ops

        events = await self.connector.transaction(writes.claim(self.q, query, planning))
        return self._told(events, planned[-1] if planned else ())

    async def prune(
        self, *, events_before: datetime | None, tasks_before: datetime | None, limit: int
    ) -> Pruned:
        body = writes.prune(self.q, events_before, tasks_before, limit)
        return await self.connector.transaction(body)

    # --- reads ----------------------------------------------------------------------------

    async def _one(self, cls: type[R], sql: str, **params: Any) -> R | None:
        row = await self.connector.fetch_one(sql, params)
        return from_row(cls, row, self.codec) if row else None

    async def _all(self, cls: type[R], sql: str, **params: Any) -> list[R]:
        return [from_row(cls, r, self.codec) for r in await self.connector.fetch_all(sql, params)]

    async def _page(
        self, cls: type[R], query: tuple[str, dict[str, Any]], limit: int, key: Callable[[R], Any]
    ) -> Page[R]:
        """A page of `limit` items, and the cursor of the next if there are more."""
        sql, params = query
        items = await self._all(cls, sql, **params, limit=limit + 1)
        page = items[:limit]
        return Page(
            page, encode_cursor(str(key(page[-1]))) if len(items) > limit and page else None
        )

    async def get_task(self, task_id: str) -> Task | None:
        return await self._one(Task, self.q.task, id=task_id)

    async def get_tasks(self, task_ids: Sequence[str]) -> list[Task]:
        ids = self.connector.dialect.dump_list(list(task_ids))
        return await self._all(Task, self.q.tasks, ids=ids) if task_ids else []

    async def find_by_idempotency_key(self, requester: str, key: str) -> Task | None:
        return await self._one(Task, self.q.task_by_key, requester=requester, key=key)

    async def list_tasks(
        self, flt: TaskFilter, *, limit: int, cursor: str | None, descending: bool = True
    ) -> Page[Task]:
        query = self.q.list_tasks(flt, cursor, descending)
        return await self._page(Task, query, limit, lambda t: t.id)

    async def task_detail(self, task_id: str) -> TaskDetail | None:
        q, codec = self.q, self.codec

        def body() -> Body[TaskDetail | None]:
            row = yield one(q.task, {"id": task_id})
            if row is None:
                return None
            params = {"task_id": task_id}
            attempts = yield all_rows(q.attempts, params)
            progress = yield all_rows(q.progress, params)
            comments = yield all_rows(q.comments, params)
            reviews = yield all_rows(q.reviews, params)
            return TaskDetail(
                task=from_row(Task, row, codec),
                attempts=tuple(from_row(Attempt, r, codec) for r in attempts),
                progress=tuple(from_row(ProgressEntry, r, codec) for r in progress),
                comments=tuple(from_row(Comment, r, codec) for r in comments),
                reviews=tuple(from_row(Review, r, codec) for r in reviews),
            )

        return await self.connector.transaction(body(), write=False)

    async def attempts(self, task_id: str) -> list[Attempt]:
        return await self._all(Attempt, self.q.attempts, task_id=task_id)

    async def reviews(self, task_id: str) -> list[Review]:
        return await self._all(Review, self.q.reviews, task_id=task_id)

    async def open_reviews(self, task_id: str) -> list[Task]:
        return await self._all(Task, self.q.open_reviews, task_id=task_id)

    async def active_tasks_of(self, agent_id: str) -> list[Task]:
        return await self._all(Task, self.q.active_tasks, agent_id=agent_id)

    async def get_agent(self, agent_id: str) -> Agent | None:
        return await self._one(Agent, self.q.agent, id=agent_id)

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None:
        return await self._one(Agent, self.q.agent_by_hash, token_hash=token_hash)

    async def list_agents(
        self, flt: AgentFilter, *, limit: int, cursor: str | None
    ) -> Page[AgentLoad]:
        page = await self._page(Agent, self.q.list_agents(flt, cursor), limit, lambda a: a.id)
        return Page([AgentLoad(a, a.active) for a in page.items], page.next_cursor)

    async def counts(self) -> Counts:
        q = self.q

        def body() -> Body[Counts]:
            tasks = {r["status"]: int(r["n"]) for r in (yield all_rows(q.task_counts))}
            agents = {r["status"]: int(r["n"]) for r in (yield all_rows(q.agent_counts))}
            drained = int((yield one(q.drained_count))["n"])
            if drained:
                agents["draining"] = drained
            return Counts(tasks_by_status=tasks, agents_by_status=agents)

        return await self.connector.transaction(body(), write=False)

    async def queue_stats(
        self, since: datetime, limit: int, windows: Mapping[str, datetime] | None = None
    ) -> QueueStats:
        q, codec = self.q, self.codec

        def body() -> Body[QueueStats]:
            rows = yield all_rows(q.stats_open)
            open_tasks = {(r["status"], r["priority"]): int(r["n"]) for r in rows}
            oldest = (yield one(q.stats_oldest))["at"]
            params = {"since": codec.dump_time(since), "limit": limit}
            finished = [
                (
                    codec.load_time(r["created_at"]),
                    r["started_at"] and codec.load_time(r["started_at"]),
                    codec.load_time(r["finished_at"]),
                    r["status"],
                )
                for r in (yield all_rows(q.stats_finished, params))
            ]
            counts: dict[str, dict[str, int]] = {}
            for name, start in (windows or {}).items():
                rows = yield all_rows(q.stats_finished_counts, {"since": codec.dump_time(start)})
                counts[name] = {r["status"]: int(r["n"]) for r in rows}
            return QueueStats(open_tasks, oldest and codec.load_time(oldest), finished, counts)

        return await self.connector.transaction(body(), write=False)

    async def cost_totals(self, *, since: date, limit: int) -> list[CostTotal]:
        rows = await self.connector.fetch_all(
            self.q.cost_totals, {"since": since.isoformat(), "limit": limit}
        )
        return [
            CostTotal(
                date.fromisoformat(r["day"]),
                r["requester"],
                r["agent"],
                Cost(float(r["usd"]), int(r["input_tokens"]), int(r["output_tokens"])),
            )
            for r in rows
        ]

    async def spent_usd(self, requester: str, day: date) -> float:
        params = {"requester": requester, "day": day.isoformat()}
        row = await self.connector.fetch_one(self.q.spent_usd, params)
        return float(row["usd"]) if row and row["usd"] is not None else 0.0

    async def events_for_task(self, task_id: str) -> list[Event]:
        return await self._all(Event, self.q.task_events, task_id=task_id)

    async def read_events(self, *, after: int, limit: int) -> list[Event]:
        return await self._all(Event, self.q.events_after, after=after, limit=limit)

    async def read_events_where(
        self, scope: EventScope, *, after: int, until: int, limit: int
    ) -> list[Event]:
        sql, params = self.q.events_where(scope)
        return await self._all(Event, sql, after=after, until=until, limit=limit, **params)

    async def last_event_id(self) -> int:
        row = await self.connector.fetch_one(self.q.last_event, {})
        return int(row["n"]) if row else 0

    async def get_cursor(self, name: str) -> int | None:
        row = await self.connector.fetch_one(self.q.cursor, {"name": name})
        return int(row["last_event_id"]) if row else None

    # --- assignment -----------------------------------------------------------------------

    async def get_agents(self, agent_ids: Sequence[str]) -> list[Agent]:
        ids = self.connector.dialect.dump_list(list(agent_ids))
        return await self._all(Agent, self.q.agents, ids=ids) if agent_ids else []

    async def all_agents(self) -> list[Agent]:
        return await self._all(Agent, self.q.all_agents)

    async def claimable(self, query: ClaimQuery) -> list[Task]:
        sql, params = self.q.claimable(query, lock=False)

        def body() -> Body[list[Task]]:
            if self.q.plan_queue:
                yield send(self.q.plan_queue)
            return [from_row(Task, r, self.codec) for r in (yield all_rows(sql, params, last=True))]

        return await self.connector.transaction(body(), write=False)

    async def children(self, parent_id: str) -> list[Task]:
        return await self._all(Task, self.q.children, id=parent_id)

    async def due(self, now: datetime, since: datetime, limit: int) -> Due:
        q, codec = self.q, self.codec
        params = {"now": codec.dump_time(now), "since": codec.dump_time(since), "limit": limit}

        def body() -> Body[Due]:
            found = []
            for sql in q.due:
                found.append([from_row(Task, r, codec) for r in (yield all_rows(sql, params))])
            return Due(*found)

        return await self.connector.transaction(body(), write=False)

    async def next_deadline(self, since: datetime) -> datetime | None:
        params = {"since": self.codec.dump_time(since)}
        row = await self.connector.fetch_one(self.q.next_deadline, params)
        return self.codec.load_time(row["x"]) if row and row["x"] else None

    # --- notifications --------------------------------------------------------------------

    async def open_digest(self) -> Digest | None:
        row = await self.connector.fetch_one(self.q.digest, {"name": OPEN_DIGEST})
        return digest_from_row(row, self.codec) if row else None

    async def list_notifications(
        self,
        *,
        after: int,
        limit: int,
        unacknowledged_only: bool = False,
        requester: str | None = None,
    ) -> list[Notification]:
        if requester is not None:
            q = self.q
            sql = q.requester_unacknowledged if unacknowledged_only else q.requester_notifications
            return await self._all(Notification, sql, after=after, limit=limit, requester=requester)
        sql = self.q.unacknowledged if unacknowledged_only else self.q.notifications
        return await self._all(Notification, sql, after=after, limit=limit)

    async def acknowledge_notifications(
        self,
        *,
        ids: Sequence[int] | None = None,
        up_to: int | None = None,
        by: str,
        at: datetime,
    ) -> int:
        params: dict[str, Any] = {"by": by, "at": self.codec.dump_time(at)}
        if ids is not None:
            params["ids"] = self.connector.dialect.dump_list(list(ids))
            return await self.connector.execute(self.q.ack_ids, params)
        if up_to is not None:
            return await self.connector.execute(self.q.ack_up_to, {**params, "up_to": up_to})
        return 0

    # --- webhooks -------------------------------------------------------------------------

    async def create_webhook(self, webhook: Webhook) -> None:
        await self.connector.execute(self.q.insert_webhook, to_row(webhook, self.codec))

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        return await self._one(Webhook, self.q.webhook, id=webhook_id)

    async def list_webhooks(self, *, limit: int, cursor: str | None) -> Page[Webhook]:
        return await self._page(Webhook, self.q.list_webhooks(cursor), limit, lambda w: w.id)

    async def active_webhooks(self) -> list[Webhook]:
        return await self._all(Webhook, self.q.active_webhooks)

    async def update_webhook(
        self, webhook: Webhook, *, reset_breaker: bool = False, last_event_id: int | None = None
    ) -> None:
        q, codec = self.q, self.codec
        params = to_row(webhook, codec)
        params.update(reset=codec.dump_bool(reset_breaker), last_event_id=last_event_id)

        def body() -> Body[None]:
            moved = ConcurrentUpdate(f"webhook {webhook.id} changed meanwhile")
            yield checked(q.update_webhook, params, moved)
            if not webhook.active:
                now = codec.dump_time(webhook.updated_at)
                yield send(q.abandon_pending, {"id": webhook.id, "now": now})

        await self.connector.transaction(body())

    async def delete_webhook(self, webhook_id: str) -> bool:
        q = self.q

        def body() -> Body[bool]:
            found: bool = (yield execute(q.delete_webhook, {"id": webhook_id})) == 1
            yield send(q.delete_deliveries, {"id": webhook_id})
            return found

        return await self.connector.transaction(body())

    async def enqueue_deliveries(self, advances: Sequence[Advance]) -> int:
        q, codec = self.q, self.codec

        def body() -> Body[int]:
            written = 0
            # In id order, so two replicas advancing the same webhooks never wait on each
            # other's rows in opposite orders.
            for advance in sorted(advances, key=lambda a: a.webhook_id):
                row = yield one(q.lock_webhook, {"id": advance.webhook_id})
                if row is None or not row["active"]:
                    continue
                cursor = int(row["last_event_id"])
                if cursor >= advance.last_event_id:
                    continue
                for delivery in advance.deliveries:
                    if delivery.event_id > cursor:
                        params = to_row(delivery, codec)
                        written += yield execute(q.insert_delivery, params)
                params = {"id": advance.webhook_id, "last": advance.last_event_id}
                yield send(q.advance, params)
            return written

        return await self.connector.transaction(body())

    async def delivery_heads(self) -> list[Head]:
        q, codec = self.q, self.codec

        def body() -> Body[list[Head]]:
            rows = yield all_rows(q.active_webhooks)
            hooks = {r["id"]: from_row(Webhook, r, codec) for r in rows}
            heads = []
            for row in (yield all_rows(q.heads)):
                delivery = from_row(Delivery, row, codec)
                if (hook := hooks.get(delivery.webhook_id)) is not None:
                    heads.append(Head(hook, delivery))
            return heads

        return await self.connector.transaction(body(), write=False)

    async def claim_delivery(
        self, delivery_id: str, attempt: int, *, until: datetime, now: datetime
    ) -> Delivery | None:
        q, codec = self.q, self.codec
        params = {
            "id": delivery_id,
            "attempt": attempt,
            "until": codec.dump_time(until),
            "now": codec.dump_time(now),
        }

        def body() -> Body[Delivery | None]:
            # All rows: a RETURNING statement is finished only once its rows are read.
            rows = yield all_rows(q.claim_delivery, params)
            return from_row(Delivery, rows[0], codec) if rows else None

        return await self.connector.transaction(body())

    async def record_delivery(self, outcome: Outcome) -> bool:
        q = self.q
        params = to_row(outcome, self.codec)

        def body() -> Body[bool]:
            yield one(q.lock_webhook, {"id": outcome.webhook_id})
            if (yield execute(q.record_delivery, params)) != 1:
                return False
            if outcome.breaker == "success":
                yield send(q.breaker_success, params)
            elif outcome.breaker == "failure":
                yield send(q.breaker_failure, params)
            return True

        return await self.connector.transaction(body())

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page[Delivery]:
        query = self.q.list_deliveries(webhook_id, status, cursor)
        return await self._page(Delivery, query, limit, lambda d: d.event_id)

    async def prune_deliveries(self, *, before: datetime, limit: int) -> int:
        q, dialect = self.q, self.connector.dialect
        params = {"before": dialect.codec.dump_time(before), "limit": limit}

        def body() -> Body[int]:
            ids = [r["id"] for r in (yield all_rows(q.finished_deliveries, params))]
            if ids:
                yield send(q.drop_deliveries, {"ids": dialect.dump_list(ids)})
            return len(ids)

        return await self.connector.transaction(body())

    # --- rooms ----------------------------------------------------------------------------

    async def get_room(self, room_id: str) -> Room | None:
        return await self._one(Room, self.q.room, id=room_id)

    async def list_rooms(self, *, limit: int, cursor: str | None) -> Page[Room]:
        return await self._page(Room, self.q.list_rooms(cursor), limit, lambda r: r.id)

    async def room_activity(self, room_ids: Sequence[str]) -> Mapping[str, RoomActivity]:
        if not room_ids:
            return {}
        q, codec = self.q, self.codec
        params = {"ids": self.connector.dialect.dump_list(sorted(set(room_ids)))}

        def body() -> Body[dict[str, RoomActivity]]:
            agents: dict[str, list[Agent]] = {}
            for row in (yield all_rows(q.room_agents, params)):
                agent = from_row(Agent, row, codec)
                agents.setdefault(agent.room or "", []).append(agent)
            active: dict[str, list[Task]] = {}
            for row in (yield all_rows(q.room_active, params)):
                task = from_row(Task, row, codec)
                active.setdefault(task.scope or "", []).append(task)
            counts = {r["scope"]: r for r in (yield all_rows(q.room_counts, params))}
            last = {
                r["scope"]: r["status"]
                for r in (yield all_rows(q.room_last_finished, params))
                if r["status"] is not None
            }
            found = {}
            for room_id in room_ids:  # `room_counts` answers a row for each
                last_at = counts[room_id]["last_at"]
                found[room_id] = RoomActivity(
                    agents=agents.get(room_id, []),
                    active=active.get(room_id, []),
                    pending=int(counts[room_id]["pending"]),
                    last_task_at=None if last_at is None else codec.load_time(last_at),
                    last_finished=TaskStatus(last[room_id]) if room_id in last else None,
                )
            return found

        return await self.connector.transaction(body(), write=False)

    async def room_tasks(
        self, room_id: str, *, limit: int, statuses: Sequence[str] = ()
    ) -> list[Task]:
        sql, params = self.q.room_tasks(room_id, statuses)
        return await self._all(Task, sql, **params, limit=limit)

    async def room_events(self, room_id: str, *, limit: int) -> list[Event]:
        return await self._all(Event, self.q.room_events, room=room_id, limit=limit)

    # --- schedules ------------------------------------------------------------------------

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        return await self._one(Schedule, self.q.schedule, id=schedule_id)

    async def list_schedules(self, *, limit: int, cursor: str | None) -> Page[Schedule]:
        return await self._page(Schedule, self.q.list_schedules(cursor), limit, lambda s: s.id)

    async def delete_schedule(self, schedule_id: str) -> bool:
        q = self.q

        def body() -> Body[bool]:
            found: bool = (yield execute(q.delete_schedule, {"id": schedule_id})) == 1
            yield send(q.delete_fires, {"id": schedule_id})
            return found

        return await self.connector.transaction(body())

    async def due_schedules(self, now: datetime, limit: int) -> list[Schedule]:
        params = {"now": self.codec.dump_time(now), "limit": limit}
        return await self._all(Schedule, self.q.due_schedules, **params)

    async def schedule_fires(self, schedule_id: str, *, limit: int) -> list[Fire]:
        return await self._all(Fire, self.q.schedule_fires, id=schedule_id, limit=limit)


_QUERIES: dict[str, Queries] = {}


def _queries(connector: Connector) -> Queries:
    """The dialect's statements, built once per process."""
    name = connector.dialect.name
    if name not in _QUERIES:
        _QUERIES[name] = Queries(connector.dialect)
    return _QUERIES[name]
