"""Body guard: size limits and strict JSON, before any route sees the request.

Python's json module accepts what our stores cannot keep (NaN, Infinity, NUL characters,
lone surrogates) and fails with a RecursionError on deep nesting. The guard refuses all of
these with a 4xx in the API's error form, and a body over the limit with 413, so that no
input reaches a route that could turn it into a 5xx or a half-written record. A NUL in the
URL (a path id or a query filter) is refused too, for the same reason.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatchd.api.errors import error_response

MAX_DEPTH = 64
# Where the guard leaves the body it parsed, as (bytes, document), for a route that reads
# the same bytes as JSON (the hot routes) to take instead of parsing them again.
PARSED = "dispatchd.parsed_body"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BadJSON(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _reject_constant(name: str) -> Any:
    raise BadJSON("invalid_json", f"{name} is not valid JSON")


def _check_string(value: str) -> None:
    if "\x00" in value:
        raise BadJSON("invalid_string", "strings must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJSON("invalid_string", "strings must be valid Unicode") from None


def check_value(value: Any) -> None:
    """Walk a decoded document without recursion: depth, strings and numbers."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadJSON("invalid_json", f"JSON nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            _check_string(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadJSON("invalid_json", "numbers must be finite")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_string(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def parse_strict(body: bytes) -> Any:
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except BadJSON:
        raise
    except RecursionError:
        raise BadJSON("invalid_json", f"JSON nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJSON("invalid_json", f"the body is not valid JSON: {exc}") from None
    check_value(value)
    return value


_FORM = b"application/x-www-form-urlencoded"


def _is_json(content_type: bytes) -> bool:
    return content_type in (b"", b"application/json") or content_type.endswith(b"+json")


def _url_has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query


class BodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _url_has_nul(scope):
            # PostgreSQL text cannot hold NUL: an id or filter with one would fail in the store.
            response = error_response(
                422, "invalid_string", "the URL must not contain NUL characters"
            )
            await response(scope, receive, send)
            return
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            response = error_response(
                400, "invalid_content_length", "Content-Length must be a decimal byte count"
            )
            await response(scope, receive, send)
            return
        if length is not None and int(length) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if length is not None and int(length) != size:
            # Servers enforce Content-Length on the wire; a body that disagrees with it was
            # not framed by one, and which of the two to believe is a guess we refuse.
            response = error_response(
                400,
                "content_length_mismatch",
                f"the body has {size} bytes but Content-Length says {int(length)}",
                content_length=int(length),
                received=size,
            )
            await response(scope, receive, send)
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        # The dashboard's forms (outside /api/) post urlencoded; they are bounded above, and
        # their own routes read them.
        dashboard_form = content_type == _FORM and not scope["path"].startswith(("/api/", "/mcp"))
        if body and not dashboard_form and not _is_json(content_type):
            response = error_response(
                415,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
                content_type=content_type.decode("latin-1"),
            )
            await response(scope, receive, send)
            return
        if body and not dashboard_form:
            try:
                scope[PARSED] = (body, parse_strict(body))
            except BadJSON as exc:
                status = 422 if exc.code == "invalid_string" else 400
                await error_response(status, exc.code, str(exc))(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the body exceeds the limit of {self.max_body_bytes} bytes",
            limit=self.max_body_bytes,
        )
        await response(scope, receive, send)
