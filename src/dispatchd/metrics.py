"""Prometheus metrics, kept in a registry of the runtime's own (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dispatchd.domain.models import AgentStatus, TaskStatus
from dispatchd.events.metrics import EventMetrics
from dispatchd.store.base import Counts

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "dispatchd_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "dispatchd_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tasks = Gauge("dispatchd_tasks", "Tasks by state", ["state"], registry=self.registry)
        self.agents = Gauge(
            "dispatchd_agents", "Agents by state", ["state"], registry=self.registry
        )
        self.database_up = Gauge(
            "dispatchd_database_up", "1 when the database answers", registry=self.registry
        )
        self.job_errors = Counter(
            "dispatchd_job_errors",
            "Errors met by the background jobs (failed turns, records that failed)",
            ["job"],
            registry=self.registry,
        )
        self.job_restarts = Counter(
            "dispatchd_job_restarts",
            "Background jobs restarted after they crashed",
            ["job"],
            registry=self.registry,
        )
        self.job_set_aside = Counter(
            "dispatchd_job_set_aside",
            "Records (events, tasks) a background job set aside after failing on them",
            ["job"],
            registry=self.registry,
        )
        self.job_up = Gauge(
            "dispatchd_job_up",
            "1 while a background job runs, 0 while it fails or restarts",
            ["job"],
            registry=self.registry,
        )
        # What the event log says happened: fed by events/metrics.py.
        self.events = EventMetrics(self.registry)

    def job_event(self, job: str, kind: str) -> None:
        """A background job reports an `error`, a `restart` or a `set_aside`."""
        counter = {
            "error": self.job_errors,
            "restart": self.job_restarts,
            "set_aside": self.job_set_aside,
        }[kind]
        counter.labels(job).inc()

    def set_jobs(self, up: dict[str, bool]) -> None:
        for job, running in up.items():
            self.job_up.labels(job).set(1 if running else 0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route, method).observe(seconds)

    def set_counts(self, counts: Counts) -> None:
        for state in TaskStatus:
            self.tasks.labels(state.value).set(counts.tasks_by_status.get(state.value, 0))
        for agent_state in [*AgentStatus, "draining"]:
            key = str(agent_state)
            self.agents.labels(key).set(counts.agents_by_status.get(key, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
