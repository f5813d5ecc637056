"""The hot routes (`dispatchd.api.hot`) answer exactly as FastAPI answers the same route:
every request here goes to an app with the hot path and to one without it, over one
runtime, and the two answers must be the same (ids and times of records made by the
request aside)."""

from __future__ import annotations

import re
import types
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from dispatchd.api import hot
from dispatchd.api.app import HOT_ENDPOINTS, create_app
from dispatchd.api.hot import HotRoutes, NotHot, hot_route
from dispatchd.api.routes import tasks
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent

BASE = "http://dispatchd.test"
API = "/api/v1"
# Ids this server makes (26 characters, lower-case Crockford) and RFC 3339 times.
_MADE = re.compile(r"\b[0-9a-hjkmnp-tv-z]{26}\b|\b\d{4}-\d\d-\d\dT[\d:.]+Z")


def _same_shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _same_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_shape(v) for v in value]
    if isinstance(value, str):
        return _MADE.sub("<made>", value)
    return value


@pytest.fixture
async def pair(runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    hot = create_app(runtime=runtime)
    plain = create_app(runtime=runtime, hot_routes=False)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=hot), base_url=BASE) as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url=BASE) as b,
    ):
        yield a, b


async def both(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    json: Any = None,
) -> httpx.Response:
    """The request sent to both apps; their answers compared; the hot one returned."""
    answers = [
        await c.request(method, path, headers=headers, content=content, json=json) for c in pair
    ]
    hot, plain = answers
    assert hot.status_code == plain.status_code, (hot.text, plain.text)
    assert hot.headers.get("content-type") == plain.headers.get("content-type")
    assert _same_shape(hot.json()) == _same_shape(plain.json())
    return hot


def test_the_hot_endpoints_are_all_served_hot() -> None:
    # Every endpoint named hot passes the check (create_app would refuse it otherwise),
    # and the app's middleware holds one hot route for each.
    routes = [r for r in tasks.router.routes if isinstance(r, APIRoute)]
    named = {r.endpoint for r in routes if r.endpoint in HOT_ENDPOINTS}
    assert len(named) == len(HOT_ENDPOINTS) - 1  # the heartbeat is an agents route
    for route in routes:
        if route.endpoint in HOT_ENDPOINTS:
            assert hot_route(route).route is route


def test_a_route_with_parameters_it_cannot_build_is_refused() -> None:
    by_name = {r.name: r for r in tasks.router.routes if isinstance(r, APIRoute)}
    with pytest.raises(NotHot, match="header parameters, a Response parameter"):
        hot_route(by_name["create_task"])  # Idempotency-Key, and the status set on Response
    with pytest.raises(NotHot, match="query parameters"):
        hot_route(by_name["list_tasks"])
    with pytest.raises(NotHot):
        HotRoutes(lambda *a: None, routes=[by_name["queue_claim"]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"null",
        b"{}",
        b'{"max_tasks": 2, "wait_s": 0}',
        b'{"max_tasks": "x"}',
        b'{"max_tasks": 0}',
        b'{"bogus": 1}',
        b"[]",
        b'"text"',
    ],
)
async def test_claim_bodies(pair: Any, register: Any, body: bytes | None) -> None:
    await register("alice")
    headers = {**as_agent("alice"), "Content-Type": "application/json"}
    await both(pair, "POST", f"{API}/tasks/claim", headers=headers, content=body)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/vnd.dispatchd+json", "application/json; charset=utf-8"],
)
async def test_content_types(pair: Any, register: Any, content_type: str | None) -> None:
    await register("alice")
    headers = as_agent("alice")
    if content_type is not None:
        headers["Content-Type"] = content_type
    await both(pair, "POST", f"{API}/tasks/claim", headers=headers, content=b'{"max_tasks": 1}')


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Agent-ID": "bad id"},
        {"X-Agent-ID": "alice", "Authorization": "Basic abc"},
        {"X-Agent-ID": "alice", "Authorization": "Bearer wrong"},
        {"X-Agent-ID": "nobody"},
    ],
)
async def test_callers(pair: Any, register: Any, headers: dict[str, str]) -> None:
    await register("alice")
    await both(pair, "POST", f"{API}/tasks/claim", headers=headers, json={})


async def test_a_task_through_its_lifecycle(pair: Any, register: Any) -> None:
    hot, _ = pair
    await register("alice")
    alice = as_agent("alice")
    for _ in range(2):  # one task for each app
        body = {"title": "twin", "capabilities": ["code"]}
        made = await hot.post(f"{API}/tasks", headers=alice, json=body)
        assert made.status_code == 201, made.text
    # Each app claims, starts, reports, completes its own task: the same answers.
    claimed = [
        (await c.post(f"{API}/tasks/claim", headers=alice, json={"max_tasks": 1})).json()
        for c in pair
    ]
    assert _same_shape(claimed[0]) == _same_shape(claimed[1])
    ids = [c["tasks"][0]["id"] for c in claimed]
    steps: list[tuple[str, Any]] = [
        ("start", {}),
        ("progress", {"message": "half", "percent": 50}),
        ("progress", None),
        ("progress", {"percent": 500}),
        ("complete", {"result": {"ok": True}, "attempt": "x"}),
        ("complete", {"result": {"ok": True}, "summary": "done"}),
        ("complete", {}),
        ("fail", {}),
    ]
    for step, body in steps:
        answers = [
            await c.post(f"{API}/tasks/{task_id}/{step}", headers=alice, json=body)
            for c, task_id in zip(pair, ids, strict=True)
        ]
        assert answers[0].status_code == answers[1].status_code, (step, answers[0].text)
        assert _same_shape(answers[0].json()) == _same_shape(answers[1].json()), step


async def test_unknown_tasks_and_agents(pair: Any, register: Any) -> None:
    await register("alice")
    alice = as_agent("alice")
    for step, body in [("complete", {}), ("fail", {"error": "x"}), ("start", None)]:
        await both(pair, "POST", f"{API}/tasks/nope/{step}", headers=alice, json=body)
    await both(pair, "POST", f"{API}/agents/nobody/heartbeat", headers=alice, json={})
    await both(pair, "POST", f"{API}/agents/alice/heartbeat", headers=alice, json={"status": "x"})
    await both(pair, "POST", f"{API}/agents/alice/heartbeat", headers=alice)


async def test_batches(pair: Any, register: Any) -> None:
    await register("alice")
    alice = as_agent("alice")
    await both(pair, "POST", f"{API}/tasks/batch", headers=alice, json={"tasks": []})
    await both(pair, "POST", f"{API}/tasks/batch", headers=alice, json={"tasks": [{"title": ""}]})
    # Tasks no agent can take: the first app's answer must not depend on whether the
    # placer already knows alice (then it would hand her the tasks the second app's
    # answer then finds taken).
    tasks = [{"title": "a", "capabilities": ["nobody-has-this"]}] * 3
    made = await both(pair, "POST", f"{API}/tasks/batch", headers=alice, json={"tasks": tasks})
    assert len(made.json()["items"]) == 3
    items = [{"task_id": "nope"}, {"task_id": made.json()["items"][0]["id"]}]
    await both(pair, "POST", f"{API}/tasks/batch/complete", headers=alice, json={"items": items})
    await both(pair, "POST", f"{API}/tasks/batch/complete", headers=alice, json={"items": "x"})


async def test_other_methods_on_a_hot_path_reach_fastapi(pair: Any, register: Any) -> None:
    await register("alice")
    answer = await both(pair, "GET", f"{API}/tasks/claim", headers=as_agent("alice"))
    assert answer.status_code in (404, 405)


async def test_a_hot_request_is_counted_under_its_route(
    pair: Any, register: Any, runtime: Runtime
) -> None:
    await register("alice")
    hot, _ = pair
    await hot.post(f"{API}/tasks/claim", headers=as_agent("alice"), json={})
    text = runtime.metrics.render().decode()
    assert 'route="/api/v1/tasks/claim"' in text


async def test_a_hot_route_takes_the_body_the_guard_parsed(
    pair: Any, register: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body guard parses every JSON body (strictly) before any route: a hot route
    takes that document instead of parsing the same bytes again."""
    await register("alice")
    hot_app, _ = pair

    def no_second_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the hot route parsed the body again")

    # The hot module's own `json`, not the module the guard parses with.
    monkeypatch.setattr(hot, "json", types.SimpleNamespace(loads=no_second_parse))
    made = await hot_app.post(
        f"{API}/tasks/batch", headers=as_agent("alice"), json={"tasks": [{"title": "a"}] * 2}
    )
    assert made.status_code == 201, made.text
    assert [item["title"] for item in made.json()["items"]] == ["a", "a"]
