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
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Acks, list_tasks
from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow

ADMIN = "durability-admin-token-0123456789"
WRITERS = 8
MAX_REQUESTS_PER_WRITER = 2_000
ACKS_BEFORE_KILL = 200
MAX_WAIT_FOR_ACKS_S = 30.0
WRITERS_STOP_S = 30.0
REQUEST_TIMEOUT_S = 10.0
LABEL = "durability"


def body_for(key: str) -> dict[str, Any]:
    return {"title": f"durable {key}", "context": {"key": key}, "labels": [LABEL]}


def writer(base_url: str, number: int, acks: Acks, stop: threading.Event) -> None:
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
                with acks.lock:
                    acks.unknown.add(key)
                return
            with acks.lock:
                if r.status_code == 201:
                    acks.acked[key] = r.json()["id"]
                else:
                    acks.errors.append(f"{key}: {r.status_code} {r.text[:200]}")
                    return


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
    acks = Acks()
    stop = threading.Event()
    threads: list[threading.Thread] = []

    first = ServerProcess(tmp_path, env=env)
    try:
        first.start()
        threads = [
            threading.Thread(target=writer, args=(first.api_url, n, acks, stop), name=f"writer-{n}")
            for n in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + MAX_WAIT_FOR_ACKS_S
        while acks.count() < ACKS_BEFORE_KILL and time.monotonic() < deadline:
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
    assert not acks.errors, acks.errors[:5]
    assert len(acks.acked) >= 20, (
        f"only {len(acks.acked)} tasks acknowledged before the kill:\n{first.describe()}"
    )

    with ServerProcess(tmp_path, env=env) as second:
        with httpx.Client(
            base_url=second.api_url, headers={"X-Agent-ID": "checker"}, timeout=REQUEST_TIMEOUT_S
        ) as client:
            tasks = list_tasks(client, LABEL)
            by_id = {t["id"]: t for t in tasks}
            keys = Counter(t["context"]["key"] for t in tasks)

            duplicated = [key for key, n in keys.items() if n > 1]
            assert not duplicated, f"tasks created twice for keys {duplicated[:10]}"
            assert len(by_id) == len(tasks), "an id is listed twice"
            missing = [key for key, id_ in acks.acked.items() if id_ not in by_id]
            assert not missing, (
                f"{len(missing)} of {len(acks.acked)} acknowledged tasks lost: {missing[:10]}"
            )
            for key, id_ in acks.acked.items():
                assert by_id[id_]["context"]["key"] == key
                assert by_id[id_]["requester"] == requester_of(key)
            # Tasks nobody asked for must not appear: each is acked or was in flight.
            assert set(keys) <= set(acks.acked) | acks.unknown

            with ThreadPoolExecutor(WRITERS) as pool:
                repeats = list(pool.map(lambda k: resend(client, k), sorted(acks.acked)))
            for key, status, id_ in repeats:
                assert (status, id_) == (200, acks.acked[key]), key
            # Requests cut off by the kill may be repeated safely too: one task per key.
            for key in sorted(acks.unknown):
                resend(client, key)
            after = Counter(t["context"]["key"] for t in list_tasks(client, LABEL))
            assert all(n == 1 for n in after.values())
            assert set(after) == set(acks.acked) | acks.unknown
        assert second.stop() == 0, second.describe()
