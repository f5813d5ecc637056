"""Prometheus counters and histograms fed by the event log.

Each replica follows the log from where it stood when it started and counts what it reads,
so its counters cover the whole cluster's activity since its start (Prometheus sums or
compares replicas as usual). For the labels events do not carry (a task's priority) and
the durations they imply (run time, time to assignment), the tasks of each batch come
from the feed (`EventFeed.tasks_of`: as this process's commits wrote them, else read from
the store in one query); a task already deleted by retention counts as `unknown`.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from dispatchd.domain.models import Event, Task
from dispatchd.engine.feed import EventFeed
from dispatchd.events.follower import Backoff, Consumer, Follower
from dispatchd.store.base import Store

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
# Outcomes counted per priority, by event type.
OUTCOMES = {
    "task.created": "created",
    "task.completed": "completed",
    "task.failed": "failed",
    "task.retrying": "retried",
    "task.timed_out": "timed_out",
    "task.requeued": "requeued",
    "task.escalated": "escalated",
    "task.cancelled": "cancelled",
}
# Events after which a task waits in the queue (the start of its wait for assignment).
_QUEUED = frozenset({"task.requeued", "task.retrying", "task.rejected", "task.escalated"})
# Tasks remembered as waiting, to time their assignment (oldest forgotten first).
WAITING_MEMORY = 100_000
# (requester, agent) label pairs of the cost counters; past them, costs count under
# ("other", "other"), so that a swarm of one-off requesters cannot swamp Prometheus.
COST_LABEL_PAIRS = 200
# Events read per batch (their tasks are read in one query).
BATCH = 1000
IDLE_S = 60.0
RETRY = Backoff(1.0, 10.0)


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "dispatchd_task_transitions",
            "Tasks created, completed, failed (for good), retried, timed out (retried or "
            "not), requeued, escalated and cancelled, by priority",
            ["outcome", "priority"],
            registry=registry,
        )
        self.assignment_latency = Histogram(
            "dispatchd_assignment_latency_seconds",
            "From a task becoming assignable (created, requeued, retried) to its assignment",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.run_time = Histogram(
            "dispatchd_task_run_seconds",
            "From a task's start to its completion or failure, by outcome",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.events = Counter(
            "dispatchd_events", "Events read from the log, by type", ["type"], registry=registry
        )
        self.cost_usd = Counter(
            "dispatchd_cost_usd",
            "What tasks cost in USD, as their agents reported it, by requester and agent",
            ["requester", "agent"],
            registry=registry,
        )
        self.tokens = Counter(
            "dispatchd_cost_tokens",
            "Tokens tasks used, as their agents reported them, by requester, agent and "
            "direction (input, output)",
            ["requester", "agent", "direction"],
            registry=registry,
        )
        self._waiting: OrderedDict[str, datetime] = OrderedDict()
        self._cost_labels: set[tuple[str, str]] = set()

    def observe(self, events: Sequence[Event], tasks: dict[str, Task]) -> None:
        # Counted per batch, then added once per label set: `labels()` costs more than the
        # rest of counting an event.
        types: defaultdict[str, int] = defaultdict(int)
        outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)
        runs: defaultdict[str, list[float]] = defaultdict(list)
        for event in events:
            types[event.type] += 1
            task = tasks.get(event.task_id) if event.task_id else None
            priority = task.priority.value if task else "unknown"
            outcome = OUTCOMES.get(event.type)
            if outcome is not None:
                outcomes[outcome, priority] += 1
            if event.type == "task.retrying" and event.data.get("reason") == "timed_out":
                # Every timeout counts, whether the task is retried or not.
                outcomes["timed_out", priority] += 1
            if event.type in ("task.completed", "task.failed") and task and task.started_at:
                seconds = (event.created_at - task.started_at).total_seconds()
                if seconds >= 0:
                    runs[event.type.removeprefix("task.")].append(seconds)
            self._time_assignment(event, task)
            self._count_cost(event, task)
        for name, n in types.items():
            self.events.labels(name).inc(n)
        for labels, n in outcomes.items():
            self.transitions.labels(*labels).inc(n)
        for ended, seconds_each in runs.items():
            histogram = self.run_time.labels(ended)
            for seconds in seconds_each:
                histogram.observe(seconds)

    def _count_cost(self, event: Event, task: Task | None) -> None:
        """An event's `cost` is what its report added (docs/costs.md): summed, never
        counted twice."""
        cost = event.data.get("cost")
        if not isinstance(cost, dict):
            return
        labels = (task.requester if task else "unknown", event.agent_id or "unknown")
        if labels not in self._cost_labels:
            if len(self._cost_labels) < COST_LABEL_PAIRS:
                self._cost_labels.add(labels)
            else:
                labels = ("other", "other")
        usd, sent, received = (cost.get(k) for k in ("usd", "input_tokens", "output_tokens"))
        if isinstance(usd, int | float) and usd > 0:
            self.cost_usd.labels(*labels).inc(usd)
        if isinstance(sent, int) and sent > 0:
            self.tokens.labels(*labels, "input").inc(sent)
        if isinstance(received, int) and received > 0:
            self.tokens.labels(*labels, "output").inc(received)

    def _time_assignment(self, event: Event, task: Task | None) -> None:
        if event.task_id is None:
            return
        queued = event.type in _QUEUED or (
            event.type in ("task.created", "task.unblocked")
            and event.data.get("status", "pending") == "pending"
        )
        if queued:
            self._waiting[event.task_id] = event.created_at
            self._waiting.move_to_end(event.task_id)
            while len(self._waiting) > WAITING_MEMORY:
                self._waiting.popitem(last=False)
        elif event.type == "task.assigned":
            since = self._waiting.pop(event.task_id, None)
            if since is None and task is not None and task.attempt == 1:
                since = task.created_at  # created before this replica started
            if since is not None:
                self.assignment_latency.observe(
                    max((event.created_at - since).total_seconds(), 0.0)
                )


class MetricsFollower(Consumer):
    """Feeds `EventMetrics` from the log, from its head when the replica started. Its
    cursor is kept in memory only: a restart starts counting afresh."""

    def __init__(self, store: Store, feed: EventFeed, metrics: EventMetrics) -> None:
        self.store = store
        self.feed = feed
        self.metrics = metrics
        self.cursor = 0  # the last event counted
        self.follower = Follower(
            "metrics", store, feed, self, batch=BATCH, idle_s=IDLE_S, backoff=RETRY
        )

    async def run(self, start: int) -> None:
        self.cursor = start
        await self.follower.run()

    async def resume(self) -> int:
        return self.cursor

    async def handle(self, events: Sequence[Event]) -> None:
        tasks = await self.feed.tasks_of(events)
        last = events[-1].id
        assert last is not None
        # Moved before counting: a batch that fails half-way is not counted twice.
        self.cursor = last
        self.metrics.observe(events, tasks)

    async def skip(self, event: Event) -> bool:
        assert event.id is not None
        self.cursor = event.id
        return True
