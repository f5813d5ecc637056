"""The exceptions the SDK raises. Every failure of a call is one of these.

ClientError
├── ApiError              the server answered with an error (`status`, `code`, `message`, `details`)
│   ├── BadRequest         400/422 input the server cannot accept
│   ├── Unauthorized       401 missing or wrong credentials
│   ├── Forbidden          403 known caller, not allowed
│   ├── NotFound           404 unknown id or route
│   ├── Conflict           409
│   │   ├── InvalidTransition  the task's state does not allow the action
│   │   └── StaleAttempt       the caller's attempt was taken away
│   ├── Gone               410 what was asked for is gone (an expired event cursor)
│   ├── PayloadTooLarge    413
│   ├── RateLimited        429 (`retry_after` in seconds when the server said)
│   └── ServerError        5xx
└── TransportError        the server could not be reached, or the connection failed
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "ClientError",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidTransition",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "StaleAttempt",
    "TransportError",
    "Unauthorized",
    "api_error",
]


class ClientError(Exception):
    """Base of every error the SDK raises."""


class TransportError(ClientError):
    """No answer from the server: the connection could not be made or broke, after the
    retries the call allows. The transport's own exception is the `__cause__`."""


class ApiError(ClientError):
    """The server answered with an error in its error form."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}


class BadRequest(ApiError):
    """400 or 422: the request was refused as invalid; `details` says why."""


class Unauthorized(ApiError):
    """401: missing or wrong `X-Agent-ID` or token."""


class Forbidden(ApiError):
    """403: the caller is known but may not do this."""


class NotFound(ApiError):
    """404: no such task, agent, webhook or route."""


class Conflict(ApiError):
    """409: the request conflicts with the current state."""


class InvalidTransition(Conflict):
    """409 `invalid_transition`: the task's state does not allow the action."""


class StaleAttempt(Conflict):
    """409 `stale_attempt`: the caller's attempt at the task is over."""


class Gone(ApiError):
    """410: what was asked for no longer exists, e.g. an event cursor pruned away."""


class PayloadTooLarge(ApiError):
    """413: the body is too large."""


class RateLimited(ApiError):
    """429: too many requests; `retry_after` is the wait the server asked for, if any."""

    retry_after: float | None = None


class ServerError(ApiError):
    """5xx: the server failed or is unavailable."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: BadRequest,
    429: RateLimited,
}

_BY_CODE: dict[str, type[ApiError]] = {
    "stale_attempt": StaleAttempt,
    "invalid_transition": InvalidTransition,
}


def _class_for(status: int, code: str) -> type[ApiError]:
    cls = _BY_STATUS.get(status)
    if cls is None:
        return ServerError if status >= 500 else ApiError
    special = _BY_CODE.get(code)
    if special is not None and issubclass(special, cls):
        return special
    return cls


def api_error(status: int, body: bytes | str | Any, reason: str = "") -> ApiError:
    """The fitting `ApiError` for an error answer. `body` is the raw body (bytes or text)
    or already parsed JSON; a body not in the error form still gives an error that says
    what came back."""
    parsed: Any = body
    if isinstance(body, bytes | str):
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message") or reason or code)
        details = error.get("details")
        return _class_for(status, code)(
            status, code, message, details if isinstance(details, dict) else {}
        )
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    text = text.strip()
    message = f"HTTP {status} {reason}".strip()
    if text:
        message = f"{message}: {text[:500]}"
    code = f"http_{status}"
    return _class_for(status, code)(status, code, message, {"body": text[:2000]} if text else {})
