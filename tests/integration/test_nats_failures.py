"""The NATS publisher against a real nats-server when dispatchd itself fails: an event it
cannot publish is set aside (logged, counted, reported by /health) and the events behind
it are published; a publisher that keeps failing is reported down (503) while the broker
goes on assigning, and comes back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.domain.models import Event
from dispatchd.jobs import POISON_AFTER
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent, make_settings
from tests.api.helpers import create_code_task, eventually, wait_assigned
from tests.api.job_helpers import Boom, health_says, metric, ops_client
from tests.integration.test_nats import (
    FAST,
    client_for,
    first_deliveries,
    read_log,
    subscriber,
)
from tests.support.nats import NatsServer

pytestmark = pytest.mark.slow

JOB = "nats publisher"


async def keeps_assigning(client: httpx.AsyncClient, name: str) -> None:
    """A new agent is pushed a new task meant for it alone."""
    r = await client.post("/api/v1/agents", json={"capabilities": [name]}, headers=as_agent(name))
    assert r.status_code == 201, r.text
    task = await create_code_task(client, capabilities=[name])
    await wait_assigned(client, task["id"], name)


# How the poisoned event fails: in dispatchd's own code, or refused by the NATS client as
# larger than the server takes (nats-server's default max_payload is 1 MiB).
FAILURES = {
    "encoding": ("Boom: cannot encode this one", None),
    "too large": ("MaxPayloadError", b"x" * (2 * 1024 * 1024)),
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_an_event_that_cannot_be_published_is_set_aside(
    failure: str,
    tmp_path: Path,
    nats_server: NatsServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd")
    encode = __import__("dispatchd.events.nats", fromlist=["encode"]).encode
    tried: list[int | None] = []
    error, oversized = FAILURES[failure]

    def encode_or_fail(event: Event) -> bytes:
        if event.agent_id == "poisoner":
            tried.append(event.id)
            if oversized is None:
                raise Boom("cannot encode this one")
            return oversized
        result: bytes = encode(event)
        return result

    monkeypatch.setattr("dispatchd.events.nats.encode", encode_or_fail)
    settings = make_settings(tmp_path, hermes={"url": nats_server.url, **FAST})
    async with (
        subscriber(nats_server.url) as sub,
        Runtime.build(settings) as rt,
        client_for(rt) as client,
        ops_client(rt) as ops,
    ):
        head = await rt.store.last_event_id()
        r = await client.post(
            "/api/v1/tasks", json={"title": "poison"}, headers={"X-Agent-ID": "poisoner"}
        )
        assert r.status_code == 201, r.text
        for n in range(3):
            await create_code_task(client, title=f"after {n}")
        last = await rt.store.last_event_id()
        await eventually(lambda: sub.reached(last), f"event {last} on NATS", limit_s=30)

        log = [e for e in await read_log(rt.store, after=head) if e.id is not None and e.id <= last]
        [poisoned] = [e for e in log if e.agent_id == "poisoner"]
        # Every event but the one set aside, in log order.
        published = [m.id for m in first_deliveries(sub.messages) if m.id <= last]
        assert published == [e.id for e in log if e.id != poisoned.id]
        assert set(tried) == {poisoned.id}
        # Tried in its batch, then POISON_AFTER times alone, before it was set aside.
        assert tried.count(poisoned.id) >= 2 * POISON_AFTER
        saved = await rt.store.get_cursor("nats")
        assert saved is not None and saved >= last

        assert await metric(ops, "dispatchd_job_set_aside_total", JOB) == 1
        assert await metric(ops, "dispatchd_job_errors_total", JOB) >= 2 * POISON_AFTER
        body = await health_says(ops, JOB, down=False)
        entry = body["jobs"][JOB]
        assert entry["set_aside"] == 1 and error in entry["last_error"]
        assert any(
            getattr(r, "event_id", None) == poisoned.id and r.exc_info
            for r in caplog.records
            if getattr(r, "action", None) == "follower_set_aside"
        )
        await keeps_assigning(client, "worker")


async def test_a_failing_publisher_is_reported_down_and_the_broker_keeps_assigning(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, hermes={"url": nats_server.url, **FAST})
    async with Runtime.build(settings) as rt, client_for(rt) as client, ops_client(rt) as ops:
        publisher = rt.nats
        assert publisher is not None
        failing = [True]
        resume = publisher.resume

        async def fail() -> Any:
            if failing[0]:
                raise Boom("injected into the NATS publisher")
            return await resume()

        monkeypatch.setattr(publisher, "resume", fail)
        publisher.follower.reload()
        body = await health_says(ops, JOB, down=True)
        assert body["status"] == "unavailable"
        assert "Boom: injected into the NATS publisher" in body["jobs"][JOB]["last_error"]
        assert await metric(ops, "dispatchd_job_errors_total", JOB) >= 1
        await keeps_assigning(client, "while-down")

        failing[0] = False
        await health_says(ops, JOB, down=False)
        async with subscriber(nats_server.url) as sub:
            await keeps_assigning(client, "after")
            last = await rt.store.last_event_id()
            await eventually(lambda: sub.reached(last), f"event {last} on NATS", limit_s=30)
