"""`Client`: the blocking client, the `AsyncClient` run on an event loop of its own.

Each method of `Client` is made from the `AsyncClient` method of the same name by
`_blocking` (async iterators by `_blocking_iter`), so the two can never differ in what
they take or return. The loop runs in a daemon thread owned by the client (serving an anyio
blocking portal) from construction until `close()`. A client that is never closed does not
keep its program from exiting, and one that is garbage-collected stops its loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from concurrent.futures import Future
from contextlib import suppress
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, Unpack

import anyio
from anyio.from_thread import BlockingPortal

from dispatchd.client._http import DEFAULT_URL, ClientOptions
from dispatchd.client.aio import AsyncClient

__all__ = ["Client"]

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Awaitable[R]],
) -> Callable[Concatenate[Client, P], R]:
    """The blocking form of an `AsyncClient` method."""

    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async def run() -> R:
            return await method(self.aio, *args, **kwargs)

        return self._portal.call(run)

    return call


def _blocking_iter(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[R]],
) -> Callable[Concatenate[Client, P], Generator[R, None, None]]:
    """The blocking form of an `AsyncClient` method that is an async iterator. Stopping
    early (`break`, or closing the iterator) closes the async one, and its connection."""

    @functools.wraps(method)
    def iterate(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Generator[R, None, None]:
        portal = self._portal
        items = portal.call(_start, method, self.aio, args, kwargs)
        try:
            while True:
                try:
                    yield portal.call(items.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            portal.call(_close, items)

    return iterate


async def _start(
    method: Callable[..., AsyncIterator[R]],
    client: AsyncClient,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncIterator[R]:
    # Created on the client's loop, so that the iterator belongs to it.
    return method(client, *args, **kwargs)


async def _close(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


class _LoopThread:
    """An event loop in a daemon thread, serving a blocking portal until stopped.

    Being a daemon thread, it never holds the interpreter at exit; `stop_soon` may be called
    from any thread (the loop's own included) and never waits.
    """

    def __init__(self) -> None:
        ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]] = Future()
        self._stopping: anyio.Event | None = None
        self._last: Callable[[], Awaitable[None]] | None = None
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="dispatchd-client-loop", daemon=True
        )
        self.thread.start()
        self.portal, self._loop = ready.result()

    def _run(self, ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]]) -> None:
        try:
            anyio.run(self._serve, ready)
        except BaseException as exc:
            if ready.done():
                raise
            ready.set_exception(exc)

    async def _serve(self, ready: Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]]) -> None:
        self._stopping = anyio.Event()
        async with BlockingPortal() as portal:
            ready.set_result((portal, asyncio.get_running_loop()))
            await self._stopping.wait()
            if self._last is not None:
                with suppress(Exception):
                    await self._last()

    def _request_stop(self, last: Callable[[], Awaitable[None]] | None) -> None:
        assert self._stopping is not None
        if not self._stopping.is_set():
            self._last = last
            self._stopping.set()

    def stop_soon(self, last: Callable[[], Awaitable[None]] | None = None) -> None:
        """Ask the loop to run `last` (if given) and stop; return at once."""
        with suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._request_stop, last)

    def stop(self) -> None:
        """Stop the loop and, unless called from it, wait for its thread to end."""
        self.stop_soon()
        if threading.current_thread() is not self.thread:
            self.thread.join()


def _release(loop: _LoopThread, aio: AsyncClient) -> None:
    """What a client that was never closed does when collected or at exit: its loop closes
    the connections and stops, without anyone waiting for it."""
    loop.stop_soon(aio.aclose)


class Client:
    """A blocking client of one dispatchd server, with the methods of `AsyncClient`.

    ```python
    with Client("http://127.0.0.1:8600", agent_id="worker-1") as client:
        task = client.create_task("Summarise the report", capabilities=["writing"])
    ```

    The arguments are those of `AsyncClient` (`transport` is an async transport: it runs
    on the client's own loop). Threads may share a `Client`: their calls run concurrently
    on the client's loop.
    """

    def __init__(
        self, base_url: str = DEFAULT_URL, *, agent_id: str, **options: Unpack[ClientOptions]
    ) -> None:
        self._loop = _LoopThread()
        self._portal = self._loop.portal

        async def make() -> AsyncClient:
            return AsyncClient(base_url, agent_id=agent_id, **options)

        try:
            self.aio = self._portal.call(make)
        except BaseException:
            self._loop.stop()
            raise
        self._finalizer = weakref.finalize(self, _release, self._loop, self.aio)

    @property
    def agent_id(self) -> str:
        return self.aio.agent_id

    @agent_id.setter
    def agent_id(self, value: str) -> None:
        self.aio.agent_id = value

    @property
    def token(self) -> str | None:
        return self.aio.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.aio.token = value

    @property
    def admin_token(self) -> str | None:
        return self.aio.admin_token

    @admin_token.setter
    def admin_token(self, value: str | None) -> None:
        self.aio.admin_token = value

    def close(self) -> None:
        """Close the connections and stop the client's loop thread. Closing again does
        nothing."""
        if not self._finalizer.detach():
            return
        try:
            self._portal.call(self.aio.aclose)
        finally:
            self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # tasks
    create_task = _blocking(AsyncClient.create_task)
    create_tasks = _blocking(AsyncClient.create_tasks)
    complete_tasks = _blocking(AsyncClient.complete_tasks)
    list_tasks = _blocking(AsyncClient.list_tasks)
    iter_tasks = _blocking_iter(AsyncClient.iter_tasks)
    get_task = _blocking(AsyncClient.get_task)
    explain_task = _blocking(AsyncClient.explain_task)
    task_events = _blocking(AsyncClient.task_events)
    update_task = _blocking(AsyncClient.update_task)
    cancel_task = _blocking(AsyncClient.cancel_task)
    claim = _blocking(AsyncClient.claim)
    claim_one = _blocking(AsyncClient.claim_one)
    start_task = _blocking(AsyncClient.start_task)
    report_progress = _blocking(AsyncClient.report_progress)
    complete_task = _blocking(AsyncClient.complete_task)
    fail_task = _blocking(AsyncClient.fail_task)
    request_input = _blocking(AsyncClient.request_input)
    provide_input = _blocking(AsyncClient.provide_input)
    add_comment = _blocking(AsyncClient.add_comment)
    review_task = _blocking(AsyncClient.review_task)
    retry_task = _blocking(AsyncClient.retry_task)
    wait_for = _blocking(AsyncClient.wait_for)
    # agents
    register_agent = _blocking(AsyncClient.register_agent)
    get_agent = _blocking(AsyncClient.get_agent)
    update_agent = _blocking(AsyncClient.update_agent)
    deregister_agent = _blocking(AsyncClient.deregister_agent)
    heartbeat = _blocking(AsyncClient.heartbeat)
    list_agents = _blocking(AsyncClient.list_agents)
    iter_agents = _blocking_iter(AsyncClient.iter_agents)
    drain_agent = _blocking(AsyncClient.drain_agent)
    undrain_agent = _blocking(AsyncClient.undrain_agent)
    # rooms
    create_room = _blocking(AsyncClient.create_room)
    list_rooms = _blocking(AsyncClient.list_rooms)
    iter_rooms = _blocking_iter(AsyncClient.iter_rooms)
    get_room = _blocking(AsyncClient.get_room)
    update_room = _blocking(AsyncClient.update_room)
    delete_room = _blocking(AsyncClient.delete_room)
    room_history = _blocking(AsyncClient.room_history)
    dispatch = _blocking(AsyncClient.dispatch)
    interrupt_room = _blocking(AsyncClient.interrupt_room)
    # events
    read_events = _blocking(AsyncClient.read_events)
    stream_events = _blocking_iter(AsyncClient.stream_events)
    # operations
    stats = _blocking(AsyncClient.stats)
    list_notifications = _blocking(AsyncClient.list_notifications)
    ack_notifications = _blocking(AsyncClient.ack_notifications)
    create_webhook = _blocking(AsyncClient.create_webhook)
    list_webhooks = _blocking(AsyncClient.list_webhooks)
    get_webhook = _blocking(AsyncClient.get_webhook)
    update_webhook = _blocking(AsyncClient.update_webhook)
    delete_webhook = _blocking(AsyncClient.delete_webhook)
    list_deliveries = _blocking(AsyncClient.list_deliveries)
    # schedules
    create_schedule = _blocking(AsyncClient.create_schedule)
    list_schedules = _blocking(AsyncClient.list_schedules)
    get_schedule = _blocking(AsyncClient.get_schedule)
    update_schedule = _blocking(AsyncClient.update_schedule)
    delete_schedule = _blocking(AsyncClient.delete_schedule)
    pause_schedule = _blocking(AsyncClient.pause_schedule)
    resume_schedule = _blocking(AsyncClient.resume_schedule)
    run_schedule = _blocking(AsyncClient.run_schedule)
