"""The exception tree of dispatchd. Each error knows its API code and HTTP status.

DispatchError
├── BadRequest            400/422 input that cannot be accepted
│   └── ValidationFailed   422
├── Unauthorized          401 missing or wrong credentials
├── Forbidden             403 known caller, not allowed
├── NotFound              404 unknown id
├── Conflict              409
│   ├── InvalidTransition  the task's state does not allow the action
│   ├── StaleAttempt       the caller's attempt was taken away
│   └── ConcurrentUpdate   the record changed under us (retried before surfacing)
├── Gone                  410 what was asked for was deleted (an expired cursor)
├── PayloadTooLarge       413
├── BudgetExceeded        429 a requester's daily budget is spent
└── StoreError            503 the database cannot be reached
"""

from __future__ import annotations

from typing import Any


class DispatchError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def as_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(DispatchError):
    status = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    status = 422
    code = "validation_error"


class Unauthorized(DispatchError):
    status = 401
    code = "unauthorized"


class Forbidden(DispatchError):
    status = 403
    code = "forbidden"


class NotFound(DispatchError):
    status = 404
    code = "not_found"


class Conflict(DispatchError):
    status = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, task_id: str, current: str, action: str) -> None:
        super().__init__(
            f"cannot {action.replace('_', ' ')} task {task_id}: it is {current}",
            task_id=task_id,
            current_state=str(current),
            action=action,
        )


class Gone(DispatchError):
    status = 410
    code = "gone"


class StaleAttempt(Conflict):
    code = "stale_attempt"


class ConcurrentUpdate(Conflict):
    code = "concurrent_update"


class AgentUnavailable(Conflict):
    """An agent cannot take a task now: at capacity, drained, offline, degraded or gone."""

    code = "agent_unavailable"


class PayloadTooLarge(DispatchError):
    status = 413
    code = "payload_too_large"


class BudgetExceeded(DispatchError):
    status = 429
    code = "budget_exceeded"


class StoreError(DispatchError):
    status = 503
    code = "store_unavailable"


class DuplicateKey(Conflict):
    """An insert met a unique key: an idempotency key or an id that already exists."""

    code = "duplicate"
