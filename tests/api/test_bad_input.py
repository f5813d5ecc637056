"""Bad input of every kind gets a 4xx in the error form, never a 5xx, and writes nothing.

SPEC §8 "Safe with bad input". Each test snapshots what the store holds (the tasks as the
API lists them, and the whole event log) and checks it is the same after the bad request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, as_agent, make_settings
from tests.api.helpers import BOTH, assert_error

pytestmark = BOTH

JSON = {"Content-Type": "application/json"}
MiB = 1024 * 1024

Unchanged = Callable[[], AbstractAsyncContextManager[None]]


def error_locs(err: dict[str, Any]) -> list[list[str]]:
    return [list(e["loc"]) for e in err["details"].get("errors", [])]


async def all_tasks(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url = "/api/v1/tasks?limit=500"
    for _ in range(1000):
        r = await client.get(url)
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        url = f"/api/v1/tasks?limit=500&cursor={page['next_cursor']}"
    raise AssertionError("pagination did not end")


async def state(client: httpx.AsyncClient, runtime: Runtime) -> tuple[Any, ...]:
    tasks = await all_tasks(client)
    events = await runtime.store.read_events(after=0, limit=10_000)
    return (tasks, [(e.id, e.type, e.task_id, e.agent_id) for e in events])


@pytest.fixture
def unchanged(client: httpx.AsyncClient, runtime: Runtime) -> Unchanged:
    """`async with unchanged():` fails if the block wrote a task or an event."""

    @asynccontextmanager
    async def check() -> AsyncIterator[None]:
        before = await state(client, runtime)
        yield
        after = await state(client, runtime)
        assert len(after[0]) == len(before[0]), "a task was written"
        assert len(after[1]) == len(before[1]), "an event was written"
        assert after == before

    return check


@pytest.fixture
async def seeded(client: httpx.AsyncClient, register: Callable[..., Any]) -> dict[str, Any]:
    """A registered worker holding one assigned task, so the store is not empty."""
    await register("worker-1")
    r = await client.post("/api/v1/tasks", json={"title": "seed", "assigned_to": "worker-1"})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "assigned"
    return dict(r.json())


async def post_raw(
    client: httpx.AsyncClient, body: bytes, url: str = "/api/v1/tasks", **headers: str
) -> httpx.Response:
    return await client.post(url, content=body, headers={**JSON, **headers})


# --- malformed and non-object bodies ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"title": ',
        b"{'title': 'single quotes'}",
        b'{"title": "trailing comma",}',
        b"not json at all",
        b'{"title": "a"} {"title": "b"}',
        b'{"title": "a"',
        b'{title: "unquoted key"}',
        b'{"title": "raw\x00nul"}',
        b'{"title": "raw\nnewline"}',
        b"[" * 100_000,
        b"/* comment */ {}",
    ],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged, body: bytes
) -> None:
    async with unchanged():
        assert_error(await post_raw(client, body), 400, "invalid_json")
        assert_error(
            await post_raw(
                client, body, f"/api/v1/tasks/{seeded['id']}/complete", **as_agent("worker-1")
            ),
            400,
            "invalid_json",
        )


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/tasks",
        "/api/v1/tasks/batch",
        "/api/v1/tasks/{id}/fail",
        "/api/v1/tasks/{id}/progress",
        "/api/v1/tasks/{id}/comments",
        "/api/v1/tasks/{id}/review",
        "/api/v1/agents",
    ],
)
async def test_empty_body_where_one_is_required(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged, url: str
) -> None:
    async with unchanged():
        r = await post_raw(client, b"", url.format(id=seeded["id"]), **as_agent("worker-1"))
        err = assert_error(r, 422, "validation_error")
        assert ["body"] in error_locs(err)


@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"a title"', b"42", b"true", b"null"])
async def test_body_that_is_not_an_object(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged, body: bytes
) -> None:
    async with unchanged():
        assert_error(await post_raw(client, body), 422, "validation_error")
        assert_error(await post_raw(client, body, "/api/v1/tasks/batch"), 422, "validation_error")
        assert_error(await post_raw(client, body, "/api/v1/agents"), 422, "validation_error")
        r = await client.request(
            "PATCH", f"/api/v1/tasks/{seeded['id']}", content=body, headers=JSON
        )
        assert_error(r, 422, "validation_error")


# --- wrong types and values for each task field ----------------------------------------

BAD_FIELDS: list[tuple[str, Any]] = [
    ("title", 1),
    ("title", None),
    ("title", ""),
    ("title", ["a"]),
    ("prompt", 5),
    ("prompt", {"text": "x"}),
    ("description", False),
    ("priority", "urgent"),
    ("priority", 3),
    ("priority", None),
    ("capabilities", "code"),
    ("capabilities", [1]),
    ("capabilities", ["has space"]),
    ("capabilities", ["a,b"]),
    ("capabilities", [""]),
    ("owner", "not an id"),
    ("owner", 7),
    ("scope", ""),
    ("assigned_to", ["worker-1"]),
    ("depends_on", "01abc"),
    ("depends_on", [1]),
    ("run_at", "2030-01-01T00:00:00"),
    ("run_at", "tomorrow"),
    ("run_at", "2030-13-45T00:00:00Z"),
    ("due_at", "2030-01-01 10:00"),
    ("timeout_s", -1),
    ("timeout_s", 0),
    ("timeout_s", 10**12),
    ("timeout_s", 10**30),
    ("timeout_s", 1.5),
    ("timeout_s", "soon"),
    ("max_attempts", 0),
    ("max_attempts", -3),
    ("max_attempts", 101),
    ("review", "maybe"),
    ("review", [True]),
    ("reviewer", ["a"]),
    ("escalate_to", "two words"),
    ("model", ""),
    ("labels", "bug"),
    ("labels", [None]),
    ("context", []),
    ("context", "text"),
    ("context", 3),
    ("context", None),
    ("idempotency_key", ""),
    ("idempotency_key", 12),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
async def test_task_field_of_wrong_type(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged, field: str, value: Any
) -> None:
    body = {"title": "t", field: value}
    async with unchanged():
        err = assert_error(await client.post("/api/v1/tasks", json=body), 422, "validation_error")
        assert any(field in loc for loc in error_locs(err)), err
        assert field in err["message"], err
        batch = {"tasks": [{"title": "fine"}, body]}
        err = assert_error(
            await client.post("/api/v1/tasks/batch", json=batch), 422, "validation_error"
        )
        assert any(loc[:4] == ["body", "tasks", "1", field] for loc in error_locs(err)), err


async def test_missing_title(client: httpx.AsyncClient, unchanged: Unchanged) -> None:
    async with unchanged():
        err = assert_error(await client.post("/api/v1/tasks", json={}), 422, "validation_error")
        assert ["body", "title"] in error_locs(err)


async def test_unknown_dependency(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged
) -> None:
    async with unchanged():
        r = await client.post(
            "/api/v1/tasks", json={"title": "t", "depends_on": [seeded["id"], "01nosuchtask"]}
        )
        err = assert_error(r, 422, "unknown_dependency")
        assert err["details"]["missing"] == ["01nosuchtask"]


async def test_idempotency_header_and_field_disagree(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    async with unchanged():
        r = await client.post(
            "/api/v1/tasks",
            json={"title": "t", "idempotency_key": "one"},
            headers={"Idempotency-Key": "two"},
        )
        assert_error(r, 422, "idempotency_key_mismatch")


# --- unknown fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/tasks", {"title": "t", "bogus": 1}),
        ("/api/v1/tasks", {"title": "t", "status": "completed"}),
        ("/api/v1/tasks", {"title": "t", "requester": "someone-else"}),
        ("/api/v1/tasks/batch", {"tasks": [{"title": "t", "bogus": 1}]}),
        ("/api/v1/tasks/batch", {"tasks": [{"title": "t"}], "bogus": 1}),
        ("/api/v1/agents", {"capabilities": ["code"], "bogus": 1}),
        ("/api/v1/agents", {"capabilities": ["code"], "token_hash": "x"}),
        ("/api/v1/agents", {"capabilities": ["code"], "drained": True}),
        ("/api/v1/tasks/{id}/progress", {"message": "m", "bogus": 1}),
        ("/api/v1/tasks/{id}/complete", {"result": 1, "bogus": 1}),
        ("/api/v1/tasks/{id}/fail", {"error": "e", "bogus": 1}),
        ("/api/v1/agents/worker-1/heartbeat", {"status": "ready", "bogus": 1}),
    ],
)
async def test_unknown_fields_are_refused(
    client: httpx.AsyncClient,
    runtime: Runtime,
    seeded: dict[str, Any],
    unchanged: Unchanged,
    url: str,
    body: dict[str, Any],
) -> None:
    async with unchanged():
        r = await client.post(url.format(id=seeded["id"]), json=body, headers=as_agent("worker-1"))
        err = assert_error(r, 422, "validation_error")
        assert any(e["type"] == "extra_forbidden" for e in err["details"]["errors"]), err
    assert (await runtime.store.get_agent("worker-1")) is not None


async def test_unknown_field_in_agent_register_creates_no_agent(
    client: httpx.AsyncClient, runtime: Runtime, unchanged: Unchanged
) -> None:
    async with unchanged():
        r = await client.post(
            "/api/v1/agents",
            json={"capabilities": ["code"], "colour": "red"},
            headers=as_agent("carol"),
        )
        assert_error(r, 422, "validation_error")
    assert await runtime.store.get_agent("carol") is None


@pytest.mark.parametrize(
    "body",
    [
        {"capabilities": {"code": 2}},
        {"capabilities": {"code": 0}},
        {"capabilities": "code"},
        {"max_concurrent": 0},
        {"wake_url": "ftp://host/x"},
        {"status": "asleep"},
        {"id": "has space"},
        {"id": "x" * 129},
        {"description": "d" * 2001},
    ],
)
async def test_bad_agent_registration(
    client: httpx.AsyncClient, runtime: Runtime, unchanged: Unchanged, body: dict[str, Any]
) -> None:
    async with unchanged():
        r = await client.post("/api/v1/agents", json=body, headers=as_agent("carol"))
        assert_error(r, 422, "validation_error")
    assert await runtime.store.get_agent("carol") is None


async def test_agent_cannot_register_itself_offline(
    client: httpx.AsyncClient, runtime: Runtime, unchanged: Unchanged
) -> None:
    async with unchanged():
        r = await client.post("/api/v1/agents", json={"status": "offline"}, headers=as_agent("c"))
        assert_error(r, 422, "validation_error")
        assert "status" in r.json()["error"]["message"]
    assert await runtime.store.get_agent("c") is None


# --- size limits on strings and lists -------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"title": "x" * 501},
        {"title": "t", "prompt": "p" * 200_001},
        {"title": "t", "description": "p" * 200_001},
        {"title": "t", "capabilities": ["c" * 101]},
        {"title": "t", "capabilities": [f"c{i}" for i in range(33)]},
        {"title": "t", "labels": ["l" * 101]},
        {"title": "t", "labels": [f"l{i}" for i in range(51)]},
        {"title": "t", "depends_on": [f"d{i}" for i in range(101)]},
        {"title": "t", "owner": "o" * 129},
        {"title": "t", "model": "m" * 201},
        {"title": "t", "idempotency_key": "k" * 201},
    ],
)
async def test_strings_and_lists_over_their_limits(
    client: httpx.AsyncClient, unchanged: Unchanged, body: dict[str, Any]
) -> None:
    async with unchanged():
        assert_error(await client.post("/api/v1/tasks", json=body), 422, "validation_error")


async def test_strings_at_their_limits_are_accepted(client: httpx.AsyncClient) -> None:
    body = {
        "title": "x" * 500,
        "prompt": "p" * 200_000,
        "capabilities": ["c" * 100],
        "labels": [f"l{i}" for i in range(50)],
    }
    r = await client.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    got = (await client.get(f"/api/v1/tasks/{r.json()['id']}")).json()
    assert (got["title"], got["prompt"], got["capabilities"]) == (
        body["title"],
        body["prompt"],
        body["capabilities"],
    )
    assert len(got["labels"]) == 50


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/tasks/{id}/comments", {"body": "c" * 50_001}),
        ("/api/v1/tasks/{id}/comments", {"body": ""}),
        ("/api/v1/tasks/{id}/fail", {"error": "e" * 20_001}),
        ("/api/v1/tasks/{id}/fail", {"error": ""}),
        ("/api/v1/tasks/{id}/fail", {"error": "e", "retryable": "perhaps"}),
        ("/api/v1/tasks/{id}/progress", {"message": "m" * 2_001}),
        ("/api/v1/tasks/{id}/progress", {"percent": 101}),
        ("/api/v1/tasks/{id}/progress", {"percent": -1}),
        ("/api/v1/tasks/{id}/progress", {"percent": "half"}),
        ("/api/v1/tasks/{id}/progress", {"attempt": 0}),
        ("/api/v1/tasks/{id}/complete", {"summary": "s" * 2_001}),
        ("/api/v1/tasks/{id}/input-request", {"question": ""}),
        ("/api/v1/tasks/{id}/review", {"verdict": "maybe"}),
        ("/api/v1/agents/worker-1/heartbeat", {"status": "offline"}),
        ("/api/v1/agents/worker-1/heartbeat", {"status": 1}),
    ],
)
async def test_bad_action_bodies(
    client: httpx.AsyncClient,
    seeded: dict[str, Any],
    unchanged: Unchanged,
    url: str,
    body: dict[str, Any],
) -> None:
    async with unchanged():
        r = await client.post(url.format(id=seeded["id"]), json=body, headers=as_agent("worker-1"))
        assert_error(r, 422, "validation_error")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "empty_patch"),
        ({"status": "completed"}, "validation_error"),
        ({"priority": "urgent"}, "validation_error"),
        ({"context": [1]}, "validation_error"),
        ({"reason": "r" * 2_001, "status": "cancelled"}, "validation_error"),
    ],
)
async def test_bad_patch(
    client: httpx.AsyncClient,
    seeded: dict[str, Any],
    unchanged: Unchanged,
    body: dict[str, Any],
    code: str,
) -> None:
    async with unchanged():
        assert_error(await client.patch(f"/api/v1/tasks/{seeded['id']}", json=body), 422, code)


# --- body size ---------------------------------------------------------------------------


async def test_body_over_the_default_limit_is_413(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    body = json.dumps({"title": "t", "context": {"blob": "x" * MiB}}).encode()
    async with unchanged():
        err = assert_error(await post_raw(client, body), 413, "payload_too_large")
        assert err["details"]["limit"] == MiB


async def test_chunked_body_without_length_over_the_limit_is_413(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"title": "t", "context": {"blob": "'
        for _ in range(40):
            sent += 64 * 1024
            yield b"x" * (64 * 1024)
        yield b'"}}'

    async with unchanged():
        r = await client.post("/api/v1/tasks", content=chunks(), headers=JSON)
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "payload_too_large")


async def test_lying_content_length_does_not_lift_the_limit(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    body = json.dumps({"title": "t", "context": {"blob": "x" * (2 * MiB)}}).encode()
    async with unchanged():
        r = await post_raw(client, body, **{"Content-Length": "20"})
        assert r.request.headers["content-length"] == "20"
        assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("declared", ["5", "500"])
async def test_content_length_that_disagrees_with_the_body(
    client: httpx.AsyncClient, unchanged: Unchanged, declared: str
) -> None:
    async with unchanged():
        r = await post_raw(client, b'{"title": "a task title"}', **{"Content-Length": declared})
        assert_error(r, 400, "content_length_mismatch")


@pytest.mark.parametrize("declared", ["abc", "-1", "1e3", "0x10"])
async def test_content_length_that_is_not_a_number(
    client: httpx.AsyncClient, unchanged: Unchanged, declared: str
) -> None:
    async with unchanged():
        r = await post_raw(client, b'{"title": "t"}', **{"Content-Length": declared})
        assert_error(r, 400, "invalid_content_length")


class TestConfiguredLimit:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"server": {"max_body_bytes": 4096}}

    async def test_body_over_a_configured_limit_is_413(
        self, client: httpx.AsyncClient, unchanged: Unchanged
    ) -> None:
        async with unchanged():
            r = await client.post("/api/v1/tasks", json={"title": "t", "prompt": "p" * 5000})
            err = assert_error(r, 413, "payload_too_large")
            assert err["details"]["limit"] == 4096

            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"title": "t", "prompt": "'
                for _ in range(10):
                    yield b"p" * 1000
                yield b'"}'

            r = await client.post("/api/v1/tasks", content=chunks(), headers=JSON)
            assert_error(r, 413, "payload_too_large")

    async def test_body_under_a_configured_limit_is_accepted(
        self, client: httpx.AsyncClient
    ) -> None:
        r = await client.post("/api/v1/tasks", json={"title": "t", "prompt": "p" * 3000})
        assert r.status_code == 201, r.text


# --- numbers, nesting and strings the stores cannot keep ------------------------------


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
async def test_non_finite_numbers(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged, literal: bytes
) -> None:
    async with unchanged():
        body = b'{"title": "t", "context": {"x": [1, ' + literal + b"]}}"
        assert_error(await post_raw(client, body), 400, "invalid_json")
        body = b'{"title": "t", "timeout_s": ' + literal + b"}"
        assert_error(await post_raw(client, body), 400, "invalid_json")
        body = b'{"percent": ' + literal + b"}"
        r = await post_raw(
            client, body, f"/api/v1/tasks/{seeded['id']}/progress", **as_agent("worker-1")
        )
        assert_error(r, 400, "invalid_json")
        body = b'{"result": ' + literal + b"}"
        r = await post_raw(
            client, body, f"/api/v1/tasks/{seeded['id']}/complete", **as_agent("worker-1")
        )
        assert_error(r, 400, "invalid_json")


@pytest.mark.parametrize("depth", [65, 100, 1_000, 100_000])
async def test_deep_nesting_is_400_not_500(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    async with unchanged():
        assert_error(await post_raw(client, nested), 400, "invalid_json")
        body = b'{"title": "t", "context": {"x": ' + nested + b"}}"
        assert_error(await post_raw(client, body), 400, "invalid_json")
        objects = b'{"a": ' * depth + b"1" + b"}" * depth
        assert_error(await post_raw(client, objects), 400, "invalid_json")
        r = await post_raw(
            client,
            b'{"result": ' + nested + b"}",
            f"/api/v1/tasks/{seeded['id']}/complete",
            **as_agent("worker-1"),
        )
        assert_error(r, 400, "invalid_json")


async def test_moderate_nesting_is_accepted(client: httpx.AsyncClient) -> None:
    context = {"x": json.loads("[" * 40 + "]" * 40)}
    r = await client.post("/api/v1/tasks", json={"title": "t", "context": context})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/api/v1/tasks/{r.json()['id']}")).json()["context"] == context


@pytest.mark.parametrize(
    "body",
    [
        b'{"title": "a\\u0000b"}',
        b'{"title": "t", "context": {"k\\u0000": 1}}',
        b'{"title": "t", "labels": ["\\u0000"]}',
        b'{"title": "\\ud800"}',
        b'{"title": "\\udc00 low"}',
        b'{"title": "t", "context": {"\\ud83d": "half a pair"}}',
        b'{"title": "t", "context": {"deep": [{"x": "\\udfff"}]}}',
    ],
)
async def test_nul_and_lone_surrogates(
    client: httpx.AsyncClient, unchanged: Unchanged, body: bytes
) -> None:
    async with unchanged():
        assert_error(await post_raw(client, body), 422, "invalid_string")


async def test_surrogate_pair_is_fine(client: httpx.AsyncClient) -> None:
    r = await post_raw(client, b'{"title": "\\ud83d\\ude00", "context": {"e": "\\ud83d\\ude00"}}')
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "\U0001f600" and r.json()["context"] == {"e": "\U0001f600"}


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"\xc3",
        b"\xc0\xaf",
        b"\xe2\x82",
        b"\xf8\x88\x80\x80\x80",
        b"ok \x80 continuation",
    ],
)
async def test_invalid_utf8(client: httpx.AsyncClient, unchanged: Unchanged, raw: bytes) -> None:
    async with unchanged():
        r = await post_raw(client, b'{"title": "' + raw + b'"}')
        assert_error(r, 400, "invalid_json")


async def test_utf8_encoded_surrogate(client: httpx.AsyncClient, unchanged: Unchanged) -> None:
    # CESU-style bytes for U+D800: invalid UTF-8, refused either as bad JSON or bad string.
    async with unchanged():
        r = await post_raw(client, b'{"title": "\xed\xa0\x80"}')
        assert r.status_code in (400, 422), r.text
        err = assert_error(r, r.status_code, None)
        assert err["code"] in ("invalid_json", "invalid_string")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "text/json-ish",
    ],
)
async def test_non_json_content_type_is_415(
    client: httpx.AsyncClient, unchanged: Unchanged, content_type: str
) -> None:
    async with unchanged():
        r = await client.post(
            "/api/v1/tasks", content=b'{"title": "t"}', headers={"Content-Type": content_type}
        )
        assert_error(r, 415, "unsupported_media_type")


async def test_form_and_multipart_bodies_are_415(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    async with unchanged():
        r = await client.post("/api/v1/tasks", data={"title": "t"})
        assert_error(r, 415, "unsupported_media_type")
        r = await client.post("/api/v1/tasks", files={"title": ("t.txt", b"t")})
        assert_error(r, 415, "unsupported_media_type")


# --- unknown ids, routes and methods -------------------------------------------------

TASK_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/tasks/{id}", None),
    ("GET", "/api/v1/tasks/{id}/events", None),
    ("PATCH", "/api/v1/tasks/{id}", {"status": "cancelled"}),
    ("PATCH", "/api/v1/tasks/{id}", {"priority": "high"}),
    ("PATCH", "/api/v1/tasks/{id}", {"context": {"a": 1}}),
    ("POST", "/api/v1/tasks/{id}/start", None),
    ("POST", "/api/v1/tasks/{id}/start", {"attempt": 1}),
    ("POST", "/api/v1/tasks/{id}/progress", {"message": "m", "percent": 10}),
    ("POST", "/api/v1/tasks/{id}/complete", None),
    ("POST", "/api/v1/tasks/{id}/complete", {"result": {"ok": True}}),
    ("POST", "/api/v1/tasks/{id}/fail", {"error": "boom"}),
    ("POST", "/api/v1/tasks/{id}/input-request", {"question": "q?"}),
    ("POST", "/api/v1/tasks/{id}/input", {"answer": "a"}),
    ("POST", "/api/v1/tasks/{id}/comments", {"body": "hello"}),
    ("POST", "/api/v1/tasks/{id}/review", {"verdict": "approved"}),
    ("POST", "/api/v1/tasks/{id}/retry", None),
]


@pytest.mark.parametrize(("method", "path", "body"), TASK_ROUTES)
@pytest.mark.parametrize("task_id", ["01nosuchtask0000000000000", "x" * 1000, "a%20b", "%C3%A5"])
async def test_unknown_task_id_is_404_on_every_task_route(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    seeded: dict[str, Any],
    unchanged: Unchanged,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    task_id: str,
) -> None:
    async with unchanged():
        for headers in ({}, admin):
            r = await client.request(method, path.format(id=task_id), json=body, headers=headers)
            assert_error(r, 404, "not_found")


AGENT_ROUTES: list[tuple[str, str, dict[str, Any] | None, bool]] = [
    ("GET", "/api/v1/agents/{id}", None, False),
    ("PATCH", "/api/v1/agents/{id}", {"description": "d"}, False),
    ("DELETE", "/api/v1/agents/{id}", None, False),
    ("POST", "/api/v1/agents/{id}/heartbeat", None, False),
    ("POST", "/api/v1/agents/{id}/heartbeat", {"status": "busy"}, False),
    ("POST", "/api/v1/agents/{id}/drain", None, True),
    ("POST", "/api/v1/agents/{id}/undrain", None, True),
]


@pytest.mark.parametrize(("method", "path", "body", "admin_only"), AGENT_ROUTES)
async def test_unknown_agent_id_is_404_on_agent_routes(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: dict[str, str],
    seeded: dict[str, Any],
    unchanged: Unchanged,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    admin_only: bool,
) -> None:
    async with unchanged():
        # As the (unregistered) agent itself, and as an admin.
        for headers in [admin] if admin_only else [as_agent("ghost"), admin]:
            r = await client.request(method, path.format(id="ghost"), json=body, headers=headers)
            err = assert_error(r, 404, "not_found")
            assert err["details"] == {"agent_id": "ghost"}
    assert await runtime.store.get_agent("ghost") is None


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        *((m, p.format(id="a%00b"), b) for m, p, b in TASK_ROUTES),
        *((m, p.format(id="%00"), b) for m, p, b, _ in AGENT_ROUTES),
        ("GET", "/api/v1/tasks?owner=a%00b", None),
        ("GET", "/api/v1/tasks?requester=%00&assignee=x", None),
        ("GET", "/api/v1/tasks?scope=%00", None),
        ("GET", "/api/v1/tasks?capability=%00", None),
        ("GET", "/api/v1/tasks?label=%00", None),
        ("GET", "/api/v1/tasks?cursor=%00", None),
        ("GET", "/api/v1/agents?capability=%00", None),
    ],
)
async def test_nul_in_the_url_is_refused(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    seeded: dict[str, Any],
    unchanged: Unchanged,
    method: str,
    url: str,
    body: dict[str, Any] | None,
) -> None:
    # PostgreSQL text cannot hold NUL; an id or filter with one must not reach the store.
    async with unchanged():
        for headers in ({}, admin):
            r = await client.request(method, url, json=body, headers=headers)
            assert_error(r, 422, "invalid_string")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nothing-here"),  # `/` is the dashboard (tests/e2e/test_dashboard.py)
        ("GET", "/api/v1"),
        ("GET", "/api/v1/nothing"),
        ("POST", "/api/v1/nothing"),
        ("GET", "/api/v2/tasks"),
        ("POST", "/api/v1/tasks/01abc/explode"),
        ("GET", "/api/v1/agents/a/b/c/d"),
    ],
)
async def test_unknown_route_is_404_in_error_form(
    client: httpx.AsyncClient, unchanged: Unchanged, method: str, path: str
) -> None:
    async with unchanged():
        r = await client.request(method, path, json={} if method == "POST" else None)
        assert_error(r, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/tasks"),
        ("PUT", "/api/v1/tasks"),
        ("PUT", "/api/v1/tasks/{id}"),
        ("DELETE", "/api/v1/tasks/{id}"),
        ("GET", "/api/v1/tasks/{id}/start"),
        ("GET", "/api/v1/tasks/{id}/complete"),
        ("PATCH", "/api/v1/tasks/{id}/comments"),
        ("PUT", "/api/v1/agents"),
        ("DELETE", "/api/v1/agents"),
        ("GET", "/api/v1/agents/worker-1/heartbeat"),
        ("PUT", "/api/v1/agents/worker-1"),
    ],
)
async def test_wrong_method_is_405_in_error_form(
    client: httpx.AsyncClient,
    seeded: dict[str, Any],
    unchanged: Unchanged,
    method: str,
    path: str,
) -> None:
    async with unchanged():
        r = await client.request(method, path.format(id=seeded["id"]))
        assert_error(r, 405, "method_not_allowed")
        assert r.headers.get("allow"), r.headers


# --- query parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "validation_error"),
        ("limit=-1", "validation_error"),
        ("limit=501", "validation_error"),
        ("limit=abc", "validation_error"),
        ("limit=1.5", "validation_error"),
        ("limit=", "validation_error"),
        ("status=bogus", "validation_error"),
        ("status=pending,bogus", "validation_error"),
        ("status=pending&status=bogus", "validation_error"),
        ("priority=bogus", "validation_error"),
        ("priority=HIGH", "validation_error"),
        ("order=sideways", "validation_error"),
        ("cursor=garbage", "invalid_cursor"),
        ("cursor=a", "invalid_cursor"),
        ("cursor=" + "c" * 513, "validation_error"),
        ("owner=" + "o" * 129, "validation_error"),
        ("cursor=!!!", "invalid_cursor"),
    ],
)
async def test_bad_list_query_is_422(
    client: httpx.AsyncClient, seeded: dict[str, Any], query: str, code: str
) -> None:
    assert_error(await client.get(f"/api/v1/tasks?{query}"), 422, code)


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "status=gone", "cursor=garbage"])
async def test_bad_agent_list_query_is_422(
    client: httpx.AsyncClient, admin: dict[str, str], query: str
) -> None:
    r = await client.get(f"/api/v1/agents?{query}", headers=admin)
    assert_error(r, 422, None)


# --- batches are all or nothing -----------------------------------------------------


async def test_batch_with_one_invalid_item_writes_nothing(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    tasks: list[dict[str, Any]] = [{"title": f"t{i}"} for i in range(10)]
    tasks[7] = {"title": "t7", "priority": "urgent"}
    async with unchanged():
        r = await client.post("/api/v1/tasks/batch", json={"tasks": tasks})
        err = assert_error(r, 422, "validation_error")
        assert ["body", "tasks", "7", "priority"] in error_locs(err)


async def test_batch_with_an_unknown_dependency_writes_nothing(
    client: httpx.AsyncClient, seeded: dict[str, Any], unchanged: Unchanged
) -> None:
    tasks = [
        {"title": "a"},
        {"title": "b", "depends_on": [seeded["id"]]},
        {"title": "c", "depends_on": ["01missing"]},
    ]
    async with unchanged():
        r = await client.post("/api/v1/tasks/batch", json={"tasks": tasks})
        assert_error(r, 422, "unknown_dependency")


async def test_batch_with_a_nul_in_one_item_writes_nothing(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    body = b'{"tasks": [{"title": "a"}, {"title": "b", "context": {"x": "\\u0000"}}]}'
    async with unchanged():
        assert_error(await post_raw(client, body, "/api/v1/tasks/batch"), 422, "invalid_string")


async def test_batch_repeating_an_idempotency_key_writes_nothing(
    client: httpx.AsyncClient, unchanged: Unchanged
) -> None:
    tasks = [
        {"title": "a", "idempotency_key": "k1"},
        {"title": "b", "idempotency_key": "k2"},
        {"title": "c", "idempotency_key": "k1"},
    ]
    async with unchanged():
        r = await client.post("/api/v1/tasks/batch", json={"tasks": tasks})
        assert_error(r, 422, "duplicate_idempotency_key")


@pytest.mark.parametrize("count", [0, 1001])
async def test_batch_size_limits(
    client: httpx.AsyncClient, unchanged: Unchanged, count: int
) -> None:
    async with unchanged():
        r = await client.post(
            "/api/v1/tasks/batch", json={"tasks": [{"title": "t"} for _ in range(count)]}
        )
        assert_error(r, 422, "validation_error")


# --- X-Agent-ID ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent_id",
    [
        b"a\x01b",
        b"\x7f",
        b"tab\there",
        b"with space",
        b"x" * 129,
        b"-leading-dash",
        "\u00e5lice".encode(),
        b"\xff\xfe",
        b"a,b",
    ],
)
async def test_bad_agent_id_header_is_401(
    client: httpx.AsyncClient, runtime: Runtime, unchanged: Unchanged, agent_id: bytes
) -> None:
    async with unchanged():
        r = await client.post(
            "/api/v1/tasks", json={"title": "t"}, headers={"X-Agent-ID": agent_id}
        )
        assert_error(r, 401, "invalid_agent_id")
        r = await client.post("/api/v1/agents", json={}, headers={"X-Agent-ID": agent_id})
        assert_error(r, 401, "invalid_agent_id")
        r = await client.get("/api/v1/tasks", headers={"X-Agent-ID": agent_id})
        assert_error(r, 401, "invalid_agent_id")


async def test_agent_id_of_128_characters_is_fine(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tasks", json={"title": "t"}, headers=as_agent("a" * 128))
    assert r.status_code == 201, r.text
    assert r.json()["requester"] == "a" * 128


# --- property: any JSON value --------------------------------------------------------

# Values the stores cannot keep or that trip encoders, mixed in with ordinary ones.
NASTY = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfffy",
        "\u2028",
        "\ufeff",
        "\U0010ffff",
        float("nan"),
        float("inf"),
        float("-inf"),
        1e308,
        5e-324,
        -0.0,
        2**63,
        -(2**63) - 1,
        10**40,
    ]
)
TEXT = st.text(max_size=20) | st.text(
    st.characters(categories=["Cs"]) | st.characters(), max_size=5
)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | NASTY
KEYS = st.text(max_size=8) | TEXT
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)
CONTEXTS = st.dictionaries(KEYS, JSON_VALUES, max_size=6)
STORABLE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00")),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
TASK_FIELDS = (
    "prompt",
    "description",
    "capabilities",
    "priority",
    "owner",
    "scope",
    "assigned_to",
    "depends_on",
    "run_at",
    "due_at",
    "timeout_s",
    "max_attempts",
    "review",
    "reviewer",
    "escalate_to",
    "model",
    "labels",
    "idempotency_key",
)
BODIES = st.one_of(
    # Anything at all as the body.
    JSON_VALUES,
    # Task-shaped, with random values for every field.
    st.fixed_dictionaries(
        {"title": TEXT | JSON_SCALARS, "context": JSON_VALUES},
        optional=dict.fromkeys(TASK_FIELDS, JSON_VALUES),
    ),
    # A good task whose context is any JSON object.
    st.builds(lambda title, context: {"title": title, "context": context}, TEXT, CONTEXTS),
    st.builds(lambda context: {"title": "t", "context": context}, CONTEXTS),
    # A context of values every store should keep exactly.
    st.builds(
        lambda context: {"title": "t", "context": context},
        st.dictionaries(st.text(st.characters(exclude_characters="\x00")), STORABLE, max_size=6),
    ),
)


def as_numbers(value: Any) -> Any:
    """JSON numbers compared by value: PostgreSQL's jsonb may answer 5.0e16 as 50000000000000000."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [as_numbers(v) for v in value]
    return {k: as_numbers(v) for k, v in value.items()}


def encode(value: Any) -> bytes:
    # ensure_ascii escapes lone surrogates and allow_nan writes NaN/Infinity: the server,
    # not the client, must refuse them.
    return json.dumps(value, allow_nan=True).encode()


async def check_body(client: httpx.AsyncClient, runtime: Runtime, body: Any) -> bool:
    """Post one body; answers whether a task was created."""
    before = len(await runtime.store.read_events(after=0, limit=10_000))
    r = await client.post("/api/v1/tasks", content=encode(body), headers=JSON)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error(r, r.status_code, None)
        assert len(await runtime.store.read_events(after=0, limit=10_000)) == before
        return False
    assert isinstance(body, dict)
    if r.status_code == 200:
        # A repeated idempotency key answers the task created first, and writes nothing.
        assert body.get("idempotency_key") is not None, r.text
        assert len(await runtime.store.read_events(after=0, limit=10_000)) == before
        return False
    assert r.status_code == 201, r.text
    created = r.json()
    # What was sent is what the JSON on the wire says: a Python string holding a high and a
    # low surrogate is written as the escape pair of one character, and read back as it.
    sent = as_numbers(json.loads(encode(body)).get("context", {}))
    assert as_numbers(created["context"]) == sent
    got = await client.get(f"/api/v1/tasks/{created['id']}")
    assert got.status_code == 200, got.text
    assert as_numbers(got.json()["context"]) == sent
    assert got.json()["title"] == body["title"]
    return True


def test_random_json_bodies_never_5xx_and_context_round_trips(
    tmp_path: Path, database_url: str | None
) -> None:
    with asyncio.Runner() as runner:
        runtime = Runtime.build(make_settings(tmp_path, database_url))
        runner.run(runtime.__aenter__())
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app_for(runtime)),
            base_url="http://dispatchd.test",
            headers={"X-Agent-ID": "fuzzer"},
        )
        try:

            @hsettings(
                max_examples=300,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(body=BODIES)
            # Surrogate pairs as escapes: one character on the wire.
            @example(body={"title": "t", "context": {"\ud800\udc00": "\udbff\udfff"}})
            def check(body: Any) -> None:
                outcomes.append(runner.run(check_body(client, runtime, body)))

            outcomes: list[bool] = []
            check()
            # Both sides of the property must have been exercised.
            assert outcomes.count(True) >= 25 and outcomes.count(False) >= 25, outcomes
        finally:
            runner.run(client.aclose())
            runner.run(runtime.__aexit__(None, None, None))


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
async def test_a_time_that_utc_cannot_write_is_a_422_naming_it(
    client: httpx.AsyncClient, when: str
) -> None:
    r = await client.post("/api/v1/tasks", json={"title": "t", "run_at": when})
    assert r.status_code == 422, r.text
    assert "run_at" in r.json()["error"]["message"]
    assert (await client.get("/api/v1/tasks")).json()["items"] == []


async def test_a_time_before_the_year_1000_reads_back(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tasks", json={"title": "t", "due_at": "0609-05-09T23:11:56Z"})
    assert r.status_code == 201, r.text
    assert r.json()["due_at"] == "0609-05-09T23:11:56.000000Z"
    read = await client.get(f"/api/v1/tasks/{r.json()['id']}")
    assert read.status_code == 200, read.text
    assert read.json()["due_at"] == "0609-05-09T23:11:56.000000Z"
    listed = await client.get("/api/v1/tasks", params={"order": "asc"})
    assert listed.status_code == 200, listed.text
