"""`AsyncClient`: the whole dispatchd API over `httpx.AsyncClient`."""

from __future__ import annotations

from types import TracebackType

import anyio

from dispatchd.client._admin import AdminApi
from dispatchd.client._agents import AgentsApi
from dispatchd.client._events import EventsApi
from dispatchd.client._rooms import RoomsApi
from dispatchd.client._schedules import SchedulesApi
from dispatchd.client._tasks import TasksApi
from dispatchd.client.models import TaskDetail, TaskStatus

__all__ = ["AsyncClient"]

END_STATES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)
# The longest wait of one long-poll read (the server's bound).
LONG_POLL_S = 60.0


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

    # `timeout` rather than a cancel scope: the blocking `Client.wait_for` shares this
    # signature, and a caller there has no scope to set.
    async def wait_for(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        changed: bool = False,
    ) -> TaskDetail:
        """Wait until the task reaches an end state (completed, failed, timed out,
        cancelled), or with `changed` until anything happens to it, and return it.

        Follows the task's events with the long-poll read (no polling loop): the call
        costs one request per change of the task, or per minute when nothing happens.
        Raises `TimeoutError` when `timeout` seconds pass first (None: no limit)."""
        # The log's head first, then the task: a change between the two is then seen.
        cursor = (await self.read_events("latest", limit=1)).next_cursor
        task = await self.get_task(task_id)
        if not changed and task.status in END_STATES:
            return task
        clock = anyio.current_time
        deadline = None if timeout is None else clock() + timeout
        while True:
            wait_s = LONG_POLL_S
            if deadline is not None:
                wait_s = min(wait_s, deadline - clock())
                if wait_s <= 0:
                    raise TimeoutError(f"task {task_id} is still {task.status} after {timeout:g}s")
            page = await self.read_events(cursor, task=task_id, wait_s=wait_s, limit=1000)
            cursor = page.next_cursor
            if not page.events:
                continue
            task = await self.get_task(task_id)
            if changed or task.status in END_STATES:
                return task

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
