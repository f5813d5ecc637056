"""Rooms (SPEC §4 Rooms; docs/rooms.md): the rooms, their derived status, work dispatched
into them (and only to their agents), their history and their interruption."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, as_agent, make_settings
from tests.api.helpers import (
    BOTH,
    act,
    assert_error,
    create_task,
    detail,
    eventually,
    explain,
    track,
    ts,
    wait_assigned,
)

Register = Callable[..., Any]


async def make_room(
    client: httpx.AsyncClient, admin: dict[str, str], room_id: str = "infra", **body: Any
) -> dict[str, Any]:
    r = await client.post("/api/v1/rooms", json={"id": room_id, **body}, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def room(client: httpx.AsyncClient, room_id: str = "infra") -> dict[str, Any]:
    r = await client.get(f"/api/v1/rooms/{room_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def dispatch(
    client: httpx.AsyncClient, room_id: str = "infra", **body: Any
) -> dict[str, Any]:
    body.setdefault("prompt", "Check disk usage")
    r = await client.post(f"/api/v1/rooms/{room_id}/dispatch", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def all_events(client: httpx.AsyncClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/events", params={"after": "0"}, headers=admin)
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


# --- the rooms ----------------------------------------------------------------------------


@BOTH
async def test_create_read_list_change_remove(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    made = await make_room(client, admin, "infra", name="#infra", workspace="~/ops/servers")
    assert made["id"] == "infra" and made["name"] == "#infra"
    assert made["workspace"] == "~/ops/servers"
    assert made["agents"] == [] and made["current_task"] is None and made["pending"] == 0
    # No agent lives there yet.
    assert made["agent_status"] == "error"
    assert made["status_reason"] == "no agent in the room"
    ts(made["last_activity_at"])
    bare = await make_room(client, admin, "gorp-rs")
    assert bare["name"] == "#gorp-rs" and bare["workspace"] is None
    assert await room(client, "infra") == made

    for i in range(3):
        await make_room(client, admin, f"z-{i}")
    r = await client.get("/api/v1/rooms", params={"limit": 2})
    assert r.status_code == 200
    page = r.json()
    assert set(page) == {"items", "next_cursor"}
    seen = [x["id"] for x in page["items"]]
    while page["next_cursor"]:
        r = await client.get("/api/v1/rooms", params={"limit": 2, "cursor": page["next_cursor"]})
        page = r.json()
        seen += [x["id"] for x in page["items"]]
    assert seen == ["gorp-rs", "infra", "z-0", "z-1", "z-2"]

    r = await client.patch(
        "/api/v1/rooms/infra", json={"name": "#ops", "workspace": None}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "#ops" and r.json()["workspace"] is None
    assert (await room(client))["name"] == "#ops"
    # The same again changes nothing and logs nothing.
    r = await client.patch("/api/v1/rooms/infra", json={"name": "#ops"}, headers=admin)
    assert r.status_code == 200 and r.json()["updated_at"] == (await room(client))["updated_at"]

    r = await client.delete("/api/v1/rooms/infra", headers=admin)
    assert r.status_code == 200 and r.json() == {"id": "infra"}
    assert_error(await client.get("/api/v1/rooms/infra"), 404, "not_found")

    types = [(e["type"], e["data"].get("room")) for e in await all_events(client, admin)]
    assert types.count(("room.updated", "infra")) == 1
    assert ("room.created", "infra") in types
    assert ("room.updated", "infra") in types
    assert ("room.removed", "infra") in types
    updated = next(e for e in await all_events(client, admin) if e["type"] == "room.updated")
    assert updated["data"]["fields"] == ["name", "workspace"]


async def test_writes_are_for_the_admin(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    # Without a token: 401, asked for the admin token.
    no_token = "admin_token_required"
    assert_error(await client.post("/api/v1/rooms", json={"id": "infra"}), 401, no_token)
    await make_room(client, admin)
    assert_error(await client.patch("/api/v1/rooms/infra", json={"name": "#x"}), 401, no_token)
    assert_error(await client.delete("/api/v1/rooms/infra"), 401, no_token)
    assert_error(await client.post("/api/v1/rooms/infra/interrupt", json={}), 401, no_token)
    # Reading and dispatching are for everyone.
    assert (await room(client))["name"] == "#infra"
    assert (await dispatch(client))["requester"] == "alice"


async def test_duplicate_and_bad_ids(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await make_room(client, admin)
    err = assert_error(
        await client.post("/api/v1/rooms", json={"id": "infra", "name": "#x"}, headers=admin),
        409,
        None,
    )
    assert err["details"].get("field") == "id"
    assert (await room(client))["name"] == "#infra"
    for bad in ("Infra", "-infra", "in fra", "infra/x", "", "a" * 65, "é"):
        r = await client.post("/api/v1/rooms", json={"id": bad}, headers=admin)
        assert_error(r, 422, None)
        assert "id" in r.text
    for body in ({"id": "x", "name": ""}, {"id": "x", "colour": "red"}, {"name": "#x"}):
        assert_error(await client.post("/api/v1/rooms", json=body, headers=admin), 422, None)
    r = await client.patch("/api/v1/rooms/infra", json={"name": None}, headers=admin)
    assert_error(r, 422, None)
    r = await client.get("/api/v1/rooms")
    assert [x["id"] for x in r.json()["items"]] == ["infra"]


async def test_unknown_room_is_404_everywhere(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    before = await runtime.store.last_event_id()
    calls = [
        client.get("/api/v1/rooms/nope"),
        client.patch("/api/v1/rooms/nope", json={"name": "#x"}, headers=admin),
        client.delete("/api/v1/rooms/nope", headers=admin),
        client.post("/api/v1/rooms/nope/dispatch", json={"prompt": "do it"}),
        client.get("/api/v1/rooms/nope/history"),
        client.post("/api/v1/rooms/nope/interrupt", json={}, headers=admin),
    ]
    for call in calls:
        err = assert_error(await call, 404, "not_found")
        assert err["details"]["room"] == "nope"
    # Nothing written: no task, no event.
    r = await client.get("/api/v1/tasks")
    assert r.json()["items"] == []
    assert await runtime.store.last_event_id() == before


async def test_remove_refuses_a_room_with_unfinished_work(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_room(client, admin)
    task = await dispatch(client)
    err = assert_error(await client.delete("/api/v1/rooms/infra", headers=admin), 409, "room_busy")
    assert err["details"]["unfinished"] == 1
    assert (await room(client))["pending"] == 1
    r = await client.patch(f"/api/v1/tasks/{task['id']}", json={"status": "cancelled"})
    assert r.status_code == 200, r.text
    r = await client.delete("/api/v1/rooms/infra", headers=admin)
    assert r.status_code == 200, r.text


# --- work in a room -------------------------------------------------------------------------


async def test_dispatch_creates_a_task_of_the_room(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_room(client, admin)
    parent = await create_task(client)
    task = await dispatch(
        client,
        prompt="  Check disk usage on every host  \nthen report the fullest.",
        priority="high",
        depends_on=[parent["id"]],
        capabilities=["ops"],
        context={"hosts": 3},
    )
    assert task["scope"] == "infra"
    assert task["title"] == "Check disk usage on every host"
    assert task["prompt"].startswith("  Check disk usage")
    assert task["priority"] == "high" and task["capabilities"] == ["ops"]
    assert task["depends_on"] == [parent["id"]] and task["status"] == "blocked"
    assert task["context"] == {"hosts": 3}
    named = await dispatch(client, prompt="x" * 600 + "\nmore", title="Short title")
    assert named["title"] == "Short title"
    long = await dispatch(client, prompt="y" * 600)
    assert long["title"] == "y" * 500
    r = await client.get("/api/v1/tasks", params={"scope": "infra"})
    assert {t["id"] for t in r.json()["items"]} == {task["id"], named["id"], long["id"]}


async def test_dispatch_with_a_bad_body_is_422_naming_the_field(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_room(client, admin)
    cases = [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n "}, "prompt"),
        ({"prompt": 7}, "prompt"),
        ({"prompt": "x", "priority": "urgent"}, "priority"),
        ({"prompt": "x", "depends_on": "abc"}, "depends_on"),
        ({"prompt": "x", "capabilities": ["a b"]}, "capabilities"),
        ({"prompt": "x", "context": []}, "context"),
        ({"prompt": "x", "title": ""}, "title"),
        ({"prompt": "x", "scope": "other"}, "scope"),
    ]
    for body, field in cases:
        r = await client.post("/api/v1/rooms/infra/dispatch", json=body)
        err = assert_error(r, 422, None)
        locs = [e["loc"] for e in err["details"]["errors"]]
        assert any(field in loc for loc in locs), (body, locs)
    r = await client.post("/api/v1/rooms/infra/dispatch", json={"prompt": "x", "depends_on": ["n"]})
    assert_error(r, 422, "unknown_dependency")
    r = await client.get("/api/v1/tasks")
    assert r.json()["items"] == []


@BOTH
async def test_a_room_task_goes_only_to_the_rooms_agents(
    client: httpx.AsyncClient, admin: dict[str, str], register: Register, runtime: Runtime
) -> None:
    settle = track(runtime)
    await make_room(client, admin)
    await register("outsider", ("ops",))
    await register("elsewhere", ("ops",), room="research")
    task = await dispatch(client, capabilities=["ops"])
    await settle()
    assert (await detail(client, task["id"]))["status"] == "pending"
    why = await explain(client, task["id"])
    assert why["waiting"] == "no agent in room infra"
    excluded = {e["agent_id"]: e["reason"] for e in why["excluded"]}
    assert excluded == {"outsider": "not_in_room", "elsewhere": "not_in_room"}
    # Pulling: an agent outside the room claims nothing of it.
    r = await client.post("/api/v1/tasks/claim", json={}, headers=as_agent("outsider"))
    assert r.status_code == 200 and r.json()["tasks"] == []
    # An agent of the room without the capability may not take it either.
    await register("infra-docs", ("docs",), room="infra")
    await settle()
    assert (await detail(client, task["id"]))["status"] == "pending"
    why = await explain(client, task["id"])
    assert why["waiting"] == "no agent in room infra can take it now: see excluded"
    # An agent joining the room by PATCH gets it.
    r = await client.patch(
        "/api/v1/agents/elsewhere", json={"room": "infra"}, headers=as_agent("elsewhere")
    )
    assert r.status_code == 200, r.text
    await wait_assigned(client, task["id"], "elsewhere")
    # Unscoped work still goes to anyone capable, room agents included.
    plain = await create_task(client, capabilities=["ops"])
    await eventually(
        lambda: _assigned(client, plain["id"]), "the unscoped task to be assigned", limit_s=5
    )


async def _assigned(client: httpx.AsyncClient, task_id: str) -> bool:
    return (await detail(client, task_id))["status"] == "assigned"


@BOTH
async def test_claims_take_only_their_rooms_tasks(
    tmp_path: Path, database_url: str | None, admin: dict[str, str]
) -> None:
    """Pull alone (no assigner pushes): the claim's own query keeps to the agent's room."""
    settings = make_settings(tmp_path, database_url)
    async with Runtime.build(settings, background=False) as rt:
        transport = httpx.ASGITransport(app=app_for(rt))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dispatchd.test", headers=as_agent("alice")
        ) as client:
            await make_room(client, admin)
            for agent_id, extra in (("outsider", {}), ("insider", {"room": "infra"})):
                body = {"capabilities": ["code"], **extra}
                r = await client.post("/api/v1/agents", json=body, headers=as_agent(agent_id))
                assert r.status_code == 201, r.text
            task = await dispatch(client)
            plain = await create_task(client)
            r = await client.post(
                "/api/v1/tasks/claim", json={"max_tasks": 5}, headers=as_agent("outsider")
            )
            assert [t["id"] for t in r.json()["tasks"]] == [plain["id"]]
            r = await client.post(
                "/api/v1/tasks/claim", json={"max_tasks": 5}, headers=as_agent("insider")
            )
            assert [t["id"] for t in r.json()["tasks"]] == [task["id"]]


@BOTH
async def test_status_is_derived_from_agents_and_tasks(
    client: httpx.AsyncClient, admin: dict[str, str], register: Register, runtime: Runtime
) -> None:
    for room_id in ("infra", "research", "gorp-rs"):
        await make_room(client, admin, room_id)
    await register("infra-1", room="infra", max_concurrent=1)
    await register("research-1", room="research")
    await register("gorp-1", room="gorp-rs")

    rooms = {r["id"]: r for r in (await client.get("/api/v1/rooms")).json()["items"]}
    assert {k: v["agent_status"] for k, v in rooms.items()} == {
        "infra": "idle",
        "research": "idle",
        "gorp-rs": "idle",
    }
    assert rooms["infra"]["agents"] == ["infra-1"]

    work = await dispatch(client, "research", prompt="Summarize arxiv papers on RAG")
    await wait_assigned(client, work["id"], "research-1")
    await act(client, work["id"], "progress", "research-1", message="3/7 papers processed")
    ask = await dispatch(client, "infra", prompt="Restart nginx")
    await wait_assigned(client, ask["id"], "infra-1")
    await act(client, ask["id"], "start", "infra-1")
    question = "Should I proceed with the nginx restart?"
    await act(client, ask["id"], "input-request", "infra-1", question=question)
    queued = await dispatch(client, "infra", prompt="Then rotate the logs")

    research = await room(client, "research")
    assert research["agent_status"] == "working"
    current = research["current_task"]
    assert current["id"] == work["id"] and current["title"] == "Summarize arxiv papers on RAG"
    assert current["status"] == "running"
    assert current["progress"] == {"message": "3/7 papers processed", "percent": None}
    assert current["question"] is None
    infra = await room(client, "infra")
    assert infra["agent_status"] == "waiting_input"
    assert infra["current_task"]["id"] == ask["id"]
    assert infra["current_task"]["question"] == question
    assert infra["pending"] == 1
    assert ts(infra["last_activity_at"]) >= ts(queued["created_at"])

    # The answer arrives: working again; the agent completes: idle.
    r = await client.post(f"/api/v1/tasks/{ask['id']}/input", json={"answer": "yes, proceed"})
    assert r.status_code == 200, r.text
    assert (await room(client, "infra"))["agent_status"] == "working"
    await act(client, ask["id"], "complete", "infra-1", result="restarted")
    await wait_assigned(client, queued["id"], "infra-1")
    await act(client, queued["id"], "complete", "infra-1", result="rotated")
    infra = await room(client, "infra")
    assert infra["agent_status"] == "idle" and infra["current_task"] is None
    assert infra["pending"] == 0

    # Its last task failed: error, until the next one completes.
    failing = await dispatch(client, "gorp-rs", prompt="Build the release")
    await wait_assigned(client, failing["id"], "gorp-1")
    await act(client, failing["id"], "fail", "gorp-1", error="linker crashed", retryable=False)
    gorp = await room(client, "gorp-rs")
    assert gorp["agent_status"] == "error" and "failed" in gorp["status_reason"]

    # No live agent: error.
    r = await client.delete("/api/v1/agents/research-1", headers=as_agent("research-1"))
    assert r.status_code == 200, r.text
    research = await room(client, "research")
    assert research["agents"] == []
    assert research["agent_status"] == "error"


# --- history and interruption ------------------------------------------------------------


@BOTH
async def test_interrupt_cancels_the_rooms_active_work(
    client: httpx.AsyncClient, admin: dict[str, str], register: Register, runtime: Runtime
) -> None:
    await make_room(client, admin)
    await make_room(client, admin, "research")
    await register("infra-1", max_concurrent=5, room="infra")
    await register("research-1", room="research")
    running = await dispatch(client, prompt="run")
    waiting = await dispatch(client, prompt="ask")
    assigned = await dispatch(client, prompt="assigned")
    for task in (running, waiting, assigned):
        await wait_assigned(client, task["id"], "infra-1")
    await act(client, running["id"], "start", "infra-1")
    await act(client, waiting["id"], "start", "infra-1")
    await act(client, waiting["id"], "input-request", "infra-1", question="go?")
    blocked = await dispatch(client, prompt="later", depends_on=[running["id"]])
    other = await dispatch(client, "research", prompt="elsewhere")
    await wait_assigned(client, other["id"], "research-1")

    r = await client.post(
        "/api/v1/rooms/infra/interrupt", json={"reason": "stop everything"}, headers=admin
    )
    assert r.status_code == 200, r.text
    cancelled = r.json()["cancelled"]
    assert sorted(cancelled) == sorted([running["id"], waiting["id"], assigned["id"]])
    for task_id in cancelled:
        got = await detail(client, task_id)
        assert got["status"] == "cancelled"
    # Work not in hands is not interrupted (the blocked child fails with its parent), nor
    # another room's.
    assert (await detail(client, blocked["id"]))["status"] == "failed"
    assert (await detail(client, other["id"]))["status"] == "assigned"
    events = await all_events(client, admin)
    interrupted = [e for e in events if e["type"] == "room.interrupted"]
    assert len(interrupted) == 1
    assert interrupted[0]["data"]["room"] == "infra"
    assert interrupted[0]["data"]["reason"] == "stop everything"
    assert sorted(interrupted[0]["data"]["cancelled"]) == sorted(cancelled)
    by_task = {e["task_id"]: e for e in events if e["type"] == "task.cancelled"}
    assert by_task[running["id"]]["data"]["reason"] == "stop everything"
    assert (await room(client))["agent_status"] == "idle"

    # Nothing running: 200, nothing cancelled, nothing written.
    before = await runtime.store.last_event_id()
    r = await client.post("/api/v1/rooms/infra/interrupt", headers=admin)
    assert r.status_code == 200 and r.json() == {"cancelled": []}
    assert await runtime.store.last_event_id() == before
    r = await client.post("/api/v1/rooms/infra/interrupt", json={"reason": 5}, headers=admin)
    assert_error(r, 422, None)


@BOTH
async def test_history_is_newest_first(
    client: httpx.AsyncClient, admin: dict[str, str], register: Register
) -> None:
    await make_room(client, admin)
    await register("infra-1", room="infra")
    first = await dispatch(client, prompt="first")
    await wait_assigned(client, first["id"], "infra-1")
    await act(client, first["id"], "complete", "infra-1", result={"ok": True}, summary="done")
    second = await dispatch(client, prompt="second")
    await wait_assigned(client, second["id"], "infra-1")
    await act(client, second["id"], "fail", "infra-1", error="boom", retryable=False)
    elsewhere = await create_task(client)

    r = await client.get("/api/v1/rooms/infra/history")
    assert r.status_code == 200, r.text
    history = r.json()
    assert set(history) == {"room", "tasks", "events"} and history["room"] == "infra"
    assert [t["id"] for t in history["tasks"]] == [second["id"], first["id"]]
    assert history["tasks"][1]["status"] == "completed"
    assert history["tasks"][1]["summary"] == "done"
    assert history["tasks"][1]["result"] == {"ok": True}
    assert history["tasks"][0]["status"] == "failed" and history["tasks"][0]["error"] == "boom"
    ids = [int(e["id"]) for e in history["events"]]
    assert ids == sorted(ids, reverse=True)
    assert history["events"][-1]["type"] == "room.created"
    assert {e["task_id"] for e in history["events"]} == {None, first["id"], second["id"]}
    assert elsewhere["id"] not in r.text

    r = await client.get("/api/v1/rooms/infra/history", params={"limit": 1})
    assert [t["id"] for t in r.json()["tasks"]] == [second["id"]]
    assert len(r.json()["events"]) == 1
    for bad in ("0", "501", "x"):
        r = await client.get("/api/v1/rooms/infra/history", params={"limit": bad})
        assert_error(r, 422, None)


async def test_openapi_shows_the_room_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/api/v1/rooms"]) >= {"get", "post"}
    assert set(paths["/api/v1/rooms/{room_id}"]) >= {"get", "patch", "delete"}
    for action in ("dispatch", "interrupt"):
        assert "post" in paths[f"/api/v1/rooms/{{room_id}}/{action}"]
    assert "get" in paths["/api/v1/rooms/{room_id}/history"]
    schemas = doc["components"]["schemas"]
    for name in ("RoomCreate", "RoomOut", "RoomList", "RoomDispatch", "RoomHistoryOut"):
        assert name in schemas
    assert set(schemas["RoomOut"]["properties"]) >= {
        "agent_status",
        "agents",
        "current_task",
        "last_activity_at",
        "pending",
    }
    dispatch_ok = paths["/api/v1/rooms/{room_id}/dispatch"]["post"]["responses"]["201"]
    assert dispatch_ok["content"]["application/json"]["schema"]["$ref"].endswith("/TaskOut")
