"""The HTTP plumbing under the SDK: headers, retries with backoff, errors.

Which failures are retried:
- a connection that could not be made (the request never left): any call;
- a broken connection, a read timeout, or a 502/503/504 answer: only idempotent calls
  (GET, PUT, DELETE, and POSTs carrying an `Idempotency-Key`);
- a 429 answer: any call (the server refused it unprocessed), after its `Retry-After`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict, TypeVar

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from dispatchd.client.errors import ApiError, ClientError, RateLimited, TransportError, api_error
from dispatchd.client.models import Page

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8600"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
# Failures where the request certainly never reached the server.
NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more tries after the first; waits grow exponentially from `base` up to
    `cap` seconds, each drawn at random below that bound ("full jitter")."""

    retries: int = 3
    base: float = 0.2
    cap: float = 5.0
    # A 429 asking to wait longer than this is raised instead of waited for.
    max_retry_after: float = 60.0
    # A 429 was refused unprocessed, so waiting it out is always safe: it is retried up to
    # this many times (not `retries`), while the waits add up to at most `max_retry_after`.
    rate_limited_retries: int = 30

    def delay(self, retry: int) -> float:
        return random.uniform(0.0, min(self.cap, self.base * 2**retry))


def retry_after(response: httpx.Response) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds (delta or HTTP date)."""
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_of(response: httpx.Response) -> ApiError:
    error = api_error(response.status_code, response.content, response.reason_phrase)
    if isinstance(error, RateLimited):
        error.retry_after = retry_after(response)
    return error


def compact(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` without the entries that are None (left out of a body or a query)."""
    return {k: v for k, v in values.items() if v is not None}


class ClientOptions(TypedDict, total=False):
    """The client's optional settings (see `HttpBase`), for what passes them on."""

    token: str | None
    admin_token: str | None
    timeout: float
    retries: int
    backoff_base: float
    backoff_cap: float
    transport: httpx.AsyncBaseTransport | None


class HttpBase:
    """The connection and credentials shared by the areas of the async client."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        agent_id: str,
        token: str | None = None,
        admin_token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.token = token
        self.admin_token = admin_token
        self.timeout = timeout
        self.retry = RetryPolicy(retries=retries, base=backoff_base, cap=backoff_cap)
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    def headers(self, *, admin: bool = False) -> dict[str, str]:
        """`X-Agent-ID` always; the admin token on admin routes when the client has one,
        otherwise the agent token, otherwise (an operator's client) the admin token."""
        headers = {"X-Agent-ID": self.agent_id}
        bearer = (self.admin_token or self.token) if admin else (self.token or self.admin_token)
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return headers

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        admin: bool = False,
        wait_s: float = 0.0,
    ) -> httpx.Response:
        """Send a request with the retries it allows; a 2xx answer or an error raised."""
        all_headers = self.headers(admin=admin)
        all_headers.update(headers or {})
        idempotent = method in IDEMPOTENT_METHODS or "Idempotency-Key" in all_headers
        timeout = self.timeout + wait_s
        retry = 0
        waited = 0.0
        while True:
            try:
                response = await self._http.request(
                    method,
                    path,
                    params=compact(params or {}),
                    json=json,
                    headers=all_headers,
                    timeout=timeout,
                )
            except httpx.HTTPError as exc:
                retryable = isinstance(exc, NOT_SENT) or (
                    idempotent and isinstance(exc, httpx.TransportError)
                )
                if not retryable or retry >= self.retry.retries:
                    raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                await anyio.sleep(self.retry.delay(retry))
                retry += 1
                continue
            if response.is_success:
                return response
            error = error_of(response)
            wait = self.retry_wait(error, idempotent, retry, waited)
            if wait is None:
                raise error
            await anyio.sleep(wait)
            waited += wait
            retry += 1

    def retry_wait(
        self, error: ApiError, idempotent: bool, retry: int, waited: float = 0.0
    ) -> float | None:
        """How long to wait before retrying a call answered with `error` (after `retry`
        retries that waited `waited` seconds in all); None: do not."""
        if isinstance(error, RateLimited):
            if retry >= self.retry.rate_limited_retries:
                return None
            if error.retry_after is None:
                wait = self.retry.delay(retry)
            else:
                # A little later than asked, at random: the calls refused together do not
                # all come back in the same instant.
                wait = error.retry_after * random.uniform(1.0, 1.25)
            if error.retry_after is not None and error.retry_after > self.retry.max_retry_after:
                return None
            return wait if waited + wait <= self.retry.max_retry_after else None
        if retry >= self.retry.retries:
            return None
        if idempotent and error.status in RETRY_STATUSES:
            return self.retry.delay(retry)
        return None

    async def call(
        self,
        model: type[M],
        method: str,
        path: str,
        **kwargs: Any,
    ) -> M:
        """Send a request and read its answer as `model`."""
        response = await self.send(method, path, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ClientError(f"{method} {path}: unexpected answer: {exc}") from exc

    async def call_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return its answer as plain JSON."""
        response = await self.send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(f"{method} {path}: the answer is not JSON") from exc


async def pages(
    fetch: Callable[[str | None], Awaitable[Page[T]]],
) -> AsyncGenerator[T, None]:
    """Every item of a listing, page after page, from `fetch(cursor)`."""
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        for item in page.items:
            yield item
        if page.next_cursor is None or not page.items:
            return
        cursor = page.next_cursor
