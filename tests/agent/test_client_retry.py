"""Retries of the SDK: which failures are retried, how many times, and that a retried
`create_task` never creates twice.

The policy tests run over fake transports (the retry loop is our own plumbing); the
dropped-response tests put a wrapper around the real transport to a live server, and
the restart test stops and starts a real server on a fixed port.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatchd.client import (
    AsyncClient,
    Client,
    RateLimited,
    ServerError,
    TransportError,
)
from dispatchd.client._http import HttpBase, RetryPolicy
from dispatchd.client.models import Agent
from tests.agent.conftest import LiveServer
from tests.agent.helpers import task_json
from tests.integration.server import ServerProcess

TASK_JSON = task_json(id="t1", title="t")
DETAIL_JSON = {**TASK_JSON, "attempts": [], "progress_log": [], "comments": []}

Answer = httpx.Response | Exception


class Script:
    """A fake server: answers (or raises) from a list, one per request, and records the
    requests."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **kwargs: Any) -> AsyncClient:
        kwargs.setdefault("retries", 3)
        kwargs.setdefault("backoff_base", 0.001)
        kwargs.setdefault("backoff_cap", 0.01)
        return AsyncClient(
            "http://dispatchd.test", agent_id="a", transport=httpx.MockTransport(self), **kwargs
        )


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def error(status: int, code: str = "x", **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": "m", "details": {}}}
    return httpx.Response(status, json=body, headers=headers)


def connect_error() -> httpx.ConnectError:
    return httpx.ConnectError("connection refused")


# --- the policy -------------------------------------------------------------------------


async def test_connect_errors_are_retried_for_any_call() -> None:
    script = Script(connect_error(), httpx.ConnectTimeout("slow"), ok(TASK_JSON))
    async with script.client() as client:
        task = await client.complete_task("t1", "result")  # a POST without a key
    assert task.id == "t1" and len(script.requests) == 3


async def test_connect_errors_give_up_after_the_retries() -> None:
    script = Script(*[connect_error() for _ in range(3)])
    async with script.client(retries=2) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_task("t1")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(script.requests) == 3


async def test_a_read_error_is_retried_for_an_idempotent_call() -> None:
    script = Script(httpx.ReadError("reset"), httpx.ReadTimeout("slow"), ok(DETAIL_JSON))
    async with script.client() as client:
        detail = await client.get_task("t1")
    assert detail.attempts == [] and len(script.requests) == 3


async def test_a_read_error_is_not_retried_for_a_post_without_key() -> None:
    script = Script(httpx.ReadError("reset"), ok(TASK_JSON))
    async with script.client() as client:
        with pytest.raises(TransportError) as caught:
            await client.complete_task("t1")
    assert isinstance(caught.value.__cause__, httpx.ReadError)
    assert len(script.requests) == 1


async def test_gateway_errors_are_retried_only_when_idempotent() -> None:
    script = Script(error(503), error(502), ok(DETAIL_JSON))
    async with script.client() as client:
        await client.get_task("t1")
    assert len(script.requests) == 3

    script = Script(error(503, "store_unavailable"), ok(TASK_JSON))
    async with script.client() as client:
        with pytest.raises(ServerError) as caught:
            await client.report_progress("t1", "m")
    assert caught.value.status == 503 and caught.value.code == "store_unavailable"
    assert len(script.requests) == 1

    script = Script(error(500), ok(DETAIL_JSON))
    async with script.client() as client:
        with pytest.raises(ServerError):
            await client.get_task("t1")
    assert len(script.requests) == 1  # a plain 500 is not a transient gateway answer


async def test_create_task_is_retried_with_the_same_key() -> None:
    script = Script(httpx.ReadError("reset"), error(504), ok(TASK_JSON, 200))
    async with script.client() as client:
        await client.create_task("t")
    keys = [r.headers["Idempotency-Key"] for r in script.requests]
    assert len(keys) == 3 and len(set(keys)) == 1

    script = Script(ok(TASK_JSON, 201), ok(TASK_JSON, 201))
    async with script.client() as client:
        await client.create_task("t", idempotency_key="mine")
        await client.create_task("t")
    assert script.requests[0].headers["Idempotency-Key"] == "mine"
    assert script.requests[1].headers["Idempotency-Key"] != "mine"


async def test_rate_limited_calls_wait_for_retry_after() -> None:
    script = Script(error(429, "rate_limited", **{"Retry-After": "0"}), ok(TASK_JSON))
    async with script.client() as client:
        await client.complete_task("t1")
    assert len(script.requests) == 2

    script = Script(error(429, "rate_limited", **{"Retry-After": "3600"}))
    async with script.client() as client:
        with pytest.raises(RateLimited) as caught:
            await client.complete_task("t1")
    assert caught.value.retry_after == 3600 and len(script.requests) == 1


async def test_rate_limited_calls_are_retried_past_the_retry_count() -> None:
    """A 429 was refused unprocessed: waiting it out is safe, so a busy limit does not make
    a call fail after `retries` tries, only a wait longer than `max_retry_after` does."""
    limited = [error(429, "rate_limited", **{"Retry-After": "0"}) for _ in range(8)]
    script = Script(*limited, ok(TASK_JSON))
    async with script.client(retries=3) as client:
        await client.complete_task("t1")
    assert len(script.requests) == 9


def test_rate_limited_waits_are_jittered_and_bounded() -> None:
    http = HttpBase.__new__(HttpBase)
    http.retry = RetryPolicy(max_retry_after=60.0)
    limited = RateLimited(429, "rate_limited", "slow down", {})
    limited.retry_after = 2.0
    waits = {http.retry_wait(limited, False, 0) for _ in range(50)}
    assert all(2.0 <= w <= 2.5 for w in waits) and len(waits) > 1
    assert http.retry_wait(limited, False, 0, waited=59.0) is None
    assert http.retry_wait(limited, False, 30) is None


async def test_no_retries_when_disabled() -> None:
    script = Script(connect_error())
    async with script.client(retries=0) as client:
        with pytest.raises(TransportError):
            await client.get_task("t1")
    assert len(script.requests) == 1


def test_backoff_is_full_jitter_under_a_cap() -> None:
    policy = RetryPolicy(retries=10, base=0.2, cap=5.0)
    for retry in range(10):
        bound = min(5.0, 0.2 * 2**retry)
        draws = [policy.delay(retry) for _ in range(200)]
        assert all(0 <= d <= bound for d in draws)
        assert max(draws) > bound / 2  # spread over the range, not fixed


async def test_a_body_not_in_the_error_form_still_gives_a_clear_error() -> None:
    page = httpx.Response(
        502, text="<html>Bad Gateway</html>", headers={"content-type": "text/html"}
    )
    script = Script(page)
    async with script.client() as client:
        with pytest.raises(ServerError) as caught:
            await client.complete_task("t1")
    error = caught.value
    assert error.status == 502 and error.code == "http_502"
    assert "Bad Gateway" in error.message and error.details["body"].startswith("<html>")

    script = Script(httpx.Response(418, text=""))
    async with script.client() as client:
        with pytest.raises(Exception) as teapot:
            await client.complete_task("t1")
    assert type(teapot.value).__name__ == "ApiError" and "418" in str(teapot.value)


async def test_credentials_per_route() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/stats":
            return ok({})
        return ok(DETAIL_JSON)

    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    transport = httpx.MockTransport(record)
    async with AsyncClient(
        "http://d.test",
        agent_id="ag",
        token="agent-tok",
        admin_token="admin-tok",
        transport=transport,
    ) as both:
        await both.get_task("t1")
        await both.stats()
    async with AsyncClient(
        "http://d.test", agent_id="op", admin_token="admin-tok", transport=transport
    ) as operator:
        await operator.get_task("t1")
    async with AsyncClient("http://d.test", agent_id="anon", transport=transport) as anon:
        await anon.get_task("t1")
    assert [(r.headers["X-Agent-ID"], r.headers.get("Authorization")) for r in seen] == [
        ("ag", "Bearer agent-tok"),
        ("ag", "Bearer admin-tok"),
        ("op", "Bearer admin-tok"),
        ("anon", None),
    ]


# --- against a real server --------------------------------------------------------------


class DropResponses(httpx.AsyncBaseTransport):
    """The real transport, except that the first response to a matching request is
    read and then lost, as when a connection breaks after the server has answered."""

    def __init__(self, matches: Callable[[httpx.Request], bool], drops: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.matches = matches
        self.drops = drops
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.matches(request):
            self.seen.append(request)
            if self.drops > 0:
                self.drops -= 1
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("connection lost after the server answered", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_create_task_retried_after_a_lost_response_creates_once(
    live_server: LiveServer, unique: str
) -> None:
    tag = f"once-{unique}"
    transport = DropResponses(lambda r: r.method == "POST" and r.url.path == "/api/v1/tasks")
    async with AsyncClient(
        live_server.url, agent_id=f"req-{unique}", transport=transport, backoff_base=0.01
    ) as client:
        task = await client.create_task("only once", capabilities=[tag])
        found = await client.list_tasks(capability=tag)
    assert len(transport.seen) == 2  # the lost one and its retry
    assert [t.id for t in found.items] == [task.id]


async def test_a_post_without_key_is_not_retried_after_a_lost_response(
    live_server: LiveServer, unique: str
) -> None:
    tag = f"lost-{unique}"
    transport = DropResponses(lambda r: r.url.path.endswith("/progress"))
    async with AsyncClient(
        live_server.url, agent_id=f"worker-{unique}", transport=transport, backoff_base=0.01
    ) as worker:
        await worker.register_agent(capabilities=[tag])
        task = await worker.create_task("progress", capabilities=[tag])
        await worker.claim()
        with pytest.raises(TransportError) as caught:
            await worker.report_progress(task.id, "step 1")
        assert isinstance(caught.value.__cause__, httpx.ReadError)
        detail = await worker.get_task(task.id)
    assert len(transport.seen) == 1
    assert [p.message for p in detail.progress_log] == ["step 1"]  # handled, once


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RecordConnectErrors(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.inner.handle_async_request(request)
        except httpx.ConnectError:
            self.refused.set()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_client_recovers_when_the_server_comes_back(tmp_path: Path, unique: str) -> None:
    """A call made while the server is down keeps trying and succeeds once it is back
    on the same port (a POST: a refused connection never reached the server)."""
    port = free_port()
    server = ServerProcess(tmp_path / "server", env={"DISPATCH_PORT": str(port)})
    transport = RecordConnectErrors()
    results: list[Agent | BaseException] = []
    with server:
        client = Client(
            server.api_url,
            agent_id=f"back-{unique}",
            # About a minute of retries (0.125 s apiece on average): longer than a restart
            # takes on a busy machine (ServerProcess gives a start 30 s).
            retries=500,
            backoff_base=0.05,
            backoff_cap=0.25,
            transport=transport,
        )
        with client:
            client.register_agent()
            server.stop()

            def beat() -> None:
                try:
                    results.append(client.heartbeat())
                except BaseException as exc:
                    results.append(exc)

            caller = threading.Thread(target=beat)
            caller.start()
            assert transport.refused.wait(20), "the call should first find the server down"
            server.start()
            # The call ends before the client is closed: closing it under a call in flight
            # could leave the connection that call opens behind.
            caller.join(150)
    assert len(results) == 1 and isinstance(results[0], Agent), results
    assert results[0].id == f"back-{unique}"
