"""How SQLite's writes are committed: writes on the event loop share a commit per turn of
the loop (`LoopCommit`), and WAL checkpoints run on a thread of their own (`Checkpoints`).

A commit costs far more than the small writes it holds: SQLite writes each page the
transaction touched to the WAL (two system calls a page; a task's update touches the row
and the index pages of every index on a changed column, about nine pages with its event)
and takes and drops its locks. Requests that arrive together (agents completing and
claiming at once) each write a transaction of some tens of microseconds; made one
transaction, their pages are written once and the locks taken once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from dispatchd.errors import StoreError

T = TypeVar("T")

logger = logging.getLogger(__name__)

# How often the WAL is checkpointed into the database file, when something was written.
CHECKPOINT_S = 1.0


class LoopCommit:
    """One write transaction held open on the event loop's thread until the loop's next
    turn, shared by the writes made on the loop before then.

    The first write opens it (BEGIN IMMEDIATE, by the connector) and asks the loop to
    commit it at its next turn; each write runs at once, in a savepoint of its own, so
    that a failing write is undone alone. Every write is answered when the commit is done,
    never before: one that succeeded, since its rows are durable only then; one that
    failed too, since it may have failed on the rows of another write of the turn (the
    same idempotency key), which its caller's next read must then find. If the commit
    fails, every write that succeeded fails with its error. If SQLite rolls the whole
    transaction back (an I/O error, a full disk), the writes it held fail at once.
    """

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.waiting: list[tuple[asyncio.Future[Any], Any]] = []
        self.lost: BaseException | None = None

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run `fn` in the open transaction; its answer, due when the commit is done."""
        conn = self.conn
        if self.lost is not None:
            raise StoreError(f"the shared commit was rolled back: {self.lost}")
        future: asyncio.Future[T] = self.loop.create_future()
        conn.execute("SAVEPOINT job")
        try:
            result: Any = fn(conn)
            conn.execute("RELEASE job")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # the check below tells what is left
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            if not conn.in_transaction:
                self._lose(exc)
                raise
            if not isinstance(exc, Exception):
                raise
            result = _Failed(exc)
        self.waiting.append((future, result))
        return future

    def commit(self) -> None:
        """Commit what the writes left, and answer them (each one its error, if it fails)."""
        if self.lost is not None:
            return
        error: BaseException | None = None
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = StoreError(f"database error: {exc}")
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
        for future, result in self.waiting:
            if future.done():  # a caller that stopped waiting (cancelled)
                continue
            if isinstance(result, _Failed):
                future.set_exception(result.error)  # its own error: it wrote nothing
            elif error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        self.waiting.clear()

    def _lose(self, exc: BaseException) -> None:
        self.lost = exc
        error = StoreError(f"the shared commit was rolled back: {exc}")
        for future, _ in self.waiting:
            if not future.done():
                future.set_exception(error)
        self.waiting.clear()


class _Failed:
    """The answer of a write that failed (kept for the commit)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Checkpoints:
    """Copies the WAL into the database file on a thread of its own, at most every
    CHECKPOINT_S while writes go on. PASSIVE: it never waits for the writer or a reader,
    and what a reader still needs stays in the WAL for a later round. A failure is logged
    and tried again at the next round; the writes themselves are safe in the WAL."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rounds = 0  # checkpoints run (for tests)

    def wrote(self) -> None:
        if not self._dirty.is_set():
            self._dirty.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stopping.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="dispatchd-sqlite-checkpoints", daemon=True
                    )
                    self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            self._dirty.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failing = False
        while self._dirty.wait() and not self._stopping.wait(CHECKPOINT_S):
            self._dirty.clear()
            # `stop` sets both events: had it done so just before the clear, the clear
            # took its wake-up, and the next `_dirty.wait()` would wait for ever.
            if self._stopping.is_set():
                return
            try:
                conn = conn or self._connect()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.rounds += 1
                failing = False
            except sqlite3.Error as exc:
                if not failing:
                    logger.warning("sqlite: WAL checkpoint failed (tried again): %s", exc)
                failing = True
                self._dirty.set()
