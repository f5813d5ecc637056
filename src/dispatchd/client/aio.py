"""`AsyncClient`: the whole dispatchd API over `httpx.AsyncClient`."""

from __future__ import annotations

from types import TracebackType

from dispatchd.client._admin import AdminApi
from dispatchd.client._agents import AgentsApi
from dispatchd.client._events import EventsApi
from dispatchd.client._rooms import RoomsApi
from dispatchd.client._schedules import SchedulesApi
from dispatchd.client._tasks import TasksApi

__all__ = ["AsyncClient"]


class AsyncClient(TasksApi, AgentsApi, RoomsApi, EventsApi, AdminApi, SchedulesApi):
    """An asynchronous client of one dispatchd server.

    ```python
    async with AsyncClient("http://127.0.0.1:8600", agent_id="worker-1") as client:
        await client.register_agent(capabilities=["python"])
        claim = await client.claim(wait_s=20)
    ```

    Every request carries `X-Agent-ID: agent_id`. `token` (the agent's token, kept from
    `register_agent` when not given) and `admin_token` go as `Authorization: Bearer`:
    the admin token on admin routes, the agent token elsewhere. Calls that fail to
    connect, and idempotent calls whose connection breaks or that get 502/503/504, are
    retried `retries` times with exponential backoff (`backoff_base` doubling up to
    `backoff_cap` seconds, with full jitter). `transport` replaces the network (tests,
    ASGI apps).
    """

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
