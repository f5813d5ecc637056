"""Webhook deliveries survive a `kill -9` of the server (docs/webhooks.md): what a webhook is
owed lives in the database (its cursor and its pending deliveries), so a restarted server
on the same database sends every event, in order; at most the one delivery that was in
flight at the kill reaches the receiver twice.

A real `dispatchd serve` gets a webhook pointing at a local receiver and a stream of tasks
(one `task.created` event each); it is SIGKILLed while the receiver is still getting them
(it holds its answer to the delivery in flight), some events not yet turned into
deliveries, some deliveries not yet sent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.server import ServerProcess
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

T = TypeVar("T")
ADMIN = "webhooks-admin-token-0123456789"
TASKS = 40
WAIT_S = 40.0


def wait_for(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")
        time.sleep(0.02)


def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.api_url,
        headers={"X-Agent-ID": "admin", "Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )


def all_deliveries(http: httpx.Client, hook_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    for _ in range(100):
        r = http.get(f"/api/v1/webhooks/{hook_id}/deliveries", params=params)
        assert r.status_code == 200, r.text
        items.extend(r.json()["items"])
        if not r.json()["next_cursor"]:
            return items
        params["cursor"] = r.json()["next_cursor"]
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_killed_server_owes_every_event_after_restart(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    env = {
        "DISPATCH_ADMIN_TOKEN": ADMIN,
        "DISPATCH_WEBHOOKS__TIMEOUT_S": "1",  # an in-flight claim lapses 6 s after the kill
        "DISPATCH_WEBHOOKS__BACKOFF_BASE_MS": "20",
        "DISPATCH_WEBHOOKS__BACKOFF_CAP_MS": "200",
    }
    if engine == "postgres":
        env["DISPATCH_DATABASE_URL"] = request.getfixturevalue("postgres_empty_url")
    with Receiver() as receiver:
        with ServerProcess(tmp_path, env=env) as first, client(first) as http:
            r = http.post(
                "/api/v1/webhooks", json={"url": receiver.url(), "types": ["task.created"]}
            )
            assert r.status_code == 201, r.text
            hook_id = r.json()["webhook"]["id"]
            events: list[str] = []
            for n in range(TASKS):
                r = http.post("/api/v1/tasks", json={"title": f"t{n}", "capabilities": ["none"]})
                assert r.status_code == 201, r.text
                if n == TASKS // 4:
                    wait_for(receiver.requests, "the first delivery")
                    # Deliveries go one at a time: the one in flight is kept unanswered, so
                    # the kill surely comes with deliveries still owed.
                    receiver.hold()
            r = http.get("/api/v1/events", params={"after": 0, "types": "task.created"})
            events = [e["id"] for e in r.json()["events"]]
            assert len(events) == TASKS
            first.kill()
        receiver.release()
        before = len(receiver.requests())
        assert before < TASKS, "the kill came after everything was delivered: nothing tested"

        with ServerProcess(tmp_path, env=env) as second, client(second) as http:

            def all_delivered() -> list[dict[str, Any]] | None:
                items = all_deliveries(http, hook_id)
                done = [d for d in items if d["status"] == "delivered"]
                return items if len(done) == TASKS else None

            items = wait_for(all_delivered, f"{TASKS} delivered")

    assert sorted(int(d["event_id"]) for d in items) == sorted(int(e) for e in events)
    received = [q.event["id"] for q in receiver.requests()]
    assert set(received) == set(events), "every event reached the receiver"
    repeats = [e for e, n in Counter(received).items() if n > 1]
    assert len(repeats) <= 1, f"only the delivery in flight at the kill may repeat: {repeats}"
    first_seen = list(dict.fromkeys(received))
    assert first_seen == events, "in event order"
