"""Reading the event log by cursor: what the long-poll route and the SSE stream share (the
in-server consumers follow it with `events/follower.py`).

A cursor is the id of the last event a reader has seen ("0" for the start of the log).
A read returns the events after it that match the reader's type filter, in log order, and
the cursor to continue from; events the filter skips still move the cursor, so a reader
never scans them twice. An empty read may wait: it is woken by the feed the moment the
log grows (a commit here, or a NOTIFY from another replica), never by polling.

A reader may also ask for one task's events, those of the tasks one requester created, or
those of one room (`EventScope`): these filters run in SQL over the part of the log between
the cursor and its head, so a reader of one task does not scan everyone's events. Event
ids are given in commit order (store/base.py), so the head read first bounds what such a
read may have missed: nothing below it appears later.

Retention deletes a prefix of the log (`Store.prune`); a cursor inside the deleted part
would silently skip events, so it is refused with 410 and the reader must resynchronise.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from dispatchd.domain.event_types import TYPE_NAME
from dispatchd.domain.models import Event
from dispatchd.engine.feed import EventFeed
from dispatchd.errors import Gone, ValidationFailed
from dispatchd.store.base import RETENTION_CURSOR, Store
from dispatchd.store.readers import EventScope

# Events scanned per store read while looking for ones that match.
SCAN = 1000
MAX_WAIT_S = 60.0
_PATTERN = re.compile(f"^{TYPE_NAME}$")


class CursorExpired(Gone):
    """The cursor points into the part of the log that retention deleted."""

    code = "cursor_expired"


class TypeFilter:
    """Event types as a comma-separated list of names and globs: `task.completed`,
    `task.*`, or a bare family name (`task`, `agent`) meaning every type in it."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [re.compile(fnmatch.translate(p)) for p in self.patterns]

    @classmethod
    def parse(cls, raw: str | None) -> TypeFilter:
        if raw is None or not raw.strip(" "):
            return cls()
        patterns = []
        for part in raw.split(","):
            # Spaces only, as domain.event_types.TYPE_LIST_PATTERN says.
            name = part.strip(" ")
            if not name:
                continue
            if not _PATTERN.match(name):
                raise ValidationFailed(
                    f"bad event type filter {name!r}: use names such as task.completed, "
                    "globs such as task.*, or a family such as agent",
                    code="invalid_types",
                    types=raw[:200],
                )
            patterns.append(name if "." in name or "*" in name else f"{name}.*")
        return cls(patterns)

    def __call__(self, event_type: str) -> bool:
        return not self._compiled or any(p.match(event_type) for p in self._compiled)


LATEST = "latest"


def parse_cursor(raw: str | None) -> int:
    """A cursor as sent by a reader. `latest` (the end of the log now) is resolved by
    `EventReader.start`, which every route calls."""
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ValidationFailed(
            "a cursor is the id of the last event seen, e.g. 0 for the start of the log",
            code="invalid_cursor",
            cursor=raw[:50],
        )
    return int(raw)


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[Event]
    cursor: int


class EventReader:
    def __init__(self, store: Store, feed: EventFeed) -> None:
        self.store = store
        self.feed = feed
        self.closed = False
        self._closing: asyncio.Future[None] | None = None

    def close(self) -> None:
        """The server is stopping: waiting reads answer now (with what they have) and
        streams end, so that no reader holds the shutdown up."""
        self.closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    async def _wait(self, after: int, wait_s: float) -> bool:
        """Wait for the log to pass `after`, or for `close()`; True if it passed."""
        if self.closed:
            return False
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(self.feed.wait(after, wait_s))
        either: list[asyncio.Future[Any]] = [waiting, self._closing]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
        return waiting.done() and not waiting.cancelled() and waiting.result()

    async def start(self, raw: str | None) -> int:
        """The cursor a reader asked for: `latest` is the end of the log now, so a reader
        that only wants what happens from here on need not scan what went before."""
        if raw == LATEST:
            return max(self.feed.latest, await self.store.last_event_id())
        return parse_cursor(raw)

    async def check(self, after: int) -> None:
        """Refuse a cursor retention has passed, or one ahead of the log."""
        pruned = await self.store.get_cursor(RETENTION_CURSOR)
        if pruned is not None and after < pruned:
            raise CursorExpired(
                f"events after {after} up to {pruned} were deleted by retention; "
                f"resynchronise (read the current state) and continue from {pruned}",
                after=str(after),
                oldest_cursor=str(pruned),
            )
        # Up to the retention cursor is inside the log even when retention deleted all of
        # it (the ids of new events continue from there).
        head = max(self.feed.latest, pruned or 0)
        if after > head and after > await self.store.last_event_id():
            raise ValidationFailed(
                f"cursor {after} is ahead of the event log; continue from the last cursor "
                "this server returned",
                code="invalid_cursor",
                cursor=str(after),
            )

    async def read(
        self,
        after: int,
        types: TypeFilter,
        *,
        limit: int,
        wait_s: float = 0.0,
        scope: EventScope | None = None,
    ) -> Batch:
        """The events after `after` that match `types` (and `scope`), at most `limit`; when
        there are none, wait up to `wait_s` for some."""
        await self.check(after)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait_s, 0.0), MAX_WAIT_S)
        cursor = after
        while True:
            passed = cursor  # how far the read saw, when it saw less than SCAN events
            if scope:
                head = max(self.feed.latest, await self.store.last_event_id())
                scanned = await self.store.read_events_where(
                    scope, after=cursor, until=head, limit=SCAN
                )
                # Nothing else up to the head is in scope: the cursor may pass it.
                passed = head
            else:
                scanned = await self.feed.read(cursor, SCAN)
            matched: list[Event] = []
            for event in scanned:
                assert event.id is not None
                if types(event.type):
                    matched.append(event)
                    if len(matched) == limit:
                        return Batch(matched, event.id)
                cursor = event.id
            if len(scanned) < SCAN:
                cursor = max(cursor, passed)
            if matched:
                return Batch(matched, cursor)
            if len(scanned) == SCAN:
                continue  # a long run of filtered-out events: read on
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait(cursor, remaining):
                return Batch([], cursor)

    async def follow(
        self,
        after: int,
        types: TypeFilter,
        *,
        idle_s: float,
        scope: EventScope | None = None,
    ) -> AsyncIterator[Batch]:
        """Every batch after `after`, as the log grows; an empty batch after `idle_s`
        without any (for keep-alives). Runs until the caller stops iterating, or the
        reader is closed."""
        cursor = after
        while not self.closed:
            batch = await self.read(cursor, types, limit=SCAN, wait_s=idle_s, scope=scope)
            cursor = batch.cursor
            yield batch
