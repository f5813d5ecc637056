"""`GET /api/v1/stats`: the queue and its flow at a glance (SPEC §4).

Queue depth by state (from the per-state counters every commit keeps) and, for unfinished
tasks, by priority; the oldest pending task's age; throughput over the last 1, 5 and 15
minutes, counted in SQL over every task that finished in each; wait (creation to start)
and run (start to finish) time percentiles from the tasks that finished in the last 15
minutes (the most recent `SAMPLE` of them when more: a sample that costs the same however
busy the broker is); what tasks cost per UTC day, requester and agent, from the cost
ledger.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from dispatchd.domain.costs import Cost, day_of
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import AgentStatus, Priority, TaskStatus
from dispatchd.store.base import Store

WINDOWS = {"1m": 60, "5m": 300, "15m": 900}
SAMPLE = 2_000


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values. (Sorting values
    that are already in order is linear, so callers asking several percentiles sort once.)"""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _summary(values: list[float]) -> dict[str, Any]:
    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": rounded(percentile(ordered, 0.5)),
        "p95": rounded(percentile(ordered, 0.95)),
    }


async def stats(store: Store, now: datetime | None = None, *, cost_days: int = 7) -> dict[str, Any]:
    now = now or utcnow()
    counts = await store.counts()
    longest = max(WINDOWS.values())
    queue = await store.queue_stats(
        now - timedelta(seconds=longest),
        SAMPLE,
        {name: now - timedelta(seconds=seconds) for name, seconds in WINDOWS.items()},
    )

    by_priority: dict[str, dict[str, int]] = defaultdict(dict)
    for (state, priority), n in sorted(queue.open_by_state_priority.items()):
        by_priority[state][priority] = n
    states = {s.value: int(counts.tasks_by_status.get(s.value, 0)) for s in TaskStatus}

    waits: list[float] = []
    runs: list[float] = []
    throughput: dict[str, dict[str, Any]] = {}
    for name in WINDOWS:
        counted = queue.finished_counts.get(name, {})
        throughput[name] = {
            status: int(counted.get(status, 0))
            for status in ("completed", "failed", "timed_out", "cancelled")
        }
    for created_at, started_at, finished_at, _status in queue.finished:
        if started_at is not None:
            waits.append(max((started_at - created_at).total_seconds(), 0.0))
            runs.append(max((finished_at - started_at).total_seconds(), 0.0))
    for name, seconds in WINDOWS.items():
        throughput[name]["completed_per_s"] = round(throughput[name]["completed"] / seconds, 4)

    oldest = queue.oldest_pending_at
    agents = {str(s): int(counts.agents_by_status.get(str(s), 0)) for s in AgentStatus}
    agents["draining"] = int(counts.agents_by_status.get("draining", 0))
    return {
        "at": now,
        "queue": {
            "by_state": states,
            "by_state_and_priority": {
                state: {p.value: by_priority[state].get(p.value, 0) for p in Priority}
                for state in sorted(by_priority)
            },
            "oldest_pending_age_s": (
                round((now - oldest).total_seconds(), 3) if oldest is not None else None
            ),
        },
        "wait_s": _summary(waits),
        "run_s": _summary(runs),
        "sample": {"window_s": longest, "tasks": len(queue.finished), "limit": SAMPLE},
        "throughput": throughput,
        "agents": {"by_state": agents},
        "costs": await cost_stats(store, now, cost_days),
    }


# Ledger lines read for the cost stats at most (one per day, requester and agent).
COST_LINES = 10_000


async def cost_stats(store: Store, now: datetime, days: int) -> dict[str, Any]:
    """What tasks cost over the last `days` UTC days (today included): in total, per day,
    per requester, per agent, and each (day, requester, agent) line of the ledger."""
    since = day_of(now) - timedelta(days=days - 1)
    lines = await store.cost_totals(since=since, limit=COST_LINES + 1)
    truncated = len(lines) > COST_LINES
    lines = lines[:COST_LINES]
    total = Cost()
    by_day: dict[str, Cost] = defaultdict(Cost)
    by_requester: dict[str, Cost] = defaultdict(Cost)
    by_agent: dict[str, Cost] = defaultdict(Cost)
    for line in lines:
        total += line.cost
        by_day[line.day.isoformat()] += line.cost
        by_requester[line.requester] += line.cost
        by_agent[line.agent] += line.cost
    return {
        "since": since.isoformat(),
        "days": days,
        "total": total.data(),
        "by_day": {k: v.data() for k, v in sorted(by_day.items())},
        "by_requester": {k: v.data() for k, v in sorted(by_requester.items())},
        "by_agent": {k: v.data() for k, v in sorted(by_agent.items())},
        "lines": [
            {
                "day": line.day.isoformat(),
                "requester": line.requester,
                "agent": line.agent,
                **line.cost.data(),
            }
            for line in lines
        ],
        "truncated": truncated,
    }
