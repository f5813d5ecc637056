"""Per-caller rate limits: a token bucket per X-Agent-ID; over it, 429 in the error form
with Retry-After; other callers, the admin and heartbeats unaffected; off by default."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dispatchd.config import LimitsConfig, load_settings
from dispatchd.limits import Limiter
from dispatchd.runtime import Runtime
from tests.api.conftest import as_agent
from tests.api.helpers import ADMIN, Register, assert_error

# Half a request per second: three calls in a row always find the bucket of two empty.
LIMITS = {"limits": {"requests_per_second": 0.5, "burst": 2}}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return LIMITS


async def test_a_caller_over_its_limit_gets_429_with_retry_after(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    for _ in range(2):
        r = await client.get("/api/v1/tasks", headers=as_agent("greedy"))
        assert r.status_code == 200, r.text
    r = await client.post("/api/v1/tasks", json={"title": "one more"}, headers=as_agent("greedy"))
    error = assert_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    assert 0 < error["details"]["retry_after_s"] <= 2
    assert error["details"]["requests_per_second"] == 0.5
    assert "greedy" in error["message"]
    # Refused unprocessed: the task was not created.
    r = await client.get("/api/v1/tasks", headers=ADMIN)
    assert [t["title"] for t in r.json()["items"]] == []
    # Another caller has a bucket of its own.
    r = await client.get("/api/v1/tasks", headers=as_agent("modest"))
    assert r.status_code == 200


async def test_the_admin_and_heartbeats_are_exempt(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")  # the registration spends one of w1's two
    for _ in range(6):
        r = await client.post("/api/v1/agents/w1/heartbeat", json={}, headers=as_agent("w1"))
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v1/agents", headers=ADMIN)).status_code == 200
    # Its other calls are limited as ever.
    assert (await client.get("/api/v1/tasks", headers=as_agent("w1"))).status_code == 200
    r = await client.get("/api/v1/tasks", headers=as_agent("w1"))
    assert_error(r, 429, "rate_limited")


async def test_a_wrong_admin_token_is_not_exempt(client: httpx.AsyncClient) -> None:
    wrong = {**as_agent("eve"), "Authorization": "Bearer not-the-admin-token-at-all"}
    codes = [(await client.get("/api/v1/tasks", headers=wrong)).status_code for _ in range(3)]
    assert codes == [401, 401, 429]


def test_limits_are_off_by_default_and_set_by_the_environment() -> None:
    assert not Limiter(load_settings(env={}).limits).enabled
    env = {"DISPATCH_LIMITS__REQUESTS_PER_SECOND": "5", "DISPATCH_LIMITS__BURST": "20"}
    limits = load_settings(env=env).limits
    assert limits == LimitsConfig(requests_per_second=5, burst=20)


def test_the_bucket_refills_at_the_rate() -> None:
    now = [100.0]
    limiter = Limiter(LimitsConfig(requests_per_second=2, burst=3), clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0  # another caller
    now[0] += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 60  # refills up to the burst, no further
    assert [limiter.take("a") for _ in range(4)][:3] == [0, 0, 0]
    assert Limiter(LimitsConfig(requests_per_second=2)).burst == 2


def test_idle_buckets_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    import dispatchd.limits as limits

    monkeypatch.setattr(limits, "PRUNE_AT", 3)
    now = [0.0]
    limiter = Limiter(LimitsConfig(requests_per_second=1, burst=1), clock=lambda: now[0])
    for caller in "abc":
        limiter.take(caller)
    now[0] += 10
    limiter.take("d")
    assert set(limiter._buckets) == {"d"}
