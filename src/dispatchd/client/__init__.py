"""The Python SDK of dispatchd: `Client` (blocking) and `AsyncClient` (asyncio/anyio),
typed results in `dispatchd.client.models`, and one exception tree (`ClientError`)."""

from __future__ import annotations

from dispatchd.client.aio import AsyncClient
from dispatchd.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    Gone,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    StaleAttempt,
    TransportError,
    Unauthorized,
)
from dispatchd.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
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
]
