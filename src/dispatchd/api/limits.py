"""Rate limits: a token bucket per caller (its `X-Agent-ID`), before any route runs.

Each caller's bucket holds `limits.burst` requests and refills at
`limits.requests_per_second`; a request that finds it empty is answered 429 in the API's
error form with `Retry-After`, unprocessed, and no other caller is affected. The admin (its
token) and heartbeats are exempt: the one must always be able to act, and a heartbeat held
back would have a live agent marked offline. With no limit configured the middleware only
reads one setting per request. Buckets live in the replica's memory: each replica limits
on its own.
"""

from __future__ import annotations

import math
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from dispatchd.api.errors import error_response
from dispatchd.engine.agents import tokens_equal
from dispatchd.runtime import Runtime

_HEARTBEAT = re.compile(r"^/api/v1/agents/[^/]+/heartbeat/?$")


class RateLimit:
    """The ASGI middleware; it finds the runtime's limiter (and admin token) at each
    request, as the app may be pointed at another runtime."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = _runtime(scope)
        limiter = runtime.limiter if runtime is not None else None
        if (
            scope["type"] != "http"
            or runtime is None
            or limiter is None
            or not limiter.enabled
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        agent_id = headers.get(b"x-agent-id", b"").decode("latin-1")
        if (
            not agent_id  # refused as unauthenticated anyway
            or (scope["method"] == "POST" and _HEARTBEAT.match(scope["path"]))
            or _is_admin(headers.get(b"authorization"), runtime.admin.value)
        ):
            await self.app(scope, receive, send)
            return
        wait_s = limiter.take(agent_id)
        if wait_s <= 0:
            await self.app(scope, receive, send)
            return
        response = error_response(
            429,
            "rate_limited",
            f"{agent_id} is over its rate limit of {limiter.rate:g} requests per second; "
            f"retry in {wait_s:.2f}s",
            retry_after_s=round(wait_s, 3),
            requests_per_second=limiter.rate,
            burst=int(limiter.burst),
        )
        # Whole seconds, as HTTP says, rounded up: a client that waits that long gets in.
        response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
        await response(scope, receive, send)


def _runtime(scope: Scope) -> Runtime | None:
    app = scope.get("app")
    runtime: Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
    return runtime


def _is_admin(authorization: bytes | None, admin_token: str) -> bool:
    if authorization is None:
        return False
    scheme, _, value = authorization.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and tokens_equal(value.strip(), admin_token)
