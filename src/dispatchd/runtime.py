"""The running broker: settings, store and services, opened and closed together."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dispatchd.config import Settings
from dispatchd.domain.lifecycle import Policy
from dispatchd.engine.agents import AgentService
from dispatchd.engine.assigner import Assigner
from dispatchd.engine.budgets import DailyBudgets
from dispatchd.engine.claims import ClaimService
from dispatchd.engine.deadlines import Sweeper
from dispatchd.engine.directory import Directory
from dispatchd.engine.feed import EventFeed
from dispatchd.engine.firing import Firer
from dispatchd.engine.presence import Presence
from dispatchd.engine.providers import External, connect
from dispatchd.engine.rooms import RoomService
from dispatchd.engine.rules import Rules
from dispatchd.engine.schedules import ScheduleService
from dispatchd.engine.tasks import TaskService
from dispatchd.engine.waiters import Waiters
from dispatchd.engine.wake import Waker
from dispatchd.events.metrics import MetricsFollower
from dispatchd.events.nats import NatsPublisher
from dispatchd.events.notifications import Notifier
from dispatchd.events.reader import EventReader
from dispatchd.events.retention import Pruner
from dispatchd.events.subscriptions import WebhookService
from dispatchd.events.webhooks import WebhookDispatcher
from dispatchd.jobs import Jobs, supervise
from dispatchd.limits import Limiter
from dispatchd.metrics import Metrics
from dispatchd.outbound import Outbound
from dispatchd.store import Store, open_store

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin_token"  # noqa: S105 - a file name, not a secret
# How long a stop waits for the background jobs to end after cancelling them.
STOP_TIMEOUT_S = 10.0


def policy_of(settings: Settings) -> Policy:
    return Policy(
        lease=timedelta(milliseconds=settings.assignment.lease_ms),
        default_timeout=timedelta(milliseconds=settings.assignment.default_timeout_ms),
        backoff_base=timedelta(milliseconds=settings.retry.backoff_base_ms),
        backoff_cap=timedelta(milliseconds=settings.retry.backoff_cap_ms),
        max_lost_requeues=settings.retry.max_lost_requeues,
        max_review_cycles=settings.review.max_cycles,
        wake_timeout=timedelta(milliseconds=settings.assignment.wake_timeout_ms),
        input_timeout=(
            timedelta(milliseconds=settings.assignment.input_timeout_ms)
            if settings.assignment.input_timeout_ms is not None
            else None
        ),
    )


def rules_of(settings: Settings) -> Rules:
    return Rules(
        default_limit=settings.assignment.max_concurrent_per_agent,
        owner_filter=settings.assignment.owner_filter_enabled,
        tiers=dict(settings.routing.tiers),
        default_model=settings.routing.default_model,
        escalate_to=settings.retry.escalate_to,
        row_status=not settings.warren.url,
    )


@dataclass
class AdminToken:
    value: str
    generated: bool
    path: Path | None = None


def admin_token(settings: Settings) -> AdminToken:
    """The configured admin token, else the one kept in the data directory, else a new one."""
    if settings.server.admin_token:
        return AdminToken(settings.server.admin_token, generated=False)
    path = settings.server.data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return AdminToken(path.read_text("utf-8").strip(), generated=False, path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "dsp_admin_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return AdminToken(token, generated=True, path=path)


@dataclass
class Runtime:
    """Services over one store, and the background work of one replica: the assigner
    (push assignment), the deadline sweeper and, on PostgreSQL, the commit listener."""

    settings: Settings
    store: Store
    admin: AdminToken
    background: bool = True
    tasks: TaskService = field(init=False)
    agents: AgentService = field(init=False)
    claims: ClaimService = field(init=False)
    rooms: RoomService = field(init=False)
    metrics: Metrics = field(init=False)
    feed: EventFeed = field(init=False)
    directory: Directory = field(init=False)
    assigner: Assigner = field(init=False)
    sweeper: Sweeper = field(init=False)
    presence: Presence = field(init=False)
    waker: Waker = field(init=False)
    external: External | None = field(init=False)
    jobs: Jobs = field(init=False)
    limiter: Limiter = field(init=False)
    _jobs: list[asyncio.Task[None]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        policy = policy_of(self.settings)
        rules = rules_of(self.settings)
        self.tasks = TaskService(
            self.store,
            policy,
            rules=rules,
            default_max_attempts=self.settings.retry.max_attempts,
            budgets=DailyBudgets(
                self.settings.budgets.requester_daily_usd, dict(self.settings.budgets.requesters)
            ),
        )
        # Where webhooks and wake URLs may point (docs/security.md).
        self.outbound = Outbound(self.settings.outbound)
        self.agents = AgentService(
            self.store, policy, escalate_to=rules.escalate_to, outbound=self.outbound
        )
        self.rooms = RoomService(self.store, self.tasks)
        self.metrics = Metrics()
        # Per-caller rate limits, applied by the API (api/limits.py).
        self.limiter = Limiter(self.settings.limits)
        # What each background job is doing, for /health and /metrics.
        self.jobs = Jobs(self.metrics.job_event)
        self.feed = EventFeed(self.store)
        self.store.on_written(self.feed.written)
        self.store.on_commit(self.feed.committed)
        # A transition starts from the task as this process last wrote it. On SQLite this
        # process is the file's only writer, so that is the row; on PostgreSQL another
        # replica may have written it since. Either way a copy that is not the row (written
        # elsewhere, or deleted by retention) fails its version check, and the task is
        # then read and decided again: one round trip saved on every transition of a task
        # this replica wrote last, one wasted on a task another replica wrote since.
        self.tasks.known = self.feed.task
        # PromptForge / Warren, when configured (docs/providers.md).
        self.external = external = connect(self.settings)
        self.directory = Directory(
            self.store,
            overlay=external.overlay if external else None,
            default_limit=rules.default_limit,
        )
        waiters = Waiters()
        self.waker = Waker(
            service_wake=external.service_wake if external else None, outbound=self.outbound
        )
        offline_after = timedelta(milliseconds=self.settings.assignment.offline_after_ms)
        self.claims = ClaimService(
            self.store,
            rules,
            policy,
            waiters=waiters,
            directory=self.directory,
            offline_after=offline_after,
        )
        self.presence = Presence(self.store, offline_after)
        self.assigner = Assigner(
            self.store,
            self.feed,
            self.directory,
            rules,
            policy,
            waiters=waiters,
            waker=self.waker,
            refresh_s=external.refresh_s if external else None,
        )
        self.tasks.creation.placer = self.assigner.placer
        self.sweeper = Sweeper(
            self.store,
            policy,
            tick=timedelta(milliseconds=self.settings.assignment.tick_interval_ms),
            kick=self.assigner.kick,
            escalate_to=rules.escalate_to,
        )
        self.feed.listen(self.sweeper.poke)
        # Schedules (docs/schedules.md): their next fire times are deadlines of the sweeper.
        self.firer = Firer(self.store, self.tasks)
        self.sweeper.firer = self.firer
        self.schedules = ScheduleService(self.store, self.sweeper.poke)
        self.events = EventReader(self.store, self.feed)
        self.pruner = Pruner(self.store, self.settings.events)
        # Webhook deliveries (docs/webhooks.md); the admin routes manage the subscriptions.
        self.webhook_dispatcher = WebhookDispatcher(
            self.store, self.feed, self.settings.webhooks, outbound=self.outbound
        )
        self.webhooks = WebhookService(
            self.store, self.webhook_dispatcher.changed, outbound=self.outbound
        )
        # Events to NATS, when `hermes.url` is set (docs/events.md).
        self.nats = (
            NatsPublisher(self.store, self.feed, self.settings.hermes)
            if self.settings.hermes.url
            else None
        )
        # Notifications for humans (docs/events.md#notifications).
        self.notifier = Notifier(self.store, self.feed, self.settings.notifications)
        self.metrics_follower = MetricsFollower(self.store, self.feed, self.metrics.events)
        self.assigner.job = self.jobs.status("assigner")
        self.sweeper.job = self.firer.job = self.jobs.status("sweeper")
        self.presence.job = self.jobs.status("presence")
        self.pruner.job = self.jobs.status("retention")
        self.webhook_dispatcher.follower.job = self.jobs.status("webhooks")
        self.webhook_dispatcher.sender_job = self.jobs.status("webhook sender")
        if self.settings.webhooks.delivery_retention_days > 0:
            self.webhook_dispatcher.prune_job = self.jobs.status("webhook retention")
        if self.nats is not None:
            self.nats.follower.job = self.jobs.status("nats publisher")
        self.notifier.follower.job = self.jobs.status("notifier")
        self.metrics_follower.follower.job = self.jobs.status("metrics")

    @classmethod
    def build(
        cls, settings: Settings, store: Store | None = None, *, background: bool = True
    ) -> Runtime:
        """A runtime over `settings`; without `background` no assigner or sweeper runs
        (a tool that only reads or migrates, or a test of the API alone)."""
        store = store or open_store(
            settings.database_url,
            data_dir=settings.server.data_dir,
            pool_size=settings.database.pool_size,
        )
        return cls(
            settings=settings, store=store, admin=admin_token(settings), background=background
        )

    async def __aenter__(self) -> Self:
        await self.store.open()
        try:
            applied = await self.store.migrate()
        except BaseException:
            await self.store.close()
            raise
        if applied:
            log.info("applied migrations %s", applied, extra={"action": "migrate"})
        try:
            await self.feed.start()
            if self.background:
                await self.assigner.start()
                head = self.feed.latest
                self._spawn(self.assigner.run, "assigner")
                self._spawn(self.sweeper.run, "sweeper")
                self._spawn(self.presence.run, "presence")
                listener = self.jobs.status("commit listener")
                self._spawn(
                    lambda: self.store.watch(self.feed.advanced, listener), "commit listener"
                )
                self._spawn(self.pruner.run, "retention")
                self._spawn(self.webhook_dispatcher.run, "webhooks")
                if self.nats is not None:
                    nats = self.nats
                    self._spawn(lambda: nats.run(head), "nats publisher")
                self._spawn(lambda: self.notifier.run(head), "notifier")
                self._spawn(lambda: self.metrics_follower.run(head), "metrics")
        except BaseException:
            await self._stop()
            raise
        return self

    def _spawn(self, start: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a background job under supervision: restarted, after a backoff, if it
        ever ends."""
        status = self.jobs.status(name)
        task = asyncio.create_task(supervise(status, start), name=f"dispatchd {name}")
        task.add_done_callback(_report_crash)
        self._jobs.append(task)

    async def _stop(self) -> None:
        for job in self._jobs:
            job.cancel()
        if self._jobs:
            # A job that ignores its cancellation must not hold the shutdown for ever.
            _, stuck = await asyncio.wait(self._jobs, timeout=STOP_TIMEOUT_S)
            for job in stuck:
                log.error("%s did not stop within %gs", job.get_name(), STOP_TIMEOUT_S)
        self._jobs.clear()
        for status in self.jobs.all.values():
            status.stop()
        await self.webhook_dispatcher.close()
        if self.nats is not None:
            await self.nats.close()
        await self.waker.close()
        if self.external is not None:
            await self.external.close()
        await self.store.close()

    def closing(self) -> None:
        """The API is stopping: long-polls and streams answer now rather than hold up the
        shutdown for their whole wait. Background work goes on until `__aexit__`."""
        self.events.close()
        self.claims.waiters.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()


def _report_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.critical("%s stopped: %r", task.get_name(), exc, exc_info=exc)
