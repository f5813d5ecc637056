"""Retention: the event log and finished tasks do not grow without bound.

Every `events.prune_interval_s` the pruner deletes, in batches, the events older than
`events.retention_days` (always a prefix of the log, recorded as the `retention` cursor so
that readers behind it get 410, and the followers an error in the log, rather than a
silent gap) with the notifications as old, and the tasks that finished longer ago than
`events.finished_task_retention_days`. A value of 0 keeps that kind for ever.
Several replicas may prune at once: each batch is one transaction over what is still there.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from dispatchd.config import EventsConfig
from dispatchd.domain.ids import utcnow
from dispatchd.errors import DispatchError
from dispatchd.jobs import JobStatus, backoff_s, stop_if_cancelled
from dispatchd.store.base import Pruned, Store

log = logging.getLogger(__name__)

BATCH = 1000
# The first wait after a failure (doubling up to the interval).
RETRY_BASE_S = 1.0


class Pruner:
    def __init__(self, store: Store, config: EventsConfig) -> None:
        self.store = store
        self.config = config
        self.job = JobStatus("retention")

    def cutoffs(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        events = self.config.retention_days
        tasks = self.config.finished_task_retention_days
        return (
            now - timedelta(days=events) if events > 0 else None,
            now - timedelta(days=tasks) if tasks > 0 else None,
        )

    async def prune(self, now: datetime | None = None) -> Pruned:
        """Delete everything past retention now, batch by batch; return the totals."""
        events_before, tasks_before = self.cutoffs(now or utcnow())
        events = tasks = notifications = 0
        while events_before is not None or tasks_before is not None:
            batch = await self.store.prune(
                events_before=events_before, tasks_before=tasks_before, limit=BATCH
            )
            events += batch.events
            tasks += batch.tasks
            notifications += batch.notifications
            # A kind whose batch was not full is done.
            if batch.events < BATCH and batch.notifications < BATCH:
                events_before = None
            if batch.tasks < BATCH:
                tasks_before = None
        if events or tasks or notifications:
            log.info(
                "retention deleted %d events, %d notifications and %d finished tasks",
                events,
                notifications,
                tasks,
                extra={"action": "prune"},
            )
        return Pruned(events=events, tasks=tasks, notifications=notifications)

    async def run(self) -> None:
        failures = 0
        while True:
            stop_if_cancelled()
            wait_s = self.config.prune_interval_s
            try:
                await self.prune()
                failures = 0
                self.job.ok()
            except Exception as exc:
                failures += 1
                wait_s = backoff_s(failures, min(RETRY_BASE_S, wait_s), wait_s)
                self.job.failed(exc, "deleting what is past retention")
                if isinstance(exc, DispatchError):
                    log.warning("retention failed: %s", exc, extra={"action": "prune"})
                else:
                    log.error("retention failed", exc_info=exc, extra={"action": "prune"})
            await asyncio.sleep(wait_s)
