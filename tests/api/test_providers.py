"""External services (docs/providers.md): capabilities from PromptForge, availability and
wake from Warren, against stand-ins of both that speak real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from dispatchd.engine.providers import External
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import (
    BOTH,
    Register,
    create_task,
    detail,
    eventually,
    explain,
    heartbeat,
)
from tests.support.standins import PromptForge, StandIn, Wake, Warren

WARREN_TOKEN = "warren-admin-token"
REFRESH_S = 0.2
# Long enough that a stand-in answers in time on a loaded machine (a refresh that times out
# falls back, by design, and the assertions would see the fallback); the test of a hanging
# service sets a short one.
TIMEOUT_S = 5.0

# The `say` fixture: say(capabilities, statuses).
Say = Callable[[dict[str, Any], dict[str, str]], Awaitable[None]]


@pytest.fixture
def broken() -> bool:
    """Parametrize with True to have both services fail from before the start."""
    return False


@pytest.fixture
async def forge(broken: bool) -> AsyncIterator[PromptForge]:
    async with PromptForge() as service:
        if broken:
            service.fail(503)
        yield service


@pytest.fixture
async def warren(broken: bool) -> AsyncIterator[Warren]:
    async with Warren(token=WARREN_TOKEN) as service:
        if broken:
            service.fail(503)
        yield service


@pytest.fixture
def refresh_s() -> float:
    """How long answers are kept; parametrize to change."""
    return REFRESH_S


@pytest.fixture
def timeout_s() -> float:
    """How long a request to the services may take; parametrize to change."""
    return TIMEOUT_S


@pytest.fixture
def settings_overrides(
    forge: PromptForge, warren: Warren, refresh_s: float, timeout_s: float
) -> dict[str, Any]:
    timing = {"refresh_s": refresh_s, "timeout_s": timeout_s}
    return {
        "promptforge": {"url": forge.url, **timing},
        "warren": {"url": warren.url, "token": WARREN_TOKEN, **timing},
    }


def external(runtime: Runtime) -> External:
    assert runtime.external is not None
    return runtime.external


@pytest.fixture
def say(runtime: Runtime, forge: PromptForge, warren: Warren) -> Say:
    """`await say(capabilities, statuses)`: what PromptForge and Warren answer about these
    agents from now on; dispatchd asks both at once."""

    async def do(capabilities: dict[str, Any], statuses: dict[str, str]) -> None:
        forge.agents.update(capabilities)
        warren.agents.update(statuses)
        await external(runtime).refresh()

    return do


async def directory_sees(runtime: Runtime, agent_id: str, **fields: Any) -> None:
    """Wait until the assigner's copy of `agent_id` has these field values."""

    def check() -> bool:
        agent = runtime.directory.agents.get(agent_id)
        return agent is not None and all(getattr(agent, k) == v for k, v in fields.items())

    await eventually(check, f"the assigner to see {agent_id} with {fields}")


async def asked_again(service: StandIn, times: int = 2) -> None:
    """Wait until `service` has been asked for its agents `times` more times."""
    start = service.asked()
    await eventually(lambda: service.asked() >= start + times, f"{service.name} to be asked again")


async def woken(warren: Warren, *, limit_s: float = 10.0) -> list[Wake]:
    """Warren's wake calls, once there is one."""
    return await eventually(lambda: warren.wakes, "Warren's wake to be called", limit_s=limit_s)


async def assignee(client: httpx.AsyncClient, task_id: str) -> str:
    """The agent the task goes to, once it goes to one."""

    async def check() -> str | None:
        return (await detail(client, task_id))["assignee"]

    return await eventually(check, f"task {task_id} to be assigned")


def candidate(explained: dict[str, Any], agent_id: str) -> dict[str, Any]:
    found = [c for c in explained["candidates"] if c["agent_id"] == agent_id]
    assert found, explained
    return dict(found[0])


def exclusion(explained: dict[str, Any], agent_id: str) -> str | None:
    return next((x["reason"] for x in explained["excluded"] if x["agent_id"] == agent_id), None)


async def test_capabilities_come_from_promptforge(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    await say({"a1": {"research": 1.0}}, {"a1": "ready"})
    await register("a1", ["code"])
    code = await create_task(client, capabilities=["code"])
    research = await create_task(client, capabilities=["research"])
    assert await assignee(client, research["id"]) == "a1"
    # The code task came first in the queue and was looked at before the research one.
    assert (await detail(client, code["id"]))["status"] == "pending"
    why = await explain(client, code["id"])
    assert exclusion(why, "a1") == "missing_capability"


async def test_weights_from_promptforge_decide_between_agents(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    # Registered weights would pick a1; PromptForge's pick a2.
    await say({"a1": {"code": 0.3}, "a2": {"code": 0.9}}, {"a1": "ready", "a2": "ready"})
    await register("a1", {"code": 1.0})
    await register("a2", {"code": 0.2})
    task = await create_task(client, capabilities=["code"])
    assert await assignee(client, task["id"]) == "a2"
    why = await explain(client, task["id"])
    assert candidate(why, "a1")["capability_match"] == 0.3
    assert candidate(why, "a2")["capability_match"] == 0.9


async def test_a_list_of_tags_from_promptforge_weighs_one(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    await say({"a1": ["research", "review"]}, {"a1": "ready"})
    await register("a1", {"code": 0.5})
    task = await create_task(client, capabilities=["research", "review"])
    assert await assignee(client, task["id"]) == "a1"
    assert candidate(await explain(client, task["id"]), "a1")["capability_match"] == 1.0


# The answers are kept long enough that the assignment uses what `say` set even on a
# loaded machine (a refresh that times out falls back to the stored status, by design).
@pytest.mark.parametrize("refresh_s", [60.0])
async def test_sleeping_in_warren_scores_point_eight(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    # Ready, a1 would win (1.0 > 0.9); sleeping in Warren it scores 0.8 and a2 wins.
    await say({"a1": {"code": 1.0}, "a2": {"code": 0.9}}, {"a1": "sleeping", "a2": "ready"})
    await register("a1", ["code"], status="ready")
    await register("a2", ["code"], status="ready")
    task = await create_task(client, capabilities=["code"], priority="low")
    assert await assignee(client, task["id"]) == "a2"
    why = await explain(client, task["id"])
    assert candidate(why, "a1")["availability"] == 0.8
    assert candidate(why, "a1")["score"] == 0.8
    assert candidate(why, "a2")["availability"] == 1.0


async def test_busy_in_warren_scores_half(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "busy"})
    await register("a1", ["code"], status="ready")
    task = await create_task(client, capabilities=["code"], priority="low")
    await assignee(client, task["id"])
    assert candidate(await explain(client, task["id"]), "a1")["availability"] == 0.5


async def test_degraded_in_warren_is_never_assigned_until_warren_says_ready(
    client: httpx.AsyncClient, register: Register, say: Say, warren: Warren
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "degraded"})
    await register("a1", ["code"], status="ready")
    task = await create_task(client, capabilities=["code"])
    assert exclusion(await explain(client, task["id"]), "a1") == "degraded"
    # Several refreshes later it still waits.
    await asked_again(warren, 3)
    assert (await detail(client, task["id"]))["status"] == "pending"
    # No event here tells dispatchd; the periodic refresh finds out and assigns.
    warren.agents["a1"] = "ready"
    assert await assignee(client, task["id"]) == "a1"


async def test_agents_the_services_do_not_list(
    client: httpx.AsyncClient, register: Register, say: Say, forge: PromptForge, warren: Warren
) -> None:
    # a1: unknown to PromptForge → no capabilities; a2: unknown to Warren → offline.
    await say({"a2": {"code": 1.0}}, {"a1": "ready"})
    await register("a1", ["code"])
    await register("a2", ["code"])
    task = await create_task(client, capabilities=["code"])
    why = await explain(client, task["id"])
    assert exclusion(why, "a1") == "missing_capability"
    assert exclusion(why, "a2") == "offline"
    await asked_again(warren)
    assert (await detail(client, task["id"]))["status"] == "pending"
    # Once PromptForge lists a1, it gets the task.
    forge.agents["a1"] = {"code": 1.0}
    assert await assignee(client, task["id"]) == "a1"


async def test_waking_goes_through_warren_with_its_token(
    client: httpx.AsyncClient, register: Register, say: Say, warren: Warren
) -> None:
    async with StandIn() as agent_hook:
        await say({"a1": {"code": 1.0}}, {"a1": "sleeping"})
        await register("a1", ["code"], status="ready", wake_url=f"{agent_hook.url}/wake")
        task = await create_task(client, capabilities=["code"])
        assert await assignee(client, task["id"]) == "a1"

        (wake,) = await woken(warren)
        assert wake.agent_id == "a1"
        assert wake.authorization == f"Bearer {WARREN_TOKEN}"
        assert wake.body["task_id"] == task["id"]
        assert wake.body["reason"] == "task assigned"
        assert agent_hook.requests == []


async def test_only_a_sleeping_agent_is_woken(
    client: httpx.AsyncClient, register: Register, runtime: Runtime, say: Say, warren: Warren
) -> None:
    await say({"a1": {"code": 1.0}, "a2": {"code": 1.0}}, {"a1": "ready", "a2": "sleeping"})
    await register("a1", ["code"])
    await register("a2", ["code"])
    first = await create_task(client, capabilities=["code"])
    assert await assignee(client, first["id"]) == "a1"  # 1.0 beats 0.8
    warren.agents["a1"] = "degraded"
    await directory_sees(runtime, "a1", status="degraded")
    second = await create_task(client, capabilities=["code"])
    assert await assignee(client, second["id"]) == "a2"
    wakes = await woken(warren)
    assert [(w.agent_id, w.body["task_id"]) for w in wakes] == [("a2", second["id"])]


async def test_a_task_named_for_a_sleeping_agent_wakes_it(
    client: httpx.AsyncClient, register: Register, runtime: Runtime, say: Say, warren: Warren
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "sleeping"})
    await register("a1", ["code"])
    await directory_sees(runtime, "a1", status="sleeping")
    task = await create_task(client, capabilities=["code"], assigned_to="a1")
    assert task["assignee"] == "a1"
    await woken(warren, limit_s=2.0)


@pytest.mark.parametrize(
    ("mode", "timeout_s"), [("fail", TIMEOUT_S), ("hang", 0.5), ("garbage", TIMEOUT_S)]
)
async def test_a_failing_service_keeps_its_last_good_answer(
    client: httpx.AsyncClient,
    register: Register,
    say: Say,
    forge: PromptForge,
    warren: Warren,
    admin: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    timeout_s: float,
) -> None:
    caplog.set_level(logging.WARNING, logger="dispatchd.engine.providers")
    await say({"a1": {"research": 0.6}}, {"a1": "busy"})
    await register("a1", ["code"], status="ready")
    for service in (forge, warren):
        if mode == "fail":
            service.fail(500)
        elif mode == "hang":
            service.hang()
        else:
            service.answer_raw('{"agents": [{"id": "a1", "capabilities": 7, "status": 7}]}')
    await asked_again(forge)
    await asked_again(warren)
    # Assignment still uses what the services last said well: research, busy.
    task = await create_task(client, capabilities=["research"])
    assert await assignee(client, task["id"]) == "a1"
    why = await explain(client, task["id"])
    assert candidate(why, "a1")["capability_match"] == 0.6
    assert candidate(why, "a1")["availability"] == 0.5
    # And the API answers as usual.
    for r in (
        await client.get("/api/v1/agents", headers=admin),
        await client.get("/api/v1/agents/a1"),
        await client.post("/api/v1/tasks/claim", json={}, headers=as_agent("a1")),
        await client.get("/api/v1/tasks/queue", headers=as_agent("a1")),
    ):
        assert r.status_code == 200, r.text
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("PromptForge" in m and "keeping its last good answer" in m for m in messages)
    assert any("Warren" in m and "keeping its last good answer" in m for m in messages)


@pytest.mark.parametrize("broken", [True])
async def test_before_any_good_answer_the_registered_values_stand(
    client: httpx.AsyncClient,
    register: Register,
    runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dispatchd.engine.providers")
    await register("a1", {"code": 0.7}, status="ready")
    task = await create_task(client, capabilities=["code"])
    assert await assignee(client, task["id"]) == "a1"
    why = await explain(client, task["id"])
    assert candidate(why, "a1")["capability_match"] == 0.7
    assert candidate(why, "a1")["availability"] == 1.0
    # The runtime asked first while starting, in the fixtures.
    records = caplog.get_records("setup") + caplog.get_records("call")
    messages = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any(
        "PromptForge" in m and "HTTP 503" in m and "registered values" in m for m in messages
    )
    assert any("Warren" in m and "HTTP 503" in m and "registered values" in m for m in messages)


async def test_a_service_that_recovers_is_used_again(
    client: httpx.AsyncClient, register: Register, say: Say, forge: PromptForge
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "ready"})
    await register("a1", ["code"])
    forge.fail(500)
    await asked_again(forge)
    forge.agents["a1"] = {"research": 1.0}
    forge.recover()
    task = await create_task(client, capabilities=["research"])
    assert await assignee(client, task["id"]) == "a1"


@BOTH
async def test_claim_uses_the_capabilities_from_promptforge(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    # Warren says offline, so nothing is pushed to a1; it pulls instead.
    await say({"a1": {"research": 1.0}}, {"a1": "offline"})
    await register("a1", ["code"])
    await create_task(client, title="code", capabilities=["code"])
    research = await create_task(client, title="research", capabilities=["research"])
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 5}, headers=as_agent("a1"))
    assert r.status_code == 200, r.text
    assert [t["id"] for t in r.json()["tasks"]] == [research["id"]]


async def test_claim_refuses_an_agent_warren_reports_degraded(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "degraded"})
    await register("a1", ["code"], status="ready")
    await create_task(client, capabilities=["code"])
    r = await client.post("/api/v1/tasks/claim", json={}, headers=as_agent("a1"))
    assert r.status_code == 200, r.text
    assert r.json() == {"tasks": [], "reason": "degraded"}


async def test_warren_ready_wins_over_a_degraded_heartbeat(
    client: httpx.AsyncClient, register: Register, say: Say
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "ready"})
    await register("a1", ["code"])
    await heartbeat(client, "a1", "degraded")
    task = await create_task(client, capabilities=["code"])
    assert candidate(await explain(client, task["id"]), "a1")["availability"] == 1.0

    async def given() -> bool:
        return (await detail(client, task["id"]))["assignee"] == "a1"

    await eventually(given, "the task to go to a1", limit_s=2.0)


@pytest.mark.parametrize("refresh_s", [1.0])
async def test_a_change_in_warren_is_seen_under_steady_traffic(
    client: httpx.AsyncClient, register: Register, say: Say, warren: Warren
) -> None:
    await say({"a1": {"code": 1.0}}, {"a1": "degraded"})
    await register("a1", ["code"])
    task = await create_task(client, capabilities=["code"])
    warren.agents["a1"] = "ready"
    # Unrelated work arrives every 20 ms, for three refresh periods.
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.0
    while loop.time() < end:
        if (await detail(client, task["id"]))["assignee"] == "a1":
            return
        await create_task(client, capabilities=["nobody-has-this"])
        await asyncio.sleep(0.02)
    raise AssertionError("a1 became ready in Warren but the waiting task was not assigned")
