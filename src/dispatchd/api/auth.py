"""Who is calling: `X-Agent-ID` on every request, bearer tokens for admins and agents."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request

from dispatchd.domain.access import Caller
from dispatchd.engine.agents import tokens_equal
from dispatchd.errors import Unauthorized
from dispatchd.runtime import Runtime

_AGENT_ID = re.compile(r"^[A-Za-z0-9#@][A-Za-z0-9._:@#/+-]{0,127}$")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def runtime_of(request: Request) -> Runtime:
    # A coroutine, so that FastAPI runs it on the loop; a plain function dependency would
    # cost every request a hop to the thread pool.
    return _runtime(request)


async def authenticate(request: Request) -> Caller:
    agent_id = request.headers.get("x-agent-id")
    if not agent_id:
        raise Unauthorized("every request needs an X-Agent-ID header", code="missing_agent_id")
    if not _AGENT_ID.match(agent_id):
        raise Unauthorized(
            "X-Agent-ID must be 1-128 characters: letters, digits and ._:@#/+-",
            code="invalid_agent_id",
        )
    runtime = _runtime(request)
    token = _bearer(request)
    if token is not None and tokens_equal(token, runtime.admin.value):
        return Caller(agent_id, is_admin=True, authenticated=True)
    if token is not None:
        await runtime.agents.authenticate(agent_id, token)
        return Caller(agent_id, authenticated=True)
    if runtime.settings.auth.agent_tokens == "required":
        raise Unauthorized(
            "this server requires Authorization: Bearer <agent token>", code="token_required"
        )
    return Caller(agent_id)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", code="invalid_authorization")
    return value.strip()


CallerDep = Annotated[Caller, Depends(authenticate)]
RuntimeDep = Annotated[Runtime, Depends(runtime_of)]
