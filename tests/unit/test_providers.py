"""The HTTP contract of PromptForge and Warren (docs/providers.md): parsing, caching,
keeping the last good answer, and the wake call; over an in-memory transport."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dispatchd.config import ConfigError, Settings, load_settings
from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.engine.providers import (
    ContractError,
    External,
    connect,
    parse_availability,
    parse_capabilities,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
FORGE = "http://forge.test"
WARREN = "http://warren.test"


def agent(agent_id: str, caps: dict[str, float] | None = None, **fields: Any) -> Agent:
    return Agent(
        id=agent_id,
        capabilities=caps if caps is not None else {"code": 1.0},
        status=fields.pop("status", AgentStatus.READY),
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def task(task_id: str = "t1") -> Task:
    return Task(
        id=task_id,
        title="fix it",
        prompt="",
        status=TaskStatus.ASSIGNED,
        priority=Priority.HIGH,
        capabilities=("code",),
        requester="alice",
        created_at=NOW,
        updated_at=NOW,
        lease_expires_at=NOW + timedelta(seconds=30),
    )


def settings(**sections: Any) -> Settings:
    return Settings.model_validate(sections)


class Services:
    """Scripted answers by host, and the requests received."""

    def __init__(self) -> None:
        self.forge: Any = {"agents": []}
        self.warren: Any = {"agents": []}
        self.status = 200
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            return httpx.Response(202 if self.status == 200 else self.status, json={})
        body = self.forge if request.url.host == "forge.test" else self.warren
        if isinstance(body, bytes):
            return httpx.Response(self.status, content=body)
        return httpx.Response(self.status, json=body)

    def asked(self, host: str) -> int:
        return sum(1 for r in self.requests if r.method == "GET" and r.url.host == host)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def services() -> Services:
    return Services()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make(services: Services, clock: Clock) -> AsyncIterator[Callable[..., External]]:
    """Build an External over `services`; both URLs set unless a section is given."""
    made: list[External] = []

    def build(**sections: Any) -> External:
        sections.setdefault("promptforge", {"url": FORGE, "refresh_s": 5})
        sections.setdefault("warren", {"url": WARREN, "token": "wt", "refresh_s": 5})
        ext = connect(
            settings(**sections), transport=httpx.MockTransport(services.handle), clock=clock
        )
        assert ext is not None
        made.append(ext)
        return ext

    yield build
    for ext in made:
        await ext.close()


# --- parsing -------------------------------------------------------------------------------


def test_capabilities_as_weights_or_tags() -> None:
    body = {
        "agents": [
            {"id": "a1", "capabilities": {"code": 0.9, "review": 1, "ops": 0}},
            {"id": "a2", "capabilities": ["research", "review"], "name": "ignored"},
            {"id": "a3", "capabilities": []},
        ],
        "generated_at": "ignored",
    }
    assert parse_capabilities(body) == {
        "a1": {"code": 0.9, "review": 1.0},  # weight 0: the agent lacks the tag
        "a2": {"research": 1.0, "review": 1.0},
        "a3": {},
    }


def test_availability_statuses() -> None:
    body = {"agents": [{"id": s, "status": s.upper() if s == "ready" else s} for s in AgentStatus]}
    assert parse_availability(body) == {s.value: s for s in AgentStatus}


BAD_CAPABILITIES = [
    [],
    "agents",
    None,
    {},
    {"agents": {"a1": ["code"]}},
    {"agents": [{"capabilities": ["code"]}]},
    {"agents": [{"id": "", "capabilities": ["code"]}]},
    {"agents": [{"id": 7, "capabilities": ["code"]}]},
    {"agents": [{"id": "a1"}]},
    {"agents": [{"id": "a1", "capabilities": "code"}]},
    {"agents": [{"id": "a1", "capabilities": {"code": 1.5}}]},
    {"agents": [{"id": "a1", "capabilities": {"code": -0.1}}]},
    {"agents": [{"id": "a1", "capabilities": {"code": "0.9"}}]},
    {"agents": [{"id": "a1", "capabilities": {"code": True}}]},
    {"agents": [{"id": "a1", "capabilities": {"code": float("nan")}}]},
    {"agents": [{"id": "a1", "capabilities": {"two words": 1.0}}]},
    {"agents": [{"id": "a1", "capabilities": ["a,b"]}]},
    {"agents": [{"id": "a1", "capabilities": [1]}]},
    {"agents": [{"id": "a1", "capabilities": []}, {"id": "a1", "capabilities": []}]},
]


@pytest.mark.parametrize("body", BAD_CAPABILITIES)
def test_malformed_capabilities_are_rejected(body: Any) -> None:
    with pytest.raises(ContractError):
        parse_capabilities(body)


BAD_AVAILABILITY = [
    [],
    {"agents": None},
    {"agents": [{"id": "a1"}]},
    {"agents": [{"id": "a1", "status": "asleep"}]},
    {"agents": [{"id": "a1", "status": 1}]},
    {"agents": [{"id": None, "status": "ready"}]},
    {"agents": [{"id": "a1", "status": "ready"}, {"id": "a1", "status": "busy"}]},
]


@pytest.mark.parametrize("body", BAD_AVAILABILITY)
def test_malformed_availability_is_rejected(body: Any) -> None:
    with pytest.raises(ContractError):
        parse_availability(body)


def test_a_contract_error_says_where() -> None:
    with pytest.raises(ContractError, match=r"agents\.0\.capabilities"):
        parse_capabilities({"agents": [{"id": "a1", "capabilities": 3}]})
    with pytest.raises(ContractError, match="'asleep'"):
        parse_availability({"agents": [{"id": "a1", "status": "asleep"}]})


# --- configuration -------------------------------------------------------------------------


def test_connect_needs_a_url() -> None:
    assert connect(settings()) is None
    assert connect(settings(warren={"token": "only a token"})) is None


def test_config_from_the_environment() -> None:
    s = load_settings(
        env={
            "DISPATCH_FORGE_URL": "http://pf:8083",
            "DISPATCH_WARREN_URL": "https://w:9090/",
            "DISPATCH_WARREN_TOKEN": "wt",
            "DISPATCH_WARREN__REFRESH_S": "2.5",
            "DISPATCH_PROMPTFORGE__TIMEOUT_S": "0.5",
        }
    )
    assert (s.promptforge.url, s.promptforge.refresh_s, s.promptforge.timeout_s) == (
        "http://pf:8083",
        5.0,
        0.5,
    )
    assert (s.warren.url, s.warren.token, s.warren.refresh_s) == ("https://w:9090/", "wt", 2.5)
    assert load_settings(env={"DISPATCH_FORGE_URL": ""}).promptforge.url is None


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("DISPATCH_FORGE_URL", "pf:8083", "promptforge.url"),
        ("DISPATCH_WARREN_URL", "ftp://w", "warren.url"),
        ("DISPATCH_WARREN__REFRESH_S", "0", "warren.refresh_s"),
        ("DISPATCH_PROMPTFORGE__TIMEOUT_S", "-1", "promptforge.timeout_s"),
    ],
)
def test_bad_config_names_the_key(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(env={name: value})


def test_refresh_is_the_shortest_configured(make: Callable[..., External]) -> None:
    ext = make(promptforge={"url": FORGE, "refresh_s": 3}, warren={"url": WARREN, "refresh_s": 7})
    assert ext.refresh_s == 3
    assert make(promptforge={}, warren={"url": WARREN, "refresh_s": 7}).refresh_s == 7


# --- overlay ---------------------------------------------------------------------------------


async def test_overlay_replaces_capabilities_and_status(
    make: Callable[..., External], services: Services
) -> None:
    services.forge = {"agents": [{"id": "a1", "capabilities": {"research": 0.5}}]}
    services.warren = {"agents": [{"id": "a1", "status": "sleeping"}]}
    ext = make()
    registered = agent("a1", {"code": 1.0}, owner="o", drained=True)
    (seen,) = await ext.overlay([registered])
    assert seen.capabilities == {"research": 0.5}
    assert seen.status is AgentStatus.SLEEPING
    # The rest is the registered agent's.
    assert seen == registered.evolve(capabilities=seen.capabilities, status=seen.status)


async def test_agents_the_services_do_not_list(
    make: Callable[..., External], services: Services
) -> None:
    services.forge = {"agents": [{"id": "other", "capabilities": ["code"]}]}
    services.warren = {"agents": [{"id": "other", "status": "ready"}]}
    (seen,) = await make().overlay([agent("a1")])
    assert seen.capabilities == {}
    assert seen.status is AgentStatus.OFFLINE


async def test_only_the_configured_service_is_used(
    make: Callable[..., External], services: Services
) -> None:
    services.forge = {"agents": [{"id": "a1", "capabilities": ["research"]}]}
    ext = make(warren={})
    (seen,) = await ext.overlay([agent("a1", status=AgentStatus.BUSY)])
    assert (dict(seen.capabilities), seen.status) == ({"research": 1.0}, AgentStatus.BUSY)
    assert services.asked("warren.test") == 0
    assert ext.service_wake is None

    services.warren = {"agents": [{"id": "a1", "status": "degraded"}]}
    ext = make(promptforge={})
    (seen,) = await ext.overlay([agent("a1", {"code": 0.4})])
    assert (dict(seen.capabilities), seen.status) == ({"code": 0.4}, AgentStatus.DEGRADED)
    assert services.asked("forge.test") == 1


async def test_answers_are_kept_for_refresh_s(
    make: Callable[..., External], services: Services, clock: Clock
) -> None:
    services.warren = {"agents": [{"id": "a1", "status": "ready"}]}
    ext = make()
    for _ in range(5):
        await ext.overlay([agent("a1")])
    assert (services.asked("forge.test"), services.asked("warren.test")) == (1, 1)

    services.warren = {"agents": [{"id": "a1", "status": "busy"}]}
    clock.now += 4.9
    (seen,) = await ext.overlay([agent("a1")])
    assert seen.status is AgentStatus.READY and services.asked("warren.test") == 1
    clock.now += 0.2
    (seen,) = await ext.overlay([agent("a1")])
    assert seen.status is AgentStatus.BUSY and services.asked("warren.test") == 2


BAD_ANSWERS: list[tuple[int, Any, str]] = [
    (500, {"error": "boom"}, "answered HTTP 500"),
    (404, {"error": "no"}, "answered HTTP 404"),
    (200, b"<html>", "not JSON"),
    (200, {"agents": [{"id": "a1", "capabilities": 5, "status": 5}]}, "does not follow"),
    (200, {"agents": "all"}, "does not follow"),
]


@pytest.mark.parametrize(("status", "body", "said"), BAD_ANSWERS)
async def test_a_bad_answer_keeps_the_last_good_one(
    make: Callable[..., External],
    services: Services,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: Any,
    said: str,
) -> None:
    services.forge = {"agents": [{"id": "a1", "capabilities": {"research": 0.5}}]}
    services.warren = {"agents": [{"id": "a1", "status": "busy"}]}
    ext = make()
    await ext.overlay([agent("a1")])
    services.status, services.forge, services.warren = status, body, body
    clock.now += 10
    with caplog.at_level(logging.WARNING, logger="dispatchd.engine.providers"):
        (seen,) = await ext.overlay([agent("a1")])
    assert (dict(seen.capabilities), seen.status) == ({"research": 0.5}, AgentStatus.BUSY)
    assert (services.asked("forge.test"), services.asked("warren.test")) == (2, 2)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("PromptForge", "Warren"):
        assert any(name in m and said in m and "last good answer" in m for m in messages), messages


async def test_without_a_good_answer_the_registered_values_stand(
    make: Callable[..., External], services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    services.status = 503
    with caplog.at_level(logging.WARNING, logger="dispatchd.engine.providers"):
        (seen,) = await make().overlay([agent("a1", {"code": 0.3}, status=AgentStatus.BUSY)])
    assert (dict(seen.capabilities), seen.status) == ({"code": 0.3}, AgentStatus.BUSY)
    assert any("registered values" in r.getMessage() for r in caplog.records)


async def test_an_unreachable_service_is_not_an_error(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    ext = connect(
        settings(promptforge={"url": FORGE}), transport=httpx.MockTransport(refuse), clock=clock
    )
    assert ext is not None
    try:
        with caplog.at_level(logging.WARNING, logger="dispatchd.engine.providers"):
            (seen,) = await ext.overlay([agent("a1")])
    finally:
        await ext.close()
    assert seen.capabilities == {"code": 1.0}
    assert any("unreachable" in r.getMessage() for r in caplog.records)


async def test_a_recovered_service_is_used_again(
    make: Callable[..., External],
    services: Services,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ext = make(warren={})
    services.status = 500
    await ext.overlay([agent("a1")])
    services.status = 200
    services.forge = {"agents": [{"id": "a1", "capabilities": ["research"]}]}
    clock.now += 10
    with caplog.at_level(logging.INFO, logger="dispatchd.engine.providers"):
        (seen,) = await ext.overlay([agent("a1")])
    assert dict(seen.capabilities) == {"research": 1.0}
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_refresh_asks_at_once(make: Callable[..., External], services: Services) -> None:
    ext = make()
    await ext.overlay([agent("a1")])
    services.warren = {"agents": [{"id": "a1", "status": "sleeping"}]}
    await ext.refresh()
    (seen,) = await ext.overlay([agent("a1")])
    assert seen.status is AgentStatus.SLEEPING
    assert services.asked("warren.test") == 2


async def test_warren_is_asked_with_its_token(
    make: Callable[..., External], services: Services
) -> None:
    await make().overlay([agent("a1")])
    by_host = {r.url.host: r for r in services.requests}
    assert by_host["warren.test"].headers["authorization"] == "Bearer wt"
    assert by_host["warren.test"].url.path == "/api/v1/agents"
    assert "authorization" not in by_host["forge.test"].headers
    assert by_host["forge.test"].headers["accept"] == "application/json"
    assert by_host["forge.test"].url.path == "/api/v1/agents"


# --- wake ------------------------------------------------------------------------------------


async def test_wake_posts_to_warren_with_the_token(
    make: Callable[..., External], services: Services
) -> None:
    ext = make(warren={"url": WARREN + "/base/", "token": "wt"})
    assert ext.service_wake is not None
    await ext.service_wake(agent("team/a 1", wake_url="http://agent.test/wake"), task())
    (posted,) = [r for r in services.requests if r.method == "POST"]
    assert str(posted.url) == "http://warren.test/base/api/v1/agents/team%2Fa%201/wake"
    assert posted.headers["authorization"] == "Bearer wt"
    assert json.loads(posted.content) == {
        "task_id": "t1",
        "reason": "task assigned",
        "priority": "high",
        "start_by": "2030-01-01T00:00:30.000000Z",
    }


async def test_wake_without_a_token_sends_none(
    make: Callable[..., External], services: Services
) -> None:
    await make(warren={"url": WARREN}).wake(agent("a1"), task())
    (posted,) = [r for r in services.requests if r.method == "POST"]
    assert "authorization" not in posted.headers


async def test_a_refused_wake_raises_for_the_waker_to_log(
    make: Callable[..., External], services: Services
) -> None:
    services.status = 401
    with pytest.raises(httpx.HTTPStatusError):
        await make().wake(agent("a1"), task())
