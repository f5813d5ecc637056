"""Where webhooks and wake URLs may point: http(s) only; link-local (cloud metadata) and
private addresses refused with a 422 naming the field unless their network is allowed;
loopback allowed by default; the address a name resolves to checked again when the request
is sent (and that address used); redirects not followed."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from dispatchd.config import ConfigError, OutboundConfig, load_settings
from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.engine.wake import Waker
from dispatchd.outbound import Address, Outbound, OutboundRefused
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import ADMIN, assert_error, eventually
from tests.api.webhook_helpers import create_webhook, deliveries
from tests.support.receiver import Receiver

REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://10.0.0.1/hook",
    "http://172.16.5.4:8080/hook",
    "http://192.168.1.10/hook",
    "http://100.64.0.1/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://0.0.0.0:8080/hook",
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def resolving(names: dict[str, str]) -> Any:
    async def resolve(host: str, port: int) -> list[Address]:
        if host not in names:
            raise OutboundRefused(f"cannot resolve {host}")
        return [ipaddress.ip_address(names[host])]

    return resolve


@pytest.mark.parametrize("url", REFUSED)
async def test_webhooks_to_private_or_link_local_addresses_are_refused(
    client: httpx.AsyncClient, url: str
) -> None:
    r = await client.post("/api/v1/webhooks", json={"url": url}, headers=ADMIN)
    error = assert_error(r, 422, "destination_not_allowed")
    assert error["message"].startswith("url: ") and error["details"]["field"] == "url"
    assert (await client.get("/api/v1/webhooks", headers=ADMIN)).json()["items"] == []


async def test_a_webhook_cannot_be_moved_to_a_refused_address(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook, _ = await create_webhook(client, receiver.url())  # loopback: allowed by default
    r = await client.patch(
        f"/api/v1/webhooks/{hook['id']}",
        json={"url": "http://169.254.169.254/"},
        headers=ADMIN,
    )
    assert_error(r, 422, "destination_not_allowed")
    r = await client.get(f"/api/v1/webhooks/{hook['id']}", headers=ADMIN)
    assert r.json()["url"] == receiver.url()


async def test_other_schemes_are_refused(client: httpx.AsyncClient) -> None:
    for url in ("file:///etc/passwd", "gopher://10.0.0.1/", "ftp://example.com/"):
        r = await client.post("/api/v1/webhooks", json={"url": url}, headers=ADMIN)
        assert r.status_code == 422, url
        r = await client.post(
            "/api/v1/agents", json={"wake_url": url}, headers=as_agent("w-scheme")
        )
        assert r.status_code == 422, url


async def test_a_wake_url_to_a_refused_address_is_refused(client: httpx.AsyncClient) -> None:
    body = {"capabilities": ["code"], "wake_url": "http://169.254.169.254/wake"}
    r = await client.post("/api/v1/agents", json=body, headers=as_agent("w1"))
    error = assert_error(r, 422, "destination_not_allowed")
    assert error["message"].startswith("wake_url: ") and error["details"]["field"] == "wake_url"
    r = await client.post("/api/v1/agents", json={"capabilities": ["code"]}, headers=as_agent("w1"))
    assert r.status_code == 201
    r = await client.patch(
        "/api/v1/agents/w1", json={"wake_url": "http://10.1.2.3/"}, headers=as_agent("w1")
    )
    assert_error(r, 422, "destination_not_allowed")
    r = await client.patch(
        "/api/v1/agents/w1", json={"wake_url": "http://127.0.0.1:9/"}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text


class TestAShared:
    """A shared deployment: no loopback, one private network allowed."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"outbound": {"allow_loopback": False, "allow_networks": ["10.20.0.0/16"]}}

    async def test_loopback_is_refused_and_listed_networks_allowed(
        self, client: httpx.AsyncClient
    ) -> None:
        for url in ("http://127.0.0.1:9/hook", "http://localhost:9/", "http://[::1]:9/"):
            r = await client.post("/api/v1/webhooks", json={"url": url}, headers=ADMIN)
            assert_error(r, 422, "destination_not_allowed")
        r = await client.post(
            "/api/v1/webhooks", json={"url": "http://10.20.3.4/hook"}, headers=ADMIN
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/api/v1/webhooks", json={"url": "http://10.21.3.4/hook"}, headers=ADMIN
        )
        assert_error(r, 422, "destination_not_allowed")


async def test_the_resolved_address_is_checked_when_a_delivery_is_sent(
    client: httpx.AsyncClient, runtime: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = receiver.url().rsplit(":", 1)[1].split("/")[0]
    names = {"inside.example": "10.0.0.5", "hooks.example": "127.0.0.1"}
    monkeypatch.setattr(runtime.outbound, "resolver", resolving(names))
    # Names are stored as they are: what they resolve to is checked at each request.
    bad, _ = await create_webhook(client, f"http://inside.example:{port}/bad")
    await create_webhook(client, f"http://hooks.example:{port}/good")
    r = await client.post("/api/v1/tasks", json={"title": "t", "capabilities": ["nobody"]})
    assert r.status_code == 201

    async def first_attempt(hook_id: str) -> dict[str, Any] | None:
        items = await deliveries(client, hook_id)
        return items[0] if items and items[0]["error"] else None

    refused = await eventually(lambda: first_attempt(bad["id"]), "the refused attempt")
    assert refused["status"] in ("pending", "failed")
    assert "inside.example" in refused["error"] and "10.0.0.5" in refused["error"]
    assert "private" in refused["error"]
    assert receiver.requests("/bad") == []
    # The allowed name's request went to the address checked, under its own Host.
    [got] = await eventually(lambda: receiver.requests("/good"), "the good delivery")
    assert got.headers["host"] == f"hooks.example:{port}"


async def test_redirects_are_not_followed(client: httpx.AsyncClient, receiver: Receiver) -> None:
    receiver.fail_always(status=302, path="/moved")
    hook, _ = await create_webhook(client, receiver.url("/moved"))
    r = await client.post("/api/v1/tasks", json={"title": "t", "capabilities": ["nobody"]})
    assert r.status_code == 201

    async def attempted() -> dict[str, Any] | None:
        items = await deliveries(client, hook["id"])
        return items[0] if items and items[0]["response_status"] else None

    delivery = await eventually(attempted, "an attempt")
    assert delivery["response_status"] == 302 and delivery["status"] != "delivered"
    assert [r.path for r in receiver.requests()] == ["/moved"]


async def test_a_wake_is_not_sent_to_a_name_resolving_to_a_private_address() -> None:
    outbound = Outbound(OutboundConfig(), resolver=resolving({"wake.example": "192.168.0.9"}))
    waker = Waker(outbound=outbound)
    now = datetime.now(UTC)
    agent = Agent(
        id="w1",
        capabilities={},
        status=AgentStatus.SLEEPING,
        created_at=now,
        updated_at=now,
        wake_url="http://wake.example/wake",
    )
    task = Task(
        id="t1",
        title="t",
        prompt="",
        capabilities=(),
        status=TaskStatus.ASSIGNED,
        priority=Priority.MEDIUM,
        requester="alice",
        created_at=now,
        updated_at=now,
    )
    try:
        with pytest.raises(OutboundRefused, match=r"192\.168\.0\.9"):
            await waker._post(agent, task)
    finally:
        await waker.close()


def test_the_rules_of_addresses() -> None:
    policy = Outbound(OutboundConfig())
    for allowed in ("127.0.0.1", "::1", "93.184.216.34", "2606:4700::1111"):
        assert policy.refusal(ipaddress.ip_address(allowed)) is None, allowed
    for refused in ("169.254.169.254", "10.1.1.1", "fe80::1", "fc00::1", "::ffff:169.254.1.1"):
        assert policy.refusal(ipaddress.ip_address(refused)) is not None, refused
    assert "link-local" in (policy.refusal(ipaddress.ip_address("169.254.169.254")) or "")


def test_allowed_networks_come_from_the_environment_and_are_checked() -> None:
    env = {"DISPATCH_OUTBOUND__ALLOW_NETWORKS": "10.0.0.0/8, fd00::/8"}
    assert load_settings(env=env).outbound.allow_networks == ("10.0.0.0/8", "fd00::/8")
    with pytest.raises(ConfigError, match="allow_networks"):
        load_settings(env={"DISPATCH_OUTBOUND__ALLOW_NETWORKS": "not-a-network"})
