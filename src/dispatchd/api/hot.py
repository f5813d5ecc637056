"""The hot routes, answered without FastAPI's per-request machinery.

On this machine a request through FastAPI costs the server about 0.2 ms of CPU in the
framework's own layers (its router walking the included routers, solving dependencies,
its middleware) against 0.06 ms for a bare Starlette endpoint (bench/README.md, "The
HTTP layer"). For a claim, a completion or a heartbeat that is a third of the request.

`HotRoutes` sits inside the app's own middleware (metrics, rate limit, body guard) and
takes the requests of a few routes before FastAPI's router does. It calls the route's own
endpoint with the same arguments FastAPI would build, using FastAPI's own functions for
the body and the answer: the body validated by the route's body field
(`request_body_to_args`), the answer checked and serialised by its response field
(`serialize_response`). A failure goes to the app's exception handlers, as one raised
under FastAPI's router would. The route stays registered with FastAPI: `/openapi.json`
describes it, and a request this layer does not take (another method) reaches it there.

Only a route whose parameters this layer knows is taken: `str` path parameters, the
caller (`CallerDep`), the runtime (`RuntimeDep`) and at most one JSON body model. Any
other parameter (a query or a header, a `Response`, another dependency) or a response
class of its own makes `hot_route` refuse the route when the app is built.

These are FastAPI's internals, not its public API: `pyproject.toml` holds FastAPI to the
one minor release the tests pass on (`tests/api/test_hot_routes.py` compares every hot
answer with FastAPI's own).
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.utils import request_body_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, serialize_response
from pydantic_core import PydanticUndefined
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dispatchd.api.auth import authenticate, runtime_of
from dispatchd.api.guard import PARSED


class NotHot(ValueError):
    """A route whose parameters the hot path cannot build."""


@dataclass(frozen=True)
class HotRoute:
    route: APIRoute
    method: str
    path_params: tuple[str, ...]
    caller: str | None
    runtime: str | None
    has_body: bool
    strict_content_type: bool


def hot_route(route: APIRoute) -> HotRoute:
    """`route` as the hot path serves it, or NotHot saying why it cannot."""
    d = route.dependant
    refused = [
        name
        for name, present in (
            ("query parameters", d.query_params),
            ("header parameters", d.header_params),
            ("cookie parameters", d.cookie_params),
            ("a Request parameter", d.request_param_name),
            ("a Response parameter", d.response_param_name),
            ("background tasks", d.background_tasks_param_name),
            ("security scopes", d.security_scopes_param_name),
            (
                "a response class of its own",
                not isinstance(route.response_class, DefaultPlaceholder),
            ),
            ("no response model", route.response_field is None),
            ("not one method", len(route.methods or ()) != 1),
            ("an embedded body", len(d.body_params) > 1 or route._embed_body_fields),
        )
        if present
    ]
    for field in d.path_params:
        if field.field_info.annotation is not str or field.field_info.metadata:
            refused.append(f"path parameter {field.name} is not a plain str")
    caller = runtime = None
    for sub in d.dependencies:
        if sub.call is authenticate and not sub.dependencies:
            caller = sub.name
        elif sub.call is runtime_of and not sub.dependencies:
            runtime = sub.name
        else:
            refused.append(f"dependency {sub.name or sub.call!r}")
    if refused:
        raise NotHot(f"{route.path} cannot be served hot: {', '.join(refused)}")
    strict = route.strict_content_type
    return HotRoute(
        route=route,
        method=next(iter(route.methods or ())),
        path_params=tuple(f.name for f in d.path_params),
        caller=caller,
        runtime=runtime,
        has_body=bool(d.body_params),
        strict_content_type=strict.value if isinstance(strict, DefaultPlaceholder) else strict,
    )


class HotRoutes:
    """ASGI middleware: the requests of `routes` go straight to their endpoints."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.routes = [hot_route(route) for route in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for hot in self.routes:
                if scope["method"] != hot.method:
                    continue
                match = hot.route.path_regex.match(scope["path"])
                if match is not None:
                    await self._serve(hot, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, hot: HotRoute, path: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        route = hot.route
        scope["route"] = route  # what the request metrics name the request by
        scope["endpoint"] = route.endpoint
        scope["path_params"] = path
        request = Request(scope, receive)
        try:
            values: dict[str, Any] = {name: path[name] for name in hot.path_params}
            if hot.caller is not None:
                values[hot.caller] = await authenticate(request)
            if hot.runtime is not None:
                values[hot.runtime] = await runtime_of(request)
            if hot.has_body:
                body = await _body(request, hot.strict_content_type)
                found, errors = await request_body_to_args(
                    route.dependant.body_params, body, route._embed_body_fields
                )
                if errors:
                    raise RequestValidationError(errors, body=body)
                values.update(found)
            answer = await route.endpoint(**values)
            content = await serialize_response(
                field=route.response_field, response_content=answer, dump_json=True
            )
            response = Response(
                content=content, status_code=route.status_code or 200, media_type="application/json"
            )
        except Exception as exc:
            handler = _handler(scope, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


async def _body(request: Request, strict_content_type: bool) -> Any:
    """The body as FastAPI's route reads it: JSON when the content type says so (or,
    unless strict, says nothing), the raw bytes otherwise, and nothing for no body."""
    raw = await request.body()
    if not raw:
        return PydanticUndefined  # FastAPI's mark of a body not sent
    content_type = request.headers.get("content-type")
    if not content_type:
        is_json = not strict_content_type
    else:
        message = email.message.Message()
        message["content-type"] = content_type
        subtype = message.get_content_subtype()
        is_json = message.get_content_maintype() == "application" and (
            subtype == "json" or subtype.endswith("+json")
        )
    if not is_json:
        return raw
    parsed = request.scope.get(PARSED)
    if parsed is not None and parsed[0] == raw:
        return parsed[1]  # the body guard parsed these bytes already, more strictly
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from exc


def _handler(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Any] | None:
    """The app's handler for `exc`, as the exception middleware under the router finds
    it; None for what only the server-error middleware handles (a 500)."""
    handlers: dict[Any, Callable[[Request, Exception], Any]] = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
