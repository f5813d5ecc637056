"""SPEC §8 Durable: a task acknowledged with 2xx survives a `kill -9` of the server.

Several threads create tasks with unique Idempotency-Keys against a real server while the
test SIGKILLs it mid-stream. After a restart on the same store, every acknowledged task must
be there exactly once, and repeating an acknowledged request must answer 200 with the same id.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow

ADMIN = "durability-admin-token-0123456789"
WRITERS = 8
MAX_REQUESTS_PER_WRITER = 2_000
ACKS_BEFORE_KILL = 200
MAX_WAIT_FOR_ACKS_S = 30.0
WRITERS_STOP_S = 30.0
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Ledger:
    """What the writers saw: acknowledged keys with their ids, and keys whose fate is unknown."""

    acked: dict[str, str] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack_count(self) -> int:
        with self.lock:
            return len(self.acked)


def body_for(key: str) -> dict[str, Any]:
    return {"title": f"durable {key}", "context": {"key": key}, "labels": ["durability"]}


def writer(base_url: str, number: int, ledger: Ledger, stop: threading.Event) -> None:
    headers = {"X-Agent-ID": requester_of(f"w{number}-0")}
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(MAX_REQUESTS_PER_WRITER):
            if stop.is_set():
                return
            key = f"w{number}-{i}"
            try:
                r = client.post(
                    "/api/v1/tasks", json=body_for(key), headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:
                # The server died with this request in flight: it may or may not exist.
                with ledger.lock:
                    ledger.unknown.add(key)
                return
            with ledger.lock:
                if r.status_code == 201:
                    ledger.acked[key] = r.json()["id"]
                else:
                    ledger.rejected.append(f"{key}: {r.status_code} {r.text[:200]}")
                    return


def list_all(client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):  # a bound far above what the writers can create
        params: dict[str, Any] = {"limit": 500, "label": "durability"}
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


def requester_of(key: str) -> str:
    """Idempotency keys belong to their requester: `w3-17` was sent by `writer-3`."""
    return f"writer-{key[1:].split('-', 1)[0]}"


def resend(client: httpx.Client, key: str) -> tuple[str, int, str]:
    headers = {"Idempotency-Key": key, "X-Agent-ID": requester_of(key)}
    r = client.post("/api/v1/tasks", json=body_for(key), headers=headers)
    assert r.status_code in (200, 201), f"{key}: {r.status_code} {r.text}"
    return key, r.status_code, r.json()["id"]


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_acknowledged_tasks_survive_sigkill(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    env = {"DISPATCH_ADMIN_TOKEN": ADMIN}
    if engine == "postgres":
        env["DISPATCH_DATABASE_URL"] = request.getfixturevalue("postgres_empty_url")
    ledger = Ledger()
    stop = threading.Event()
    threads: list[threading.Thread] = []

    first = ServerProcess(tmp_path, env=env)
    try:
        first.start()
        threads = [
            threading.Thread(
                target=writer, args=(first.api_url, n, ledger, stop), name=f"writer-{n}"
            )
            for n in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + MAX_WAIT_FOR_ACKS_S
        while ledger.ack_count() < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.005)
        # Pull the plug while the writers are still sending.
        first.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(WRITERS_STOP_S)
        first.kill()
    assert not any(t.is_alive() for t in threads), "writers did not stop"
    assert not ledger.rejected, ledger.rejected[:5]
    assert len(ledger.acked) >= 20, (
        f"only {len(ledger.acked)} tasks acknowledged before the kill:\n{first.describe()}"
    )

    with ServerProcess(tmp_path, env=env) as second:
        with httpx.Client(
            base_url=second.api_url, headers={"X-Agent-ID": "checker"}, timeout=REQUEST_TIMEOUT_S
        ) as client:
            tasks = list_all(client)
            by_id = {t["id"]: t for t in tasks}
            keys = Counter(t["context"]["key"] for t in tasks)

            duplicated = [key for key, n in keys.items() if n > 1]
            assert not duplicated, f"tasks created twice for keys {duplicated[:10]}"
            assert len(by_id) == len(tasks), "an id is listed twice"
            missing = [key for key, id_ in ledger.acked.items() if id_ not in by_id]
            assert not missing, (
                f"{len(missing)} of {len(ledger.acked)} acknowledged tasks lost: {missing[:10]}"
            )
            for key, id_ in ledger.acked.items():
                assert by_id[id_]["context"]["key"] == key
                assert by_id[id_]["requester"] == requester_of(key)
            # Tasks nobody asked for must not appear: each is acked or was in flight.
            assert set(keys) <= set(ledger.acked) | ledger.unknown

            with ThreadPoolExecutor(WRITERS) as pool:
                repeats = list(pool.map(lambda k: resend(client, k), sorted(ledger.acked)))
            for key, status, id_ in repeats:
                assert (status, id_) == (200, ledger.acked[key]), key
            # Requests cut off by the kill may be repeated safely too: one task per key.
            for key in sorted(ledger.unknown):
                resend(client, key)
            after = Counter(t["context"]["key"] for t in list_all(client))
            assert all(n == 1 for n in after.values())
            assert set(after) == set(ledger.acked) | ledger.unknown
        assert second.stop() == 0, second.describe()
