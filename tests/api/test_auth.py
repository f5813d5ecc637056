"""Who may call what: X-Agent-ID, admin and agent tokens, and each forbidden action (SPEC §4).

Every refusal is checked for its status and code, and for having changed nothing: the task
as its detail route shows it, the agent as the store holds it, and the event log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from dispatchd.domain.models import Task, TaskStatus
from dispatchd.runtime import Runtime
from tests.api.conftest import ADMIN_TOKEN, app_for, as_agent
from tests.api.helpers import assert_error, create_task, detail, eventually

JSON = {"Content-Type": "application/json"}


async def events(runtime: Runtime) -> list[tuple[int, str]]:
    return [(e.id, e.type) for e in await runtime.store.read_events(after=0, limit=10_000)]


async def snapshot(
    client: httpx.AsyncClient, runtime: Runtime, task_id: str | None = None
) -> tuple[Any, ...]:
    task = None if task_id is None else await detail(client, task_id)
    return task, await events(runtime)


@pytest.fixture
async def bare(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no X-Agent-ID of its own."""
    transport = httpx.ASGITransport(app=app_for(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatchd.test") as c:
        yield c


async def settled(runtime: Runtime, task_id: str, done: Callable[[Task], bool]) -> Task:
    """The task once `done` holds for it (the assigner works in the background)."""

    async def probe() -> Task | None:
        task = await runtime.store.get_task(task_id)
        return task if task is not None and done(task) else None

    return await eventually(probe, f"task {task_id} to settle", limit_s=5.0)


# --- X-Agent-ID and the Authorization header ----------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/tasks", None),
        ("POST", "/api/v1/tasks", {"title": "t"}),
        ("GET", "/api/v1/tasks/01abc", None),
        ("POST", "/api/v1/tasks/01abc/complete", {}),
        ("POST", "/api/v1/agents", {"id": "someone"}),
        ("GET", "/api/v1/agents", None),
        ("POST", "/api/v1/agents/someone/drain", None),
    ],
)
@pytest.mark.parametrize("with_admin_token", [False, True])
async def test_missing_agent_id_is_401(
    bare: httpx.AsyncClient,
    runtime: Runtime,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    with_admin_token: bool,
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if with_admin_token else {}
    before = await events(runtime)
    r = await bare.request(method, path, json=body, headers=headers)
    assert_error(r, 401, "missing_agent_id")
    r = await bare.request(method, path, json=body, headers={**headers, "X-Agent-ID": ""})
    assert_error(r, 401, "missing_agent_id")
    assert await events(runtime) == before
    assert await runtime.store.get_agent("someone") is None


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Token abc",
        "abc",
        f"Basic {ADMIN_TOKEN}",
        f"Bearer\t{ADMIN_TOKEN}",
        f"{ADMIN_TOKEN}",
    ],
)
async def test_malformed_authorization_is_401(
    client: httpx.AsyncClient, runtime: Runtime, authorization: str
) -> None:
    before = await events(runtime)
    headers = {"Authorization": authorization}
    assert_error(await client.get("/api/v1/tasks", headers=headers), 401, "invalid_authorization")
    r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
    assert_error(r, 401, "invalid_authorization")
    assert_error(await client.get("/api/v1/agents", headers=headers), 401, "invalid_authorization")
    assert await events(runtime) == before


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/agents", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "token",
    [
        ADMIN_TOKEN + "x",
        ADMIN_TOKEN[:-1],
        ADMIN_TOKEN.upper(),
        ADMIN_TOKEN[::-1],
        "wrong-admin-token",
    ],
)
async def test_wrong_admin_token_is_401(
    client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any], token: str
) -> None:
    await register("bob")
    before = await events(runtime)
    headers = {"X-Agent-ID": "admin", "Authorization": f"Bearer {token}"}
    assert_error(await client.get("/api/v1/agents", headers=headers), 401, "invalid_token")
    r = await client.post("/api/v1/agents/bob/drain", headers=headers)
    assert_error(r, 401, "invalid_token")
    assert await events(runtime) == before
    agent = await runtime.store.get_agent("bob")
    assert agent is not None and not agent.drained


async def test_unknown_agent_token_is_401(
    client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
) -> None:
    await register("bob")
    before = await events(runtime)
    for agent_id in ("bob", "nobody"):
        headers = as_agent(agent_id, "dsp_not_a_token_anyone_was_given")
        assert_error(await client.get("/api/v1/tasks", headers=headers), 401, "invalid_token")
        r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
        assert_error(r, 401, "invalid_token")
    assert await events(runtime) == before


async def test_token_of_another_agent_is_401(
    client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
) -> None:
    _, bob_token = await register("bob")
    await register("carol")
    before = await events(runtime)
    headers = as_agent("carol", bob_token)
    assert_error(await client.get("/api/v1/tasks", headers=headers), 401, "token_mismatch")
    r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
    assert_error(r, 401, "token_mismatch")
    r = await client.post("/api/v1/agents/carol/heartbeat", headers=headers)
    assert_error(r, 401, "token_mismatch")
    r = await client.delete("/api/v1/agents/carol", headers=headers)
    assert_error(r, 401, "token_mismatch")
    assert await events(runtime) == before
    assert await runtime.store.get_agent("carol") is not None
    # The token still works for its own agent.
    r = await client.get("/api/v1/tasks", headers=as_agent("bob", bob_token))
    assert r.status_code == 200, r.text


async def test_token_of_a_deregistered_agent_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str], register: Callable[..., Any]
) -> None:
    _, token = await register("bob")
    assert (await client.delete("/api/v1/agents/bob", headers=admin)).status_code == 200
    r = await client.get("/api/v1/tasks", headers=as_agent("bob", token))
    assert_error(r, 401, "invalid_token")


# --- admin-only routes ------------------------------------------------------------------


async def test_admin_only_routes_refuse_agents(
    client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
) -> None:
    """An agent known by its token is not allowed (403); a caller without a token, or with a
    wrong one, has not said who it is (401 and a Bearer challenge)."""
    _, token = await register("bob")
    before = await events(runtime)
    cases = [
        (as_agent("bob", token), 403, "admin_required"),
        (as_agent("bob"), 401, "admin_token_required"),
        (as_agent("alice"), 401, "admin_token_required"),
        (as_agent("alice", "not-the-admin-token"), 401, "invalid_token"),
        (as_agent("bob", "not-the-admin-token"), 401, "invalid_token"),
    ]
    for headers, status, code in cases:
        for method, path in (
            ("GET", "/api/v1/agents"),
            ("POST", "/api/v1/agents/bob/drain"),
            ("POST", "/api/v1/agents/bob/undrain"),
        ):
            r = await client.request(method, path, headers=headers)
            assert_error(r, status, code)
            if status == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
            else:
                assert "www-authenticate" not in r.headers
    assert await events(runtime) == before
    agent = await runtime.store.get_agent("bob")
    assert agent is not None and not agent.drained


async def test_admin_only_routes_admit_the_admin(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    register: Callable[..., Any],
) -> None:
    await register("bob")
    r = await client.get("/api/v1/agents", headers=admin)
    assert r.status_code == 200, r.text
    assert [a["id"] for a in r.json()["items"]] == ["bob"]
    r = await client.post("/api/v1/agents/bob/drain", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["draining"] is True
    r = await client.post("/api/v1/agents/bob/undrain", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["draining"] is False
    types = [t for _, t in await events(runtime)]
    assert types[-2:] == ["agent.drained", "agent.undrained"]


# --- registration and the agent token -------------------------------------------------


async def test_registration_returns_the_token_once(
    client: httpx.AsyncClient, runtime: Runtime, admin: dict[str, str]
) -> None:
    r = await client.post("/api/v1/agents", json={"capabilities": ["code"]}, headers=as_agent("d"))
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert isinstance(token, str) and len(token) >= 32
    r = await client.post("/api/v1/agents", json={"capabilities": ["py"]}, headers=as_agent("d"))
    assert r.status_code == 200, r.text
    assert r.json().get("token") is None
    assert r.json()["agent"]["capabilities"] == {"py": 1.0}
    r = await client.post("/api/v1/agents", json={"id": "d", "description": "x"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json().get("token") is None
    # Not rotated by the updates, and never shown again.
    r = await client.get("/api/v1/agents/d", headers=as_agent("d", token))
    assert r.status_code == 200, r.text
    assert token not in r.text and "token" not in r.json()
    r = await client.get("/api/v1/agents", headers=admin)
    assert token not in r.text and "token_hash" not in r.text


async def test_stored_token_is_a_sha256_hash(
    runtime: Runtime, register: Callable[..., Any]
) -> None:
    _, token = await register("bob")
    _, other = await register("carol")
    agent = await runtime.store.get_agent("bob")
    assert agent is not None and agent.token_hash is not None
    assert agent.token_hash != token
    assert token not in agent.token_hash
    assert agent.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token != other


async def test_admin_token_is_compared_in_constant_time(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def as_bytes(value: Any) -> bytes:
        return value.encode() if isinstance(value, str) else bytes(value)

    def spy(a: Any, b: Any) -> bool:
        compared.append((as_bytes(a), as_bytes(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    wrong = "not-the-admin-token-at-all"
    r = await client.get("/api/v1/agents", headers={"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 401
    r = await client.get("/api/v1/agents", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200
    admin = ADMIN_TOKEN.encode()
    assert {pair for pair in compared if admin in pair} >= {
        (wrong.encode(), admin),
        (admin, admin),
    }, compared


# --- tokens required ----------------------------------------------------------------


class TestTokensRequired:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"auth": {"agent_tokens": "required"}}

    async def register(
        self, client: httpx.AsyncClient, admin: dict[str, str], agent_id: str
    ) -> str:
        body = {"id": agent_id, "capabilities": ["code"]}
        r = await client.post("/api/v1/agents", json=body, headers=admin)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/api/v1/tasks", None),
            ("POST", "/api/v1/tasks", {"title": "t"}),
            ("POST", "/api/v1/tasks/batch", {"tasks": [{"title": "t"}]}),
            ("POST", "/api/v1/agents", {"capabilities": ["code"]}),
            ("GET", "/api/v1/agents/w1", None),
            ("POST", "/api/v1/agents/w1/heartbeat", None),
        ],
    )
    async def test_a_request_without_token_is_401(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        admin: dict[str, str],
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        await self.register(client, admin, "w1")
        before = await events(runtime)
        for agent_id in ("w1", "alice"):
            r = await client.request(method, path, json=body, headers=as_agent(agent_id))
            assert_error(r, 401, "token_required")
        assert await events(runtime) == before
        assert await runtime.store.get_agent("alice") is None

    async def test_own_token_is_accepted(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        token = await self.register(client, admin, "w1")
        headers = as_agent("w1", token)
        assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200
        r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json()["requester"] == "w1"
        r = await client.post("/api/v1/agents/w1/heartbeat", headers=headers)
        assert r.status_code == 200, r.text
        r = await client.post("/api/v1/agents", json={"description": "me"}, headers=headers)
        assert r.status_code == 200, r.text

    async def test_token_for_another_agent_id_is_401(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: dict[str, str]
    ) -> None:
        token = await self.register(client, admin, "w1")
        await self.register(client, admin, "w2")
        before = await events(runtime)
        r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=as_agent("w2", token))
        assert_error(r, 401, "token_mismatch")
        r = await client.get("/api/v1/tasks", headers=as_agent("w1", "made-up-token"))
        assert_error(r, 401, "invalid_token")
        assert await events(runtime) == before

    async def test_admin_token_works_for_any_agent_id(self, client: httpx.AsyncClient) -> None:
        for agent_id in ("anyone", "ops-bot"):
            headers = as_agent(agent_id, ADMIN_TOKEN)
            r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
            assert r.status_code == 201, r.text
            assert r.json()["requester"] == agent_id
            assert (await client.get("/api/v1/agents", headers=headers)).status_code == 200


# --- who may act on a task ------------------------------------------------------------

WORKER_ACTIONS: list[tuple[str, dict[str, Any] | None]] = [
    ("start", None),
    ("progress", {"message": "halfway", "percent": 50}),
    ("complete", {"result": {"ok": True}}),
    ("fail", {"error": "boom", "retryable": False}),
    ("input-request", {"question": "which branch?"}),
]


async def test_only_the_assignee_may_work_the_task(
    client: httpx.AsyncClient, runtime: Runtime, register: Callable[..., Any]
) -> None:
    await register("w1")
    _, w2_token = await register("w2")
    task = await create_task(client, assigned_to="w1")
    assert task["assignee"] == "w1"
    for state in ("assigned", "running"):
        before = await snapshot(client, runtime, task["id"])
        assert before[0]["status"] == state
        for action, body in WORKER_ACTIONS:
            for headers in (as_agent("w2"), as_agent("w2", w2_token), as_agent("alice")):
                r = await client.post(
                    f"/api/v1/tasks/{task['id']}/{action}", json=body, headers=headers
                )
                err = assert_error(r, 403, "not_assignee")
                assert err["details"]["task_id"] == task["id"]
        assert await snapshot(client, runtime, task["id"]) == before
        r = await client.post(f"/api/v1/tasks/{task['id']}/start", headers=as_agent("w1"))
        if state == "assigned":
            assert r.status_code == 200, r.text
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/complete", json={"result": 1}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text


async def test_only_the_requester_or_an_admin_may_cancel(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    register: Callable[..., Any],
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    url = f"/api/v1/tasks/{task['id']}"
    before = await snapshot(client, runtime, task["id"])
    for headers in (as_agent("bob"), as_agent("w1")):
        r = await client.patch(url, json={"status": "cancelled"}, headers=headers)
        assert_error(r, 403, "not_requester")
        r = await client.patch(url, json={"priority": "critical"}, headers=headers)
        assert_error(r, 403, "not_requester")
    r = await client.patch(url, json={"context": {"x": 1}}, headers=as_agent("bob"))
    assert_error(r, 403, "not_requester")
    assert await snapshot(client, runtime, task["id"]) == before
    r = await client.patch(url, json={"status": "cancelled", "reason": "ops"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"

    own = await create_task(client)
    r = await client.patch(f"/api/v1/tasks/{own['id']}", json={"status": "cancelled"})
    assert r.status_code == 200, r.text


async def test_only_the_requester_or_an_admin_may_retry(
    client: httpx.AsyncClient, runtime: Runtime, admin: dict[str, str]
) -> None:
    task = await create_task(client)
    url = f"/api/v1/tasks/{task['id']}"
    assert (await client.patch(url, json={"status": "cancelled"})).status_code == 200
    before = await snapshot(client, runtime, task["id"])
    r = await client.post(f"{url}/retry", headers=as_agent("bob"))
    assert_error(r, 403, "not_requester")
    assert await snapshot(client, runtime, task["id"]) == before
    r = await client.post(f"{url}/retry", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    assert (await client.patch(url, json={"status": "cancelled"})).status_code == 200
    r = await client.post(f"{url}/retry")
    assert r.status_code == 200, r.text


# --- who may act on an agent ----------------------------------------------------------


async def test_only_the_agent_itself_or_an_admin_may_change_it(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    register: Callable[..., Any],
) -> None:
    _, bob_token = await register("bob")
    await register("carol")
    carol = await runtime.store.get_agent("carol")
    before = await events(runtime)
    for headers in (as_agent("bob"), as_agent("bob", bob_token)):
        r = await client.post("/api/v1/agents/carol/heartbeat", json={}, headers=headers)
        assert_error(r, 403, "not_self")
        r = await client.patch(
            "/api/v1/agents/carol", json={"capabilities": ["evil"]}, headers=headers
        )
        assert_error(r, 403, "not_self")
        r = await client.delete("/api/v1/agents/carol", headers=headers)
        assert_error(r, 403, "not_self")
    assert await runtime.store.get_agent("carol") == carol
    assert await events(runtime) == before

    r = await client.post("/api/v1/agents/carol/heartbeat", json={"status": "busy"}, headers=admin)
    assert r.status_code == 200, r.text
    r = await client.patch("/api/v1/agents/carol", json={"description": "ok"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "ok"
    r = await client.delete("/api/v1/agents/carol", headers=admin)
    assert r.status_code == 200, r.text
    assert await runtime.store.get_agent("carol") is None


async def test_registering_another_agent_id_needs_admin(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    register: Callable[..., Any],
) -> None:
    _, bob_token = await register("bob")
    await register("carol", capabilities=("code",))
    carol = await runtime.store.get_agent("carol")
    before = await events(runtime)
    for headers in (as_agent("bob"), as_agent("bob", bob_token)):
        r = await client.post("/api/v1/agents", json={"id": "eve"}, headers=headers)
        assert_error(r, 403, "not_self")
        r = await client.post(
            "/api/v1/agents", json={"id": "carol", "capabilities": ["evil"]}, headers=headers
        )
        assert_error(r, 403, "not_self")
    assert await runtime.store.get_agent("eve") is None
    assert await runtime.store.get_agent("carol") == carol
    assert await events(runtime) == before
    r = await client.post("/api/v1/agents", json={"id": "eve"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["agent"]["id"] == "eve" and r.json()["token"]


# --- stale workers --------------------------------------------------------------------


async def test_previous_assignee_gets_409_stale_attempt(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    register: Callable[..., Any],
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    url = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{url}/start", headers=as_agent("w1"))).status_code == 200
    r = await client.delete("/api/v1/agents/w1", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["requeued"] == [task["id"]]

    # w1 is gone and no other agent is registered: the task waits, held by nobody.
    before = await snapshot(client, runtime, task["id"])
    assert before[0]["status"] == "pending" and before[0]["assignee"] is None
    for action, body in WORKER_ACTIONS:
        r = await client.post(f"{url}/{action}", json=body, headers=as_agent("w1"))
        err = assert_error(r, 409, "stale_attempt")
        assert err["details"]["task_id"] == task["id"]
    assert await snapshot(client, runtime, task["id"]) == before


async def test_stale_attempt_number_gets_409(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    register: Callable[..., Any],
) -> None:
    await register("w1")
    task = await create_task(client, assigned_to="w1")
    url = f"/api/v1/tasks/{task['id']}"
    assert task["attempt"] == 1
    r = await client.post(f"{url}/start", json={"attempt": 2}, headers=as_agent("w1"))
    assert_error(r, 409, "stale_attempt")

    # The same worker gets the task again under attempt 2 (pushed to it as soon as it
    # is back); its old loop still says 1.
    assert (await client.delete("/api/v1/agents/w1", headers=admin)).status_code == 200
    await register("w1")
    again = await settled(runtime, task["id"], lambda t: t.status is TaskStatus.ASSIGNED)
    assert again.attempt == 2 and again.assignee == "w1"

    before = await snapshot(client, runtime, task["id"])
    for action, body in WORKER_ACTIONS:
        r = await client.post(
            f"{url}/{action}", json={**(body or {}), "attempt": 1}, headers=as_agent("w1")
        )
        err = assert_error(r, 409, "stale_attempt")
        assert err["details"]["current_attempt"] == 2
    assert await snapshot(client, runtime, task["id"]) == before

    r = await client.post(
        f"{url}/complete", json={"result": "done", "attempt": 2}, headers=as_agent("w1")
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
