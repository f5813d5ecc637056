"""What goes to NATS, without a server: subjects, the message body and headers, the
reconnection waits, the lease key and the `hermes` settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import nats.errors
import pytest

from dispatchd.api.schemas.events import EventOut
from dispatchd.config import ConfigError, HermesConfig, load_settings
from dispatchd.domain.models import Event
from dispatchd.events.nats import NatsPublisher, backoff_s, encode, payload_of, subject_of
from dispatchd.store.postgres import lock_key
from dispatchd.store.sqlite import LocalLease

EVENT = Event(
    type="task.completed",
    created_at=datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC),
    task_id="tsk_1",
    agent_id="agent-ü",
    data={"summary": "fertig ✓", "attempt": 2, "nested": {"ok": True, "list": [1, None]}},
    id=42,
)


def test_the_subject_is_the_prefix_and_the_event_type() -> None:
    assert subject_of("dispatch", "task.completed") == "dispatch.task.completed"
    assert subject_of("acme.prod", "agent.registered") == "acme.prod.agent.registered"


def test_the_body_is_the_event_as_the_api_shows_it() -> None:
    api = EventOut.of(EVENT).model_dump()
    assert payload_of(EVENT) == api
    assert json.loads(encode(EVENT)) == api
    assert api["id"] == "42" and api["created_at"] == "2026-03-04T05:06:07.000089Z"
    # UTF-8 as is, not escaped.
    assert "fertig ✓".encode() in encode(EVENT)


def test_an_event_without_task_or_agent_has_nulls() -> None:
    bare = Event(type="schedule.fired", created_at=EVENT.created_at, id=7)
    assert payload_of(bare) == {
        "id": "7",
        "type": "schedule.fired",
        "task_id": None,
        "agent_id": None,
        "data": {},
        "created_at": "2026-03-04T05:06:07.000089Z",
    }


class FakeClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str] | None]] = []
        self.flushed = 0

    async def publish(
        self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.published.append((subject, payload, headers))

    async def flush(self, **options: Any) -> None:
        self.flushed += 1


async def test_a_batch_goes_out_in_order_with_the_event_id_as_message_id() -> None:
    config = HermesConfig(url="nats://127.0.0.1:4222", subject_prefix="acme")
    publisher = NatsPublisher(object(), object(), config, lease=LocalLease())  # type: ignore[arg-type]
    events = [
        Event(type="task.created", created_at=EVENT.created_at, task_id="t", id=1),
        Event(type="task.assigned", created_at=EVENT.created_at, task_id="t", id=2),
        EVENT,
    ]
    client = FakeClient()
    await publisher._send(client, config.subject_prefix, events)  # type: ignore[arg-type]
    assert [(s, h) for s, _, h in client.published] == [
        ("acme.task.created", {"Nats-Msg-Id": "1"}),
        ("acme.task.assigned", {"Nats-Msg-Id": "2"}),
        ("acme.task.completed", {"Nats-Msg-Id": "42"}),
    ]
    assert [json.loads(p)["id"] for _, p, _ in client.published] == ["1", "2", "42"]
    assert client.flushed == 1  # one confirmation per batch, after its last message


def test_reconnection_waits_double_up_to_the_cap_with_jitter() -> None:
    for failures in range(1, 40):
        ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
        waits = [backoff_s(failures, 0.5, 30.0) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (failures, waits)
    assert len({backoff_s(3, 0.5, 30.0) for _ in range(50)}) > 1  # jittered


def test_an_outage_is_waited_out_but_a_message_nats_refuses_may_be_set_aside() -> None:
    config = HermesConfig(url="nats://127.0.0.1:4222")
    publisher = NatsPublisher(object(), object(), config, lease=LocalLease())  # type: ignore[arg-type]
    # An outage: explained, so the follower waits it out and never skips an event over it.
    for outage in (nats.errors.NoServersError(), ConnectionResetError(), TimeoutError()):
        assert publisher.explain(outage) is not None, outage
    # One event's own failure (too large for the server, say): not explained, so the event
    # that keeps failing is set aside and the ones behind it go out.
    for refused in (
        nats.errors.MaxPayloadError(),
        nats.errors.BadSubjectError(),
        nats.errors.BadHeaderError(),
        ValueError("cannot encode"),
    ):
        assert publisher.explain(refused) is None, refused


def test_the_lease_key_is_stable_and_fits_a_bigint() -> None:
    assert lock_key("nats") == lock_key("nats") != lock_key("webhooks")
    assert -(2**63) <= lock_key("nats") < 2**63


# --- settings ---------------------------------------------------------------------------


def test_hermes_defaults() -> None:
    config = HermesConfig()
    assert config.url is None and config.subject_prefix == "dispatch"


@pytest.mark.parametrize(
    "url",
    ["nats://localhost:4222", "tls://nats.example:4222", "localhost:4222", "nats://a:1,nats://b:2"],
)
def test_nats_urls_are_accepted(url: str) -> None:
    assert HermesConfig(url=url).url == url


def test_an_empty_url_means_no_nats() -> None:
    assert load_settings(env={"DISPATCH_HERMES_URL": ""}).hermes.url is None


@pytest.mark.parametrize("url", ["http://localhost:4222", "nats://a:1,,nats://b:2"])
def test_a_url_that_is_not_nats_is_refused_with_its_key(url: str) -> None:
    with pytest.raises(ConfigError, match=r"hermes\.url.*DISPATCH_HERMES_URL"):
        load_settings(env={"DISPATCH_HERMES_URL": url})


@pytest.mark.parametrize("prefix", ["dispatch.>", "a b", "a..b", "", "events.*"])
def test_a_prefix_that_is_not_a_plain_subject_is_refused(prefix: str) -> None:
    env: dict[str, Any] = {"DISPATCH_HERMES__SUBJECT_PREFIX": prefix}
    with pytest.raises(ConfigError, match=r"hermes\.subject_prefix"):
        load_settings(env=env)


def test_the_prefix_is_set_from_the_environment() -> None:
    env = {"DISPATCH_HERMES__SUBJECT_PREFIX": "acme.prod", "DISPATCH_HERMES_URL": "nats://h:1"}
    hermes = load_settings(env=env).hermes
    assert (hermes.subject_prefix, hermes.url) == ("acme.prod", "nats://h:1")
