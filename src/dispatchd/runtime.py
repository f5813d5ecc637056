"""The running broker: settings, store and services, opened and closed together."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from dispatchd.config import Settings
from dispatchd.domain.lifecycle import Policy
from dispatchd.engine.agents import AgentService
from dispatchd.engine.tasks import TaskService
from dispatchd.metrics import Metrics
from dispatchd.store import Store, open_store

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin_token"  # noqa: S105 - a file name, not a secret


def policy_of(settings: Settings) -> Policy:
    return Policy(
        lease=timedelta(milliseconds=settings.assignment.lease_ms),
        default_timeout_s=settings.assignment.default_timeout_ms // 1000,
        backoff_base=timedelta(milliseconds=settings.retry.backoff_base_ms),
        backoff_cap=timedelta(milliseconds=settings.retry.backoff_cap_ms),
        max_lost_requeues=settings.retry.max_lost_requeues,
        max_review_cycles=settings.review.max_cycles,
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
    settings: Settings
    store: Store
    admin: AdminToken
    tasks: TaskService = field(init=False)
    agents: AgentService = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        policy = policy_of(self.settings)
        self.tasks = TaskService(
            self.store,
            policy,
            default_max_attempts=self.settings.retry.max_attempts,
            max_concurrent_per_agent=self.settings.assignment.max_concurrent_per_agent,
        )
        self.agents = AgentService(self.store, policy)
        self.metrics = Metrics()

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Runtime:
        store = store or open_store(
            settings.database_url,
            data_dir=settings.server.data_dir,
            pool_size=settings.database.pool_size,
        )
        return cls(settings=settings, store=store, admin=admin_token(settings))

    async def __aenter__(self) -> Self:
        await self.store.open()
        try:
            applied = await self.store.migrate()
        except BaseException:
            await self.store.close()
            raise
        if applied:
            log.info("applied migrations %s", applied, extra={"action": "migrate"})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.store.close()
