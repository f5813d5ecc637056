"""Pull mode (SPEC §3, §4): POST /api/v1/tasks/claim and GET /api/v1/tasks/queue.

The claim semantics run on a runtime without background work (no push, no sweeps), so
what a claim returns depends on the claim alone; long-polling runs with the assigner on,
since a waiting claim is woken by what the assigner pushes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.domain import ids
from dispatchd.engine import claims as claims_module
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent, make_settings
from tests.api.helpers import BOTH, assert_error, create_code_task, detail, eventually, task_events

CLAIM = "/api/v1/tasks/claim"
QUEUE = "/api/v1/tasks/queue"


@pytest.fixture
def background() -> bool:
    """Whether the assigner and the sweeper run; the claim-semantics classes turn it off."""
    return True


@pytest.fixture
async def runtime(
    tmp_path: Path,
    database_url: str | None,
    settings_overrides: dict[str, Any],
    background: bool,
) -> AsyncIterator[Runtime]:
    settings = make_settings(tmp_path, database_url, **settings_overrides)
    async with Runtime.build(settings, background=background) as rt:
        yield rt


# --- helpers ----------------------------------------------------------------------------


async def create(client: httpx.AsyncClient, title: str, **fields: Any) -> dict[str, Any]:
    return await create_code_task(client, title=title, **fields)


async def claim(
    client: httpx.AsyncClient, agent_id: str, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    r = await client.post(CLAIM, json=body, headers=headers or as_agent(agent_id))
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"tasks", "reason"}, out
    return dict(out)


async def queue(client: httpx.AsyncClient, agent_id: str, **params: Any) -> dict[str, Any]:
    r = await client.get(QUEUE, params={"agent": agent_id, **params}, headers=as_agent(agent_id))
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"task", "reason"}, out
    return dict(out)


async def agent(client: httpx.AsyncClient, agent_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/agents/{agent_id}", headers=as_agent(agent_id))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def event_log(runtime: Runtime) -> list[tuple[Any, ...]]:
    events = await runtime.store.read_events(after=0, limit=10_000)
    return [(e.id, e.type, e.task_id, e.agent_id, e.data) for e in events]


async def task_event_types(client: httpx.AsyncClient, task_id: str) -> list[str]:
    return [e["type"] for e in await task_events(client, task_id)]


def titles(tasks: list[dict[str, Any]]) -> list[str]:
    return [t["title"] for t in tasks]


def assert_taken_by(tasks: list[dict[str, Any]], agent_id: str) -> None:
    for t in tasks:
        assert t["status"] == "running", t
        assert t["assignee"] == agent_id, t
        assert t["started_at"] is not None, t
        assert t["attempt"] >= 1, t


def at(hours: int) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


# --- claim semantics (no push, no sweeps) ---------------------------------------------


@BOTH
class TestClaimOrder:
    @pytest.fixture
    def background(self) -> bool:
        return False

    async def test_own_assigned_first_then_pending_in_queue_order(
        self, client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
    ) -> None:
        await register("w", ["code"], max_concurrent=20)
        # Created in this order on purpose: creation time alone would give another order.
        await create(client, "low", priority="low")
        await create(client, "medium-1")
        await create(client, "high-due-late", priority="high", due_at=at(2))
        await create(client, "high-no-due", priority="high")
        await create(client, "high-due-early", priority="high", due_at=at(1))
        await create(client, "medium-2")
        await create(client, "critical", priority="critical")
        ops = await create(client, "ops-only", priority="critical", capabilities=["ops"])
        own = await create(client, "own", priority="low", assigned_to="w")
        assert own["status"] == "assigned" and own["assignee"] == "w"

        first = await claim(client, "w", max_tasks=1)
        assert titles(first["tasks"]) == ["own"] and first["reason"] is None
        second = await claim(client, "w", max_tasks=2)
        assert titles(second["tasks"]) == ["critical", "high-due-early"]
        rest = await claim(client, "w", max_tasks=100)
        assert titles(rest["tasks"]) == [
            "high-due-late",
            "high-no-due",
            "medium-1",
            "medium-2",
            "low",
        ]
        assert rest["reason"] is None
        claimed = first["tasks"] + second["tasks"] + rest["tasks"]
        assert_taken_by(claimed, "w")
        assert all(t["attempt"] == 1 for t in claimed)

        empty = await claim(client, "w", max_tasks=100)
        assert empty == {"tasks": [], "reason": "no_tasks_available"}
        left = await detail(client, ops["id"])
        assert left["status"] == "pending" and left["assignee"] is None

        # A claimed task is assigned and started in one go; its own task was assigned before.
        assert await task_event_types(client, claimed[1]["id"]) == [
            "task.created",
            "task.assigned",
            "task.started",
        ]
        assert await task_event_types(client, own["id"]) == [
            "task.created",
            "task.assigned",
            "task.started",
        ]
        assert (await agent(client, "w"))["active_tasks"] == len(claimed)
        stored = await runtime.store.get_agent("w")
        assert stored is not None and stored.active == len(claimed)

    async def test_capabilities_narrow_the_pending_tasks_taken(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code", "docs"], max_concurrent=10)
        code = await create(client, "code-task", priority="critical")
        await create(client, "docs-task", capabilities=["docs"])
        both = await create(client, "both-task", capabilities=["code", "docs"])
        await create(client, "own", capabilities=["code"], assigned_to="w")
        # Tags the agent does not have widen nothing.
        out = await claim(client, "w", max_tasks=10, capabilities=["docs", "ops"])
        assert titles(out["tasks"]) == ["own", "docs-task"]
        assert (await detail(client, code["id"]))["status"] == "pending"
        assert (await detail(client, both["id"]))["status"] == "pending"
        out = await claim(client, "w", max_tasks=10, capabilities=["ops"])
        assert out == {"tasks": [], "reason": "no_tasks_available"}
        out = await claim(client, "w", max_tasks=10)
        assert titles(out["tasks"]) == ["code-task", "both-task"]

    async def test_own_assigned_task_comes_back_even_when_full(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"], max_concurrent=1)
        pending = await create(client, "pending", priority="critical")
        own = await create(client, "own", priority="low", assigned_to="w")
        out = await claim(client, "w", max_tasks=5)
        assert [t["id"] for t in out["tasks"]] == [own["id"]]
        assert_taken_by(out["tasks"], "w")
        assert await claim(client, "w", max_tasks=5) == {"tasks": [], "reason": "at_capacity"}
        assert (await detail(client, pending["id"]))["status"] == "pending"


@BOTH
class TestClaimCapacity:
    @pytest.fixture
    def background(self) -> bool:
        return False

    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": {"max_concurrent_per_agent": 2}}

    async def test_max_tasks_and_free_slots(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"], max_concurrent=3)
        for i in range(5):
            await create(client, f"t{i}")
        one = await claim(client, "w", max_tasks=2)
        assert titles(one["tasks"]) == ["t0", "t1"] and one["reason"] is None
        two = await claim(client, "w", max_tasks=5)
        assert titles(two["tasks"]) == ["t2"] and two["reason"] is None
        assert await claim(client, "w", max_tasks=5) == {"tasks": [], "reason": "at_capacity"}
        assert (await agent(client, "w"))["active_tasks"] == 3

        done = one["tasks"][0]["id"]
        r = await client.post(f"/api/v1/tasks/{done}/complete", json={}, headers=as_agent("w"))
        assert r.status_code == 200, r.text
        three = await claim(client, "w", max_tasks=5)
        assert titles(three["tasks"]) == ["t3"]
        assert_taken_by(one["tasks"] + two["tasks"] + three["tasks"], "w")
        assert await claim(client, "w") == {"tasks": [], "reason": "at_capacity"}
        assert (await agent(client, "w"))["active_tasks"] == 3

    async def test_default_limit_applies_without_max_concurrent(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"])
        for i in range(4):
            await create(client, f"t{i}")
        out = await claim(client, "w", max_tasks=10)
        assert titles(out["tasks"]) == ["t0", "t1"]
        assert await claim(client, "w", max_tasks=10) == {"tasks": [], "reason": "at_capacity"}


@BOTH
class TestClaimReasons:
    @pytest.fixture
    def background(self) -> bool:
        return False

    async def test_no_tasks_available(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"])
        assert await claim(client, "w") == {"tasks": [], "reason": "no_tasks_available"}
        # Work it is not capable of is no work for it.
        ops = await create(client, "ops", capabilities=["ops"])
        assert await claim(client, "w") == {"tasks": [], "reason": "no_tasks_available"}
        assert (await detail(client, ops["id"]))["status"] == "pending"

    async def test_drained_agent_gets_no_new_task(
        self,
        client: httpx.AsyncClient,
        register: Callable[..., Any],
        admin: dict[str, str],
    ) -> None:
        await register("w", ["code"])
        t = await create(client, "t")
        r = await client.post("/api/v1/agents/w/drain", headers=admin)
        assert r.status_code == 200, r.text
        assert await claim(client, "w") == {"tasks": [], "reason": "draining"}
        assert await queue(client, "w") == {"task": None, "reason": "draining"}
        # Waiting cannot bring it work, so a long-poll answers at once.
        out = await asyncio.wait_for(claim(client, "w", wait_s=60), timeout=10)
        assert out == {"tasks": [], "reason": "draining"}
        assert (await detail(client, t["id"]))["status"] == "pending"

        r = await client.post("/api/v1/agents/w/undrain", headers=admin)
        assert r.status_code == 200, r.text
        out = await claim(client, "w")
        assert [x["id"] for x in out["tasks"]] == [t["id"]]

    async def test_degraded_agent_gets_no_task(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"])
        t = await create(client, "t")
        r = await client.post(
            "/api/v1/agents/w/heartbeat", json={"status": "degraded"}, headers=as_agent("w")
        )
        assert r.status_code == 200, r.text
        assert await claim(client, "w") == {"tasks": [], "reason": "degraded"}
        out = await asyncio.wait_for(claim(client, "w", wait_s=60), timeout=10)
        assert out == {"tasks": [], "reason": "degraded"}
        assert (await detail(client, t["id"]))["status"] == "pending"

        r = await client.post(
            "/api/v1/agents/w/heartbeat", json={"status": "ready"}, headers=as_agent("w")
        )
        assert r.status_code == 200, r.text
        out = await claim(client, "w")
        assert [x["id"] for x in out["tasks"]] == [t["id"]]

    async def test_unknown_agent_is_404(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: dict[str, str]
    ) -> None:
        t = await create(client, "t", capabilities=[])
        before = await event_log(runtime)
        r = await client.post(CLAIM, json={}, headers=as_agent("ghost"))
        err = assert_error(r, 404, "agent_not_registered")
        assert err["details"]["agent_id"] == "ghost"
        r = await client.post(CLAIM, json={"wait_s": 0.2}, headers=as_agent("ghost"))
        assert_error(r, 404, "agent_not_registered")
        r = await client.get(QUEUE, params={"agent": "ghost"}, headers=as_agent("ghost"))
        assert_error(r, 404, "agent_not_registered")
        r = await client.post(CLAIM, json={"agent_id": "ghost"}, headers=admin)
        assert_error(r, 404, "agent_not_registered")
        assert await event_log(runtime) == before
        assert (await detail(client, t["id"]))["status"] == "pending"


@BOTH
class TestOfflineAgentClaims:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": {"wake_timeout_ms": 300, "tick_interval_ms": 20}}

    async def test_offline_agent_that_claims_is_ready_again(
        self, client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
    ) -> None:
        await register("w", ["code"])
        t = await create(client, "t")
        # Pushed to w, which neither starts it nor heartbeats: the task comes back and w
        # is taken as gone. Once w is offline, nothing can be pushed to it any more.
        await eventually(lambda: _offline(client, "w"), "the silent agent to be marked offline")
        requeued = await eventually(
            lambda: _pending(client, t["id"]), "the unstarted task to be requeued"
        )
        assert requeued["assignee"] is None and requeued["requeues"] >= 1
        seen = len(await event_log(runtime))

        out = await claim(client, "w")
        assert [x["id"] for x in out["tasks"]] == [t["id"]] and out["reason"] is None
        assert_taken_by(out["tasks"], "w")
        assert out["tasks"][0]["attempt"] == requeued["attempt"] + 1
        assert (await agent(client, "w"))["status"] == "ready"
        changes = [e for e in (await event_log(runtime))[seen:] if e[1] == "agent.status_changed"]
        assert len(changes) == 1, changes
        _, _, _, agent_id, data = changes[0]
        assert agent_id == "w"
        assert (data["previous"], data["status"]) == ("offline", "ready")


async def _pending(client: httpx.AsyncClient, task_id: str) -> dict[str, Any] | None:
    t = await detail(client, task_id)
    return t if t["status"] == "pending" else None


async def _offline(client: httpx.AsyncClient, agent_id: str) -> bool:
    return (await agent(client, agent_id))["status"] == "offline"


@BOTH
class TestClaimWho:
    @pytest.fixture
    def background(self) -> bool:
        return False

    async def test_claiming_for_another_agent_needs_admin(
        self,
        client: httpx.AsyncClient,
        register: Callable[..., Any],
        admin: dict[str, str],
        runtime: Runtime,
    ) -> None:
        await register("w", ["code"])
        t = await create(client, "t")
        before = (await detail(client, t["id"]), await event_log(runtime))

        r = await client.post(CLAIM, json={"agent_id": "w"}, headers=as_agent("alice"))
        err = assert_error(r, 403, "not_self")
        assert err["details"]["agent_id"] == "w"
        r = await client.get(QUEUE, params={"agent": "w"}, headers=as_agent("alice"))
        assert_error(r, 403, "not_self")
        assert (await detail(client, t["id"]), await event_log(runtime)) == before

        r = await client.post(CLAIM, json={"agent_id": "w"}, headers=admin)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [x["id"] for x in out["tasks"]] == [t["id"]]
        assert_taken_by(out["tasks"], "w")
        t2 = await create(client, "t2")
        r = await client.get(QUEUE, params={"agent": "w"}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["task"]["id"] == t2["id"] and r.json()["task"]["assignee"] == "w"

    async def test_task_named_for_another_agent_is_not_claimable(
        self,
        client: httpx.AsyncClient,
        register: Callable[..., Any],
        admin: dict[str, str],
    ) -> None:
        await register("w1", ["code"])
        await register("w2", ["code"])
        # w2 is drained, so the task stays pending, still named for w2.
        assert (await client.post("/api/v1/agents/w2/drain", headers=admin)).status_code == 200
        named = await create(client, "named", assigned_to="w2", priority="critical")
        assert named["status"] == "pending" and named["assigned_to"] == "w2"
        free = await create(client, "free", priority="low")

        out = await claim(client, "w1", max_tasks=5)
        assert [x["id"] for x in out["tasks"]] == [free["id"]]
        assert await claim(client, "w1", max_tasks=5) == {
            "tasks": [],
            "reason": "no_tasks_available",
        }
        assert (await detail(client, named["id"]))["status"] == "pending"

        assert (await client.post("/api/v1/agents/w2/undrain", headers=admin)).status_code == 200
        out = await claim(client, "w2")
        assert [x["id"] for x in out["tasks"]] == [named["id"]]
        assert_taken_by(out["tasks"], "w2")


@BOTH
class TestClaimOwnerFilter:
    @pytest.fixture
    def background(self) -> bool:
        return False

    async def test_owner_filter_applies_to_claims(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("acme-w", ["code"], owner="acme", max_concurrent=10)
        await register("nobody-w", ["code"], max_concurrent=10)
        t_acme = await create(client, "acme", owner="acme")
        t_globex = await create(client, "globex", owner="globex")
        t_none = await create(client, "none")

        out = await claim(client, "nobody-w", max_tasks=10)
        assert [x["id"] for x in out["tasks"]] == [t_none["id"]]
        out = await claim(client, "acme-w", max_tasks=10)
        assert [x["id"] for x in out["tasks"]] == [t_acme["id"]]
        assert (await detail(client, t_globex["id"]))["status"] == "pending"

    async def test_owned_and_unowned_tasks_both_go_to_an_owned_agent(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("acme-w", ["code"], owner="acme", max_concurrent=10)
        t_acme = await create(client, "acme", owner="acme")
        t_none = await create(client, "none")
        await create(client, "globex", owner="globex")
        out = await claim(client, "acme-w", max_tasks=10)
        assert [x["id"] for x in out["tasks"]] == [t_acme["id"], t_none["id"]]


@BOTH
class TestClaimOwnerFilterOff:
    @pytest.fixture
    def background(self) -> bool:
        return False

    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"assignment": {"owner_filter_enabled": False}}

    async def test_any_capable_agent_may_claim_any_owner(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("nobody-w", ["code"], max_concurrent=10)
        made = [
            await create(client, "acme", owner="acme"),
            await create(client, "globex", owner="globex"),
            await create(client, "none"),
        ]
        out = await claim(client, "nobody-w", max_tasks=10)
        assert [x["id"] for x in out["tasks"]] == [m["id"] for m in made]


@BOTH
class TestClaimBackoff:
    @pytest.fixture
    def background(self) -> bool:
        return False

    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"retry": {"backoff_base_ms": 600_000, "backoff_cap_ms": 600_000}}

    async def test_task_backing_off_is_not_claimable_until_its_retry_time(
        self,
        client: httpx.AsyncClient,
        register: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        await register("w", ["code"], max_concurrent=10)
        failing = await create(client, "failing", priority="critical")
        out = await claim(client, "w")
        assert [x["id"] for x in out["tasks"]] == [failing["id"]]
        r = await client.post(
            f"/api/v1/tasks/{failing['id']}/fail",
            json={"error": "flaky", "retryable": True},
            headers=as_agent("w"),
        )
        assert r.status_code == 200, r.text
        backing_off = r.json()
        assert backing_off["status"] == "pending" and backing_off["retry_at"] is not None
        fresh = await create(client, "fresh", priority="low")

        out = await claim(client, "w", max_tasks=10)
        assert [x["id"] for x in out["tasks"]] == [fresh["id"]]
        assert await claim(client, "w", max_tasks=10) == {
            "tasks": [],
            "reason": "no_tasks_available",
        }
        assert (await detail(client, failing["id"]))["status"] == "pending"

        # Once its retry time has come, it is claimable again, as a new attempt.
        retry_at = ids.parse_iso(backing_off["retry_at"])
        monkeypatch.setattr(claims_module, "utcnow", lambda: retry_at + timedelta(seconds=1))
        out = await claim(client, "w", max_tasks=10)
        assert [x["id"] for x in out["tasks"]] == [failing["id"]]
        assert out["tasks"][0]["attempt"] == 2
        assert_taken_by(out["tasks"], "w")


@BOTH
class TestQueueRoute:
    @pytest.fixture
    def background(self) -> bool:
        return False

    async def test_empty_queue(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"])
        assert await queue(client, "w") == {"task": None, "reason": "no_tasks_available"}

    async def test_max_capacity_caps_below_the_agents_own_limit(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"], max_concurrent=5)
        made = [await create(client, f"t{i}") for i in range(3)]
        first = await queue(client, "w", max_capacity=2)
        second = await queue(client, "w", max_capacity=2)
        assert [first["task"]["id"], second["task"]["id"]] == [made[0]["id"], made[1]["id"]]
        assert first["reason"] is None and second["reason"] is None
        assert_taken_by([first["task"], second["task"]], "w")

        assert await queue(client, "w", max_capacity=2) == {"task": None, "reason": "at_capacity"}
        assert (await detail(client, made[2]["id"]))["status"] == "pending"
        # Its own limit (5) still has room.
        third = await queue(client, "w")
        assert third["task"]["id"] == made[2]["id"]
        assert await queue(client, "w") == {"task": None, "reason": "no_tasks_available"}

    async def test_queue_defaults_to_the_caller(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"])
        t = await create(client, "t")
        r = await client.get(QUEUE, headers=as_agent("w"))
        assert r.status_code == 200, r.text
        assert r.json()["task"]["id"] == t["id"] and r.json()["task"]["assignee"] == "w"


# --- long-polling (with the assigner) -----------------------------------------------------


@BOTH
class TestLongPoll:
    async def test_wait_returns_the_task_created_meanwhile(
        self, client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
    ) -> None:
        await register("w", ["code"])
        loop = asyncio.get_running_loop()
        begun = loop.time()
        waiting = asyncio.create_task(claim(client, "w", wait_s=5))
        await eventually(
            lambda: not waiting.done() and "w" in runtime.claims.waiters.waiting(),
            "the claim to wait",
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()
        t = await create(client, "late")
        out = await waiting
        assert [x["id"] for x in out["tasks"]] == [t["id"]] and out["reason"] is None
        assert_taken_by(out["tasks"], "w")
        assert loop.time() - begun < 5

    async def test_wait_with_nothing_to_do_ends_empty(
        self, client: httpx.AsyncClient, register: Callable[..., Any]
    ) -> None:
        await register("w", ["code"])
        loop = asyncio.get_running_loop()
        begun = loop.time()
        out = await claim(client, "w", wait_s=0.3)
        assert out == {"tasks": [], "reason": "no_tasks_available"}
        # It did wait (timers may fire a clock tick early).
        assert loop.time() - begun >= 0.25

    async def test_waiting_claim_is_woken_by_a_push_when_a_slot_frees(
        self,
        client: httpx.AsyncClient,
        register: Callable[..., Any],
        runtime: Runtime,
    ) -> None:
        await register("w", ["code"], max_concurrent=1)
        first = await create(client, "first")
        held = await claim(client, "w")
        assert [x["id"] for x in held["tasks"]] == [first["id"]]
        second = await create(client, "second")
        assert (await detail(client, second["id"]))["status"] == "pending"

        waiting = asyncio.create_task(claim(client, "w", wait_s=30))
        await eventually(
            lambda: not waiting.done() and "w" in runtime.claims.waiters.waiting(),
            "the claim to wait",
        )
        r = await client.post(
            f"/api/v1/tasks/{first['id']}/complete", json={}, headers=as_agent("w")
        )
        assert r.status_code == 200, r.text
        out = await asyncio.wait_for(waiting, timeout=20)
        assert [x["id"] for x in out["tasks"]] == [second["id"]] and out["reason"] is None
        assert_taken_by(out["tasks"], "w")
        # The assigner pushed it (assigned by the push, started by the woken claim).
        assert await task_event_types(client, second["id"]) == [
            "task.created",
            "task.assigned",
            "task.started",
        ]

    async def test_two_waiters_one_task(
        self, client: httpx.AsyncClient, register: Callable[..., Any], runtime: Runtime
    ) -> None:
        await register("w1", ["code"])
        await register("w2", ["code"])
        waits = [asyncio.create_task(claim(client, w, wait_s=1)) for w in ("w1", "w2")]
        await eventually(
            lambda: runtime.claims.waiters.waiting() >= {"w1", "w2"}, "both claims to wait"
        )
        t = await create(client, "only")
        outs = await asyncio.gather(*waits)
        got = [o for o in outs if o["tasks"]]
        assert len(got) == 1, outs
        assert [x["id"] for x in got[0]["tasks"]] == [t["id"]]
        assert [o for o in outs if not o["tasks"]] == [
            {"tasks": [], "reason": "no_tasks_available"}
        ]
        taken = await detail(client, t["id"])
        assert taken["status"] == "running" and len(taken["attempts"]) == 1


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tasks": 0}, "max_tasks"),
        ({"max_tasks": 101}, "max_tasks"),
        ({"wait_s": -1}, "wait_s"),
        ({"wait_s": 61}, "wait_s"),
        ({"max_tasks": "many"}, "max_tasks"),
        ({"bogus": 1}, "bogus"),
    ],
)
async def test_bad_claim_body_is_422(
    client: httpx.AsyncClient,
    register: Callable[..., Any],
    runtime: Runtime,
    body: dict[str, Any],
    field: str,
) -> None:
    await register("w", ["code"])
    t = await create(client, "t", assigned_to="w")
    before = await event_log(runtime)
    r = await client.post(CLAIM, json=body, headers=as_agent("w"))
    err = assert_error(r, 422, "validation_error")
    assert any(e["loc"][-1] == field for e in err["details"]["errors"]), err
    assert await event_log(runtime) == before
    assert (await detail(client, t["id"]))["status"] == "assigned"


@pytest.mark.parametrize("params", [{"max_capacity": 0}, {"max_capacity": "x"}, {"agent": ""}])
async def test_bad_queue_query_is_422(
    client: httpx.AsyncClient, register: Callable[..., Any], params: dict[str, Any]
) -> None:
    await register("w", ["code"])
    r = await client.get(QUEUE, params=params, headers=as_agent("w"))
    assert_error(r, 422, "validation_error")


async def test_claim_bounds_are_accepted(
    client: httpx.AsyncClient, register: Callable[..., Any]
) -> None:
    await register("w", ["code"])
    out = await claim(client, "w", max_tasks=100, wait_s=0)
    assert out == {"tasks": [], "reason": "no_tasks_available"}
    r = await client.post(CLAIM, headers=as_agent("w"))
    assert r.status_code == 200, r.text
