"""Helpers shared by the integration tests: what concurrent writers were told, and the tasks
a server lists."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest


@dataclass
class Acks:
    """What writer threads were told: acknowledged keys with their task ids, keys whose fate
    is unknown (the server died with the request in flight), and unexpected answers."""

    acked: dict[str, str] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        """How many keys are acknowledged so far."""
        with self.lock:
            return len(self.acked)


def list_tasks(client: httpx.Client, label: str) -> list[dict[str, Any]]:
    """Every task with `label`, page by page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):  # 500 000 tasks: a bound far above what any test creates
        params: dict[str, Any] = {"limit": 500, "label": label}
        if cursor:
            params["cursor"] = cursor
        r = client.get("/api/v1/tasks", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items
    pytest.fail("pagination did not end")
