"""Event calls of the async client: the long-poll read and the SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable

import anyio
import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import ValidationError

from dispatchd.client._http import HttpBase, compact, error_of
from dispatchd.client.errors import ApiError, ClientError, ServerError, TransportError, api_error
from dispatchd.client.models import Event, EventPage

EVENTS = "/api/v1/events"

# The status of the errors a stream can end with (they come as an `error` event, after
# the stream's own 200).
_STREAM_STATUS = {
    "cursor_expired": 410,
    "gone": 410,
    "store_unavailable": 503,
    "validation_error": 422,
    "not_found": 404,
}


def types_param(types: str | Iterable[str] | None) -> str | None:
    if types is None or isinstance(types, str):
        return types
    return ",".join(types) or None


def stream_error(data: str) -> ApiError:
    """The error a stream ended with, from its `error` event."""
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    status = _STREAM_STATUS.get(code, 500) if isinstance(code, str) else 500
    return api_error(status, data)


class EventsApi(HttpBase):
    async def read_events(
        self,
        after: str | None = None,
        *,
        types: str | Iterable[str] | None = None,
        task: str | None = None,
        room: str | None = None,
        requester: str | None = None,
        wait_s: float = 0.0,
        limit: int = 100,
    ) -> EventPage:
        """The events after the cursor `after` (None: from the start; `latest`: from now),
        in order. With `wait_s`, an empty read waits that long for the next event.
        `types` are names (`task.completed`), globs (`task.*`) or families (`agent`);
        `task`, `room` and `requester` keep the events of one task, of one room's tasks
        (and the room's own events) and of the tasks one requester created."""
        params = {
            "after": after,
            "types": types_param(types),
            "wait_s": wait_s,
            "limit": limit,
            **compact({"task": task, "room": room, "requester": requester}),
        }
        return await self.call(EventPage, "GET", EVENTS, params=params, wait_s=wait_s)

    async def stream_events(
        self,
        after: str | None = None,
        *,
        types: str | Iterable[str] | None = None,
        task: str | None = None,
        room: str | None = None,
        requester: str | None = None,
        idle_timeout: float | None = 60.0,
    ) -> AsyncGenerator[Event, None]:
        """Follow the event log over Server-Sent Events, from after the cursor `after`
        (None: the start of what is kept; `latest`: the end of the log when the iteration
        starts).

        A dropped connection is reopened with `Last-Event-ID`, so the events continue
        with no gap and no duplicate; a stream silent for `idle_timeout` seconds (the
        server sends keep-alives well within that) counts as dropped. Reconnection uses
        the client's retries and backoff, counted afresh after each successful connect.
        An error the server ends the stream with (e.g. 410 `cursor_expired`) is raised.
        Filters as for `read_events`.
        """
        cursor = after
        if cursor == "latest":
            # Resolved now, so that a reconnection before the first event still resumes
            # from here rather than from a later "latest".
            cursor = (await self.read_events("latest", limit=1)).next_cursor
        params = compact(
            {"types": types_param(types), "task": task, "room": room, "requester": requester}
        )
        timeout = httpx.Timeout(self.timeout, read=idle_timeout)
        retry = 0
        while True:
            headers = self.headers()
            if cursor is not None:
                headers["Last-Event-ID"] = cursor
            failure: Exception | None = None
            wait: float | None = None
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    f"{EVENTS}/stream",
                    params=params,
                    headers=headers,
                    timeout=timeout,
                ) as source:
                    response = source.response
                    if not response.is_success:
                        await response.aread()
                        error = error_of(response)
                        wait = self.retry_wait(error, True, retry)
                        if wait is None:
                            raise error
                    else:
                        retry = 0
                        async for sse in source.aiter_sse():
                            if sse.event == "error":
                                error = stream_error(sse.data)
                                if not isinstance(error, ServerError):
                                    raise error
                                # A passing fault of the server (503): resume from here.
                                failure = error
                                break
                            if not sse.data:
                                continue
                            try:
                                event = Event.model_validate_json(sse.data)
                            except ValidationError as exc:
                                raise ClientError(
                                    f"the event stream sent an event that is not one: {exc}"
                                ) from exc
                            cursor = sse.id or event.id
                            yield event
            except (httpx.TransportError, SSEError) as exc:
                failure = exc
            if wait is None:
                # The stream ended or broke: reconnect after the last event seen.
                if retry >= self.retry.retries:
                    reason = f"{type(failure).__name__}: {failure}" if failure else "closed"
                    raise TransportError(f"event stream: {reason}") from failure
                wait = self.retry.delay(retry)
            await anyio.sleep(wait)
            retry += 1
