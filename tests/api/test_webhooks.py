"""Webhooks (SPEC §4, docs/webhooks.md): the admin routes, and deliveries to a real local
HTTP receiver that fails on purpose — signatures, type filters, retries with backoff, the
circuit breaker, per-webhook order, switching off and deleting. Restarts and replicas are
in test_webhook_restarts.py.

Retry and breaker tests assert what the deliveries API and the receiver record (attempt
numbers, order, scheduled times), never how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, make_settings
from tests.api.helpers import ADMIN, BOTH, assert_error, eventually, ts
from tests.api.webhook_helpers import (
    API,
    FAST,
    create_webhook,
    deliveries,
    get_webhook,
    task_created,
    wait_deliveries,
    wait_requests,
)
from tests.support.receiver import Receiver


@pytest.fixture
def webhook_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {**FAST, **getattr(request, "param", {})}


@pytest.fixture
def settings_overrides(webhook_config: dict[str, Any]) -> dict[str, Any]:
    return {"webhooks": webhook_config}


def config(**values: Any) -> pytest.MarkDecorator:
    """This test's `webhooks` settings, over FAST."""
    return pytest.mark.parametrize("webhook_config", [values], indirect=True)


@pytest.fixture
def background(request: pytest.FixtureRequest) -> bool:
    return bool(getattr(request, "param", True))


# The admin routes alone: no dispatcher, assigner or sweeper. Besides being quicker, a
# runtime stopped milliseconds after it started can lose a cancellation on PostgreSQL
# (Python 3.11 `asyncio.wait_for` inside psycopg_pool), which stalls its shutdown.
API_ONLY = pytest.mark.parametrize("background", [False], indirect=True)


@pytest.fixture
async def runtime(
    tmp_path: Path, database_url: str | None, settings_overrides: dict[str, Any], background: bool
) -> AsyncIterator[Runtime]:
    settings = make_settings(tmp_path, database_url, **settings_overrides)
    async with Runtime.build(settings, background=background) as rt:
        yield rt


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


# --- the admin routes -------------------------------------------------------------------


@BOTH
@API_ONLY
async def test_create_read_list_change_delete(client: httpx.AsyncClient) -> None:
    hook, secret = await create_webhook(
        client,
        "https://receiver.example/hooks",
        types=["task.completed", "agent", "task.*"],
        description="billing",
    )
    assert secret.startswith("whsec_") and len(secret) > 40
    assert hook["url"] == "https://receiver.example/hooks"
    assert hook["types"] == ["task.completed", "agent.*", "task.*"]
    assert hook["description"] == "billing"
    assert hook["active"] is True
    assert hook["circuit"] == {"state": "closed", "consecutive_failures": 0, "open_until": None}
    assert "secret" not in hook
    ts(hook["created_at"])

    got = await get_webhook(client, hook["id"])
    assert got == hook

    own, own_secret = await create_webhook(
        client, "http://127.0.0.1:9/x", secret="my-own-secret-0123456789"
    )
    assert own_secret == "my-own-secret-0123456789"
    assert own["types"] == [] and own["description"] == ""

    r = await client.get(API, headers=ADMIN, params={"limit": 1})
    assert r.status_code == 200, r.text
    first = r.json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    r = await client.get(API, headers=ADMIN, params={"limit": 1, "cursor": first["next_cursor"]})
    second = r.json()
    assert second["next_cursor"] is None
    listed = first["items"] + second["items"]
    assert sorted(h["id"] for h in listed) == sorted([hook["id"], own["id"]])
    assert all("secret" not in h for h in listed)

    r = await client.patch(
        f"{API}/{hook['id']}",
        json={"url": "https://other.example/h", "types": [], "description": "", "active": False},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert (changed["url"], changed["types"], changed["active"]) == (
        "https://other.example/h",
        [],
        False,
    )
    assert "secret" not in changed
    assert ts(changed["updated_at"]) >= ts(hook["updated_at"])
    assert await get_webhook(client, hook["id"]) == changed

    r = await client.delete(f"{API}/{hook['id']}", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": hook["id"], "deleted": True}
    for method in ("GET", "PATCH", "DELETE"):
        body = {"description": "x"} if method == "PATCH" else None
        r = await client.request(method, f"{API}/{hook['id']}", json=body, headers=ADMIN)
        assert_error(r, 404, "webhook_not_found")
    assert_error(
        await client.get(f"{API}/{hook['id']}/deliveries", headers=ADMIN), 404, "webhook_not_found"
    )


@API_ONLY
async def test_only_an_admin_may_manage_webhooks(client: httpx.AsyncClient) -> None:
    hook, _ = await create_webhook(client, "http://127.0.0.1:9/x")
    path = f"{API}/{hook['id']}"
    calls = [
        ("POST", API, {"url": "http://127.0.0.1:9/y"}),
        ("GET", API, None),
        ("GET", path, None),
        ("PATCH", path, {"description": "mine now"}),
        ("DELETE", path, None),
        ("GET", f"{path}/deliveries", None),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, json=body)  # as agent alice, no token
        assert_error(r, 401, "admin_token_required")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await client.request(method, url, json=body, headers={"X-Agent-ID": ""})
        assert_error(r, 401, None)
    r = await client.get(API, headers=ADMIN)
    assert [h["id"] for h in r.json()["items"]] == [hook["id"]]
    assert (await get_webhook(client, hook["id"]))["description"] == ""


BAD_CREATE: list[tuple[Any, str]] = [
    ({}, "validation_error"),
    ({"url": "ftp://example.com/"}, "invalid_url"),
    ({"url": "javascript:alert(1)"}, "invalid_url"),
    ({"url": "example.com/hook"}, "invalid_url"),
    ({"url": "http://"}, "invalid_url"),
    ({"url": "http://exa mple.com/"}, "invalid_url"),
    ({"url": "http://example.com:99999/"}, "invalid_url"),
    ({"url": "http://[::1/"}, "invalid_url"),
    ({"url": "https://" + "a" * 2100 + ".com/"}, "validation_error"),
    ({"url": 42}, "validation_error"),
    ({"url": None}, "validation_error"),
    ({"url": "http://x.example/", "types": "task.*"}, "validation_error"),
    ({"url": "http://x.example/", "types": ["Task.Created"]}, "invalid_types"),
    ({"url": "http://x.example/", "types": ["task.created,agent"]}, "invalid_types"),
    ({"url": "http://x.example/", "types": [" "]}, "invalid_types"),
    ({"url": "http://x.example/", "types": [""]}, "validation_error"),
    ({"url": "http://x.example/", "types": [1]}, "validation_error"),
    ({"url": "http://x.example/", "types": ["task.*"] * 51}, "validation_error"),
    ({"url": "http://x.example/", "secret": "short"}, "validation_error"),
    ({"url": "http://x.example/", "secret": "has spaces in it, 0123456789"}, "validation_error"),
    ({"url": "http://x.example/", "secret": "x" * 257}, "validation_error"),
    ({"url": "http://x.example/", "description": "d" * 2001}, "validation_error"),
    ({"url": "http://x.example/", "active": "maybe"}, "validation_error"),
    ({"url": "http://x.example/", "colour": "blue"}, "validation_error"),
    ([{"url": "http://x.example/"}], "validation_error"),
    ("http://x.example/", "validation_error"),
]


@BOTH
@API_ONLY
@pytest.mark.parametrize(("body", "code"), BAD_CREATE)
async def test_bad_webhooks_are_refused(client: httpx.AsyncClient, body: Any, code: str) -> None:
    assert_error(await client.post(API, json=body, headers=ADMIN), 422, code)
    r = await client.get(API, headers=ADMIN)
    assert r.json()["items"] == []


@BOTH
@API_ONLY
async def test_bad_changes_and_queries_are_refused(client: httpx.AsyncClient) -> None:
    hook, _ = await create_webhook(client, "http://127.0.0.1:9/x", types=["task.*"])
    path = f"{API}/{hook['id']}"
    bad_patches: list[tuple[Any, str]] = [
        ({"url": "gopher://x/"}, "invalid_url"),
        ({"url": None}, "validation_error"),
        ({"active": None}, "validation_error"),
        ({"types": None}, "validation_error"),
        ({"types": ["no spaces allowed"]}, "invalid_types"),
        ({"secret": "short"}, "validation_error"),
        ({"id": "other"}, "validation_error"),
        ({"cursor": "0"}, "validation_error"),
        ([], "validation_error"),
    ]
    for body, code in bad_patches:
        assert_error(await client.patch(path, json=body, headers=ADMIN), 422, code)
    assert await get_webhook(client, hook["id"]) == hook
    r = await client.patch(
        path, content=b'{"url": ', headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert_error(r, 400, "invalid_json")

    bad_queries: list[tuple[str, dict[str, Any], str]] = [
        (API, {"limit": 0}, "validation_error"),
        (API, {"limit": 501}, "validation_error"),
        (API, {"limit": "many"}, "validation_error"),
        (API, {"cursor": "%%%"}, "invalid_cursor"),
        (f"{path}/deliveries", {"status": "lost"}, "validation_error"),
        (f"{path}/deliveries", {"limit": -1}, "validation_error"),
        (f"{path}/deliveries", {"cursor": "not-a-cursor!"}, "invalid_cursor"),
        # A well-formed cursor that names no event id.
        (f"{path}/deliveries", {"cursor": "bm90LWEtbnVtYmVy"}, "invalid_cursor"),
    ]
    for url, params, code in bad_queries:
        assert_error(await client.get(url, params=params, headers=ADMIN), 422, code)
    assert_error(await client.get(f"{API}/{'x' * 129}", headers=ADMIN), 422, "validation_error")
    assert_error(await client.get(f"{API}/nope", headers=ADMIN), 404, "webhook_not_found")
    r = await client.put(path, json={}, headers=ADMIN)
    assert_error(r, 405, "method_not_allowed")


# --- delivery ---------------------------------------------------------------------------


@BOTH
async def test_an_event_is_delivered_signed(client: httpx.AsyncClient, receiver: Receiver) -> None:
    hook, secret = await create_webhook(client, receiver.url(), types=["task.created"])
    event_id = await task_created(client, "signed")
    [req] = await wait_requests(receiver, 1)

    # The signature, checked as a receiver would, from the raw body.
    header = req.headers["x-dispatch-signature"]
    fields = dict(part.split("=", 1) for part in header.split(","))
    assert set(fields) == {"t", "v1"}
    signed = fields["t"].encode() + b"." + req.body
    assert hmac.compare_digest(
        fields["v1"], hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    )
    assert abs(time.time() - int(fields["t"])) < 300

    # The body is the event as the events API shows it.
    r = await client.get("/api/v1/events", params={"after": int(event_id) - 1, "limit": 1})
    assert req.event == r.json()["events"][0]
    assert req.event["id"] == event_id and req.event["type"] == "task.created"
    assert req.event["task_id"] is not None
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-dispatch-event"] == "task.created"
    assert req.headers["x-dispatch-webhook"] == hook["id"]
    assert req.attempt == 1

    [delivery] = await wait_deliveries(client, hook["id"], 1)
    assert delivery["id"] == req.delivery
    assert delivery["event_id"] == event_id and delivery["event_type"] == "task.created"
    assert (delivery["status"], delivery["attempt"], delivery["response_status"]) == (
        "delivered",
        1,
        200,
    )
    assert delivery["error"] is None and delivery["next_attempt_at"] is None
    assert ts(delivery["delivered_at"]) >= ts(delivery["created_at"])
    [attempt] = delivery["attempts"]
    assert (attempt["attempt"], attempt["outcome"], attempt["response_status"]) == (
        1,
        "delivered",
        200,
    )
    webhook = await get_webhook(client, hook["id"])
    assert int(webhook["cursor"]) >= int(event_id)


async def test_a_new_secret_signs_from_then_on(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook, old = await create_webhook(client, receiver.url(), types=["task.created"])
    await task_created(client)
    await wait_requests(receiver, 1)
    new = "rotated-secret-0123456789abcdef"
    r = await client.patch(f"{API}/{hook['id']}", json={"secret": new}, headers=ADMIN)
    assert r.status_code == 200 and "secret" not in r.json()
    await task_created(client)
    first, second = await wait_requests(receiver, 2)
    for req, secret in ((first, old), (second, new)):
        t, v1 = (p.split("=", 1)[1] for p in req.headers["x-dispatch-signature"].split(","))
        mac = hmac.new(secret.encode(), t.encode() + b"." + req.body, hashlib.sha256)
        assert v1 == mac.hexdigest()


async def test_type_filters_choose_what_each_webhook_gets(
    client: httpx.AsyncClient, receiver: Receiver, register: Any
) -> None:
    tasks, _ = await create_webhook(client, receiver.url("/tasks"), types=["task.created"])
    agents, _ = await create_webhook(client, receiver.url("/agents"), types=["agent"])
    both, _ = await create_webhook(
        client, receiver.url("/both"), types=["agent.registered", "task.c*"]
    )
    everything, _ = await create_webhook(client, receiver.url("/all"))
    start = int(everything["cursor"])
    await register("worker-1", capabilities=("python",))
    await task_created(client)
    await task_created(client)
    await register("worker-2", capabilities=("go",))
    r = await client.get("/api/v1/events", params={"after": start, "limit": 1000})
    log = [(e["id"], e["type"]) for e in r.json()["events"]]
    assert {t for _, t in log} >= {"agent.registered", "task.created"}
    await wait_requests(receiver, len(log), "/all")
    await wait_deliveries(client, everything["id"], len(log))

    def got(path: str) -> list[tuple[str, str]]:
        return [(q.event["id"], q.event["type"]) for q in receiver.requests(path)]

    assert got("/all") == log
    assert got("/tasks") == [(i, t) for i, t in log if t == "task.created"]
    assert got("/agents") == [(i, t) for i, t in log if t.startswith("agent.")]
    wanted = ("agent.registered", "task.created", "task.cancelled", "task.completed")
    assert got("/both") == [(i, t) for i, t in log if t in wanted]
    for hook, path in ((tasks, "/tasks"), (agents, "/agents"), (both, "/both")):
        sent = [(d["event_id"], d["event_type"]) for d in await deliveries(client, hook["id"])]
        assert sent[::-1] == got(path)


@BOTH
@config(max_attempts=4, backoff_base_ms=40)
async def test_failed_attempts_are_retried_with_growing_waits(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.fail_always(503)
    hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
    await task_created(client)
    [delivery] = await wait_deliveries(client, hook["id"], 1, status="failed")
    requests = receiver.requests()
    assert [q.attempt for q in requests] == [1, 2, 3, 4]
    assert {q.delivery for q in requests} == {delivery["id"]}
    assert {q.body for q in requests} == {requests[0].body}, "every attempt sends the same body"

    assert (delivery["attempt"], delivery["response_status"]) == (4, 503)
    assert delivery["error"].startswith("the receiver answered 503")
    assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is None
    attempts = delivery["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert [a["outcome"] for a in attempts] == ["failed"] * 4
    assert [a["response_status"] for a in attempts] == [503] * 4
    # The wait scheduled after attempt n is 40 ms * 2**(n-1), half of it random.
    waits = []
    for a in attempts[:3]:
        ended = ts(a["at"]) + timedelta(milliseconds=a["duration_ms"])
        waits.append((ts(a["next_attempt_at"]) - ended) / timedelta(milliseconds=1))
    for n, wait in enumerate(waits):
        assert 20 * 2**n - 1 <= wait <= 40 * 2**n + 1, waits
    assert waits[0] < waits[2]
    assert attempts[3]["next_attempt_at"] is None
    # No attempt came before its time.
    for a, later in zip(attempts, requests[1:], strict=False):
        assert later.at >= ts(a["next_attempt_at"]).timestamp()


@BOTH
async def test_a_receiver_that_recovers_gets_the_delivery(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.fail_next(2, 500)
    hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
    await task_created(client)
    [delivery] = await wait_deliveries(client, hook["id"], 1)
    assert [q.answered for q in receiver.requests()] == [500, 500, 200]
    assert [q.attempt for q in receiver.requests()] == [1, 2, 3]
    assert (delivery["attempt"], delivery["response_status"], delivery["error"]) == (3, 200, None)
    assert [a["outcome"] for a in delivery["attempts"]] == ["failed", "failed", "delivered"]
    assert (await get_webhook(client, hook["id"]))["circuit"]["consecutive_failures"] == 0


async def test_an_unreachable_receiver_is_a_failed_attempt(client: httpx.AsyncClient) -> None:
    with Receiver() as gone:
        url = gone.url()
    hook, _ = await create_webhook(client, url, types=["task.created"])
    await task_created(client)
    [delivery] = await wait_deliveries(client, hook["id"], 1, status="failed")
    assert delivery["response_status"] is None
    assert "Connect" in delivery["error"]


@config(max_attempts=3)
async def test_each_webhook_delivers_in_event_order(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """Event N+1 is not sent while N is being retried; it goes once N is done, delivered
    or failed."""
    receiver.fail_next(2)
    hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
    first = await task_created(client)
    second = await task_created(client)
    await wait_deliveries(client, hook["id"], 2)
    sent = [(q.event["id"], q.attempt) for q in receiver.requests()]
    assert sent == [(first, 1), (first, 2), (first, 3), (second, 1)]

    receiver.fail_next(3)  # all of the third's attempts
    third = await task_created(client)
    fourth = await task_created(client)
    await wait_deliveries(client, hook["id"], 3)
    sent = [(q.event["id"], q.attempt) for q in receiver.requests()][4:]
    assert sent == [(third, 1), (third, 2), (third, 3), (fourth, 1)]
    statuses = {d["event_id"]: d["status"] for d in await deliveries(client, hook["id"])}
    assert statuses == {
        first: "delivered",
        second: "delivered",
        third: "failed",
        fourth: "delivered",
    }


# --- the circuit breaker ----------------------------------------------------------------


@BOTH
@config(breaker_threshold=3, breaker_cooldown_s=2, max_attempts=20, backoff_base_ms=20)
async def test_the_breaker_opens_after_the_threshold_and_closes_after_a_trial(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.fail_always(500)
    hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
    path = hook["id"]
    first = await task_created(client)

    async def circuit(state: str, failures: int) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            c = (await get_webhook(client, path))["circuit"]
            ok = c["state"] == state and c["consecutive_failures"] == failures
            return dict(c) if ok else None

        return await eventually(probe, f"circuit {state} after {failures} failures")

    opened = await circuit("open", 3)
    open_until = ts(opened["open_until"]).timestamp()
    # Owed deliveries wait, pending, while it is open.
    second = await task_created(client)
    # The cooldown ends, one trial is made, it fails: open again.
    reopened = await circuit("open", 4)
    reopen_until = ts(reopened["open_until"]).timestamp()
    requests = receiver.requests()
    assert len(requests) == 4, "exactly one trial after the cooldown"
    assert all(q.at < open_until for q in requests[:3])
    assert requests[3].at >= open_until, "nothing was sent while the circuit was open"
    assert {q.event["id"] for q in requests} == {first}
    pending = await deliveries(client, path, status="pending")
    assert {d["event_id"] for d in pending} == {first, second}

    # The receiver recovers: the next trial succeeds and closes the circuit; the backlog
    # follows at once, in order.
    receiver.succeed()
    await wait_deliveries(client, path, 2)
    closed = (await get_webhook(client, path))["circuit"]
    assert closed == {"state": "closed", "consecutive_failures": 0, "open_until": None}
    requests = receiver.requests()
    assert [(q.event["id"], q.answered) for q in requests[4:]] == [(first, 200), (second, 200)]
    assert requests[4].at >= reopen_until
    [done_second, done_first] = await deliveries(client, path)
    assert (done_first["attempt"], done_second["attempt"]) == (5, 1)


@config(breaker_threshold=2, breaker_cooldown_s=60, max_attempts=20)
async def test_a_new_url_closes_the_circuit(client: httpx.AsyncClient, receiver: Receiver) -> None:
    receiver.fail_always()
    hook, _ = await create_webhook(client, receiver.url("/old"), types=["task.created"])
    await task_created(client)

    async def opened() -> bool:
        return bool((await get_webhook(client, hook["id"]))["circuit"]["state"] == "open")

    await eventually(opened, "the circuit to open")
    receiver.succeed()
    r = await client.patch(f"{API}/{hook['id']}", json={"url": receiver.url("/new")}, headers=ADMIN)
    assert r.json()["circuit"]["state"] == "closed"
    await wait_deliveries(client, hook["id"], 1)
    assert [q.path for q in receiver.requests()] == ["/old", "/old", "/new"]


# --- switching off, deleting ------------------------------------------------------------


@BOTH
async def test_switching_off_abandons_and_switching_on_starts_at_the_head(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.fail_always()
    hook, _ = await create_webhook(client, receiver.url(), types=["task.created"])
    path = f"{API}/{hook['id']}"
    owed = [await task_created(client), await task_created(client)]
    await wait_requests(receiver, 1)
    r = await client.patch(path, json={"active": False}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["active"] is False
    abandoned = await deliveries(client, hook["id"])
    assert {d["event_id"] for d in abandoned} == set(owed)
    assert {d["status"] for d in abandoned} == {"abandoned"}
    assert all(d["next_attempt_at"] is None for d in abandoned)

    missed = await task_created(client)  # while off: not owed
    receiver.succeed()
    r = await client.patch(path, json={"active": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert int(r.json()["cursor"]) >= int(missed)
    wanted = await task_created(client)
    items = await wait_deliveries(client, hook["id"], 1)
    assert [(d["event_id"], d["status"]) for d in items] == [
        (owed[0], "abandoned"),
        (owed[1], "abandoned"),
        (wanted, "delivered"),
    ]
    assert [q.event["id"] for q in receiver.requests() if q.answered == 200] == [wanted]


async def test_a_deleted_webhook_gets_nothing_more(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.fail_always(path="/doomed")
    doomed, _ = await create_webhook(client, receiver.url("/doomed"), types=["task.created"])
    witness, _ = await create_webhook(client, receiver.url("/witness"), types=["task.created"])
    await task_created(client)
    await wait_requests(receiver, 2, "/doomed")
    r = await client.delete(f"{API}/{doomed['id']}", headers=ADMIN)
    assert r.status_code == 200, r.text
    await task_created(client)
    await wait_deliveries(client, witness["id"], 2)
    before = len(receiver.requests("/doomed"))
    # Several retry periods pass while the witness keeps getting events.
    for _ in range(3):
        await task_created(client)
        await asyncio.sleep(0.1)
    await wait_deliveries(client, witness["id"], 5)
    assert len(receiver.requests("/doomed")) == before


# --- any body ---------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
URLS = st.sampled_from(["http://127.0.0.1:9/h", "https://x.example/a?b=1", "http://[::1]:80/"])
PATTERNS = st.sampled_from(["task.*", "agent", "task.completed", "*", "*.status_changed"])
# A valid webhook, the same with one field replaced by anything, or anything at all.
GOOD = st.fixed_dictionaries(
    {"url": URLS},
    optional={
        "types": st.lists(PATTERNS, max_size=5),
        "secret": st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=16),
        "description": st.text(max_size=50),
        "active": st.booleans(),
    },
)
ANYTHING = (
    JSON_VALUES
    | st.text(max_size=40)
    | st.sampled_from(["ftp://x/", "http://", "Bad", "a,b", "", " "])
    | st.lists(st.text(max_size=12), max_size=4)
)
MUTATED = st.builds(
    lambda body, key, value: {**body, key: value},
    GOOD,
    st.sampled_from(["url", "types", "secret", "description", "active", "extra"]),
    ANYTHING,
)
WEBHOOK_BODIES = GOOD | MUTATED | JSON_VALUES


def test_any_body_gets_a_webhook_or_a_4xx(tmp_path: Path) -> None:
    async def post(client: httpx.AsyncClient, body: Any) -> bool:
        r = await client.post(API, json=body, headers=ADMIN)
        assert r.status_code < 500, r.text
        if r.status_code != 201:
            assert_error(r, r.status_code, None)
            return False
        hook = r.json()["webhook"]
        assert await get_webhook(client, hook["id"]) == hook
        assert hook["url"] == body["url"]
        return True

    with asyncio.Runner() as runner:
        settings = make_settings(tmp_path, None)
        runtime = Runtime.build(settings, background=False)
        runner.run(runtime.__aenter__())
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app_for(runtime)), base_url="http://dispatchd.test"
        )
        outcomes: list[bool] = []
        try:

            @hsettings(
                max_examples=200,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(body=WEBHOOK_BODIES)
            def check(body: Any) -> None:
                outcomes.append(runner.run(post(client, body)))

            check()
            assert outcomes.count(True) >= 10 and outcomes.count(False) >= 10, outcomes
        finally:
            runner.run(client.aclose())
            runner.run(runtime.__aexit__(None, None, None))
