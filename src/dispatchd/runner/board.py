"""Board sources: cards on an external board (a JSON file, later Planka and others) become
dispatchd tasks, and the tasks' outcomes go back to the cards.

A card in a watched ready queue becomes a task (once, whatever happens: the task is
created with the idempotency key `board:<source>:<card id>`), gets a comment naming the
task and moves to the in-progress queue. When the task is over, the card moves to the done
queue with the result, or to the failed queue with the error.

The board itself holds what the sync needs to resume: every card it moved to in-progress
carries a comment `dispatchd: created task <id>` (written before the move), so after a
restart the sync reads the in-progress cards, finds their tasks and writes back whatever
finished meanwhile. Between polls it follows the broker's event log to write back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dispatchd.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Gone,
    NotFound,
    RateLimited,
    ServerError,
)
from dispatchd.client.models import TaskStatus
from dispatchd.runner import board_notes as notes

if TYPE_CHECKING:
    from dispatchd.client import AsyncClient

__all__ = [
    "BoardError",
    "BoardSource",
    "BoardSync",
    "Card",
    "CardNotFound",
    "SyncReport",
]

logger = logging.getLogger(__name__)

# The events that may end a task; the task itself is read to know whether it did (a
# failure can be escalated into one more attempt in the same commit).
FINAL_EVENTS = (
    "task.completed",
    "task.approved",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
    "task.rejected",
)
FINAL_STATES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)
MAX_TITLE = 500
MAX_PROMPT = 200_000
MAX_KEY = 200
MAX_LABELS = 50
_TAG = re.compile(r"^[^\s,]{1,100}$")
# The longest wait of one event read; the poll interval bounds it too.
_MAX_WAIT_S = 30.0


class BoardError(Exception):
    """The board cannot be read or written; the message says which board and why."""


class CardNotFound(BoardError):
    """No card with that id on the board (a person may have deleted it)."""


@dataclass(frozen=True)
class Card:
    """A card as the sync sees it; `queue` is the list it is in."""

    id: str
    name: str
    description: str = ""
    labels: tuple[str, ...] = ()
    assignees: tuple[str, ...] = ()
    comments: tuple[str, ...] = ()
    queue: str = ""


class BoardSource(Protocol):
    """What the sync needs from a board. `name` identifies the board (a file path, a URL)
    and goes into the tasks' idempotency keys, so it must stay the same across restarts.
    Every method raises `BoardError` when the board cannot be read or written."""

    @property
    def name(self) -> str: ...

    async def ready_cards(self, queues: Sequence[str]) -> list[Card]:
        """The cards in these queues, queue by queue, in board order; a queue that does
        not exist has none."""
        ...

    async def get_card(self, card_id: str) -> Card | None: ...

    async def move_card(self, card_id: str, queue: str) -> None:
        """Move the card to the end of `queue` (created when missing); nothing when it is
        there already. `CardNotFound` when there is no such card."""
        ...

    async def add_comment(self, card_id: str, text: str) -> None: ...

    async def list_queues(self) -> dict[str, int]:
        """Queue names in board order, with their number of cards."""
        ...


@dataclass
class SyncReport:
    """What one pass did: card id → task id for the cards imported, card id → the queue
    it went to for the cards written back."""

    imported: dict[str, str] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)


def idempotency_key(source: str, card_id: str) -> str:
    """`board:<source>:<card id>`, or a digest of it when that is too long or not plain
    ASCII for a header."""
    key = f"board:{source}:{card_id}"
    if len(key) <= MAX_KEY and key.isascii() and key.isprintable():
        return key
    return "board:sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _tags(labels: Sequence[str]) -> list[str]:
    out: list[str] = []
    for label in labels:
        if _TAG.match(label) and label not in out:
            out.append(label)
    return out[:MAX_LABELS]


class BoardSync:
    """Keeps a board and dispatchd in step; see the module's docstring.

    `queues` maps each watched ready queue to the capability tags its tasks require. Run
    one sync per board and agent id: the idempotency keys are per requester, so syncs of
    one board under different agent ids would each make their own tasks.
    """

    def __init__(
        self,
        client: AsyncClient,
        source: BoardSource,
        *,
        queues: Mapping[str, Sequence[str]],
        in_progress: str = "In Progress",
        done: str = "Done",
        failed: str = "Failed",
        poll_interval_s: float = 5.0,
        priority: str | None = None,
        owner: str | None = None,
    ) -> None:
        if not queues:
            raise ValueError("watch at least one ready queue")
        clash = set(queues) & {in_progress, done, failed}
        if clash:
            raise ValueError(f"a watched queue cannot also be a target queue: {sorted(clash)}")
        self.client = client
        self.source = source
        self.queues = {q: tuple(caps) for q, caps in queues.items()}
        self.in_progress = in_progress
        self.done = done
        self.failed = failed
        self.poll_interval_s = poll_interval_s
        self.priority = priority
        self.owner = owner
        # task id → card id of the cards in progress, re-derived from the board each pass.
        self._cards: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        """Poll the board every `poll_interval_s` and follow the event log in between,
        until cancelled. Errors of the board or the broker are logged and the next poll
        tries again."""
        loop = asyncio.get_running_loop()
        cursor: str | None = None
        while True:
            deadline = loop.time() + self.poll_interval_s
            try:
                if cursor is None:
                    # Taken before the reconciling pass, so nothing ends unseen between.
                    cursor = (await self.client.read_events("latest", limit=1)).next_cursor
                await self.sync_once()
            except (BoardError, ClientError) as exc:
                logger.error(
                    "board sync of %s: %s", self.source.name, exc, extra={"action": "board_sync"}
                )
            except Exception:
                # A source's own bug must not end the sync of every other card.
                logger.exception("board sync of %s failed", self.source.name)
            while cursor is not None and (remaining := deadline - loop.time()) > 0:
                try:
                    cursor = await self._follow(cursor, min(remaining, _MAX_WAIT_S))
                except Gone:
                    cursor = None  # the log moved past us: the next pass reconciles
                except (BoardError, ClientError) as exc:
                    logger.error(
                        "board sync of %s: %s",
                        self.source.name,
                        exc,
                        extra={"action": "board_write_back"},
                    )
                    break
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def _follow(self, cursor: str, wait_s: float) -> str:
        page = await self.client.read_events(cursor, types=FINAL_EVENTS, wait_s=wait_s)
        for event in page.events:
            if event.task_id is None or event.task_id not in self._cards:
                continue
            async with self._lock:
                card_id = self._cards.get(event.task_id)
                if card_id is not None:
                    await self._write_back_task(event.task_id, card_id, SyncReport())
        return page.next_cursor

    async def sync_once(self) -> SyncReport:
        """One pass: import the ready cards, then write back every in-progress card whose
        task is over. Raises `BoardError` when the board cannot be read, and the SDK's
        `TransportError`/`ServerError` when the broker cannot be reached."""
        report = SyncReport()
        async with self._lock:
            for card in await self.source.ready_cards(list(self.queues)):
                with self._per_card(card.id):
                    await self._import(card, report)
            await self._reconcile(report)
        return report

    # --- import ---------------------------------------------------------------------

    async def _import(self, card: Card, report: SyncReport) -> None:
        capabilities = self.queues[card.queue]
        try:
            task = await self.client.create_task(
                notes.trim(card.name.strip(), MAX_TITLE) or f"card {card.id}",
                prompt=notes.trim(card.description, MAX_PROMPT),
                capabilities=capabilities,
                priority=self.priority,
                owner=self.owner,
                labels=_tags(card.labels),
                context={
                    "board": {"source": self.source.name, "card_id": card.id, "queue": card.queue}
                },
                idempotency_key=idempotency_key(self.source.name, card.id),
            )
        except BadRequest as exc:
            # The card can never become a task as it is: say why where its author looks.
            logger.warning("card %s of %s refused: %s", card.id, self.source.name, exc.message)
            if await self._note(card, notes.refused(str(exc))) and await self._move(
                card.id, self.failed
            ):
                report.finished[card.id] = self.failed
            return
        if task.status in FINAL_STATES and notes.ended_task(card.comments) == task.id:
            if task.status is TaskStatus.COMPLETED:
                note = notes.already_completed(task.id)
            else:
                # The card failed and a person put it back in a ready queue: run it again.
                task = await self.client.retry_task(task.id)
                note = notes.retrying(task.id)
        else:
            note = notes.created(task.id, capabilities)
        # The comment goes first: a card in progress always names its task.
        if await self._note(card, note) and await self._move(card.id, self.in_progress):
            self._cards[task.id] = card.id
            report.imported[card.id] = task.id
            logger.info(
                "card %s of %s is task %s",
                card.id,
                self.source.name,
                task.id,
                extra={"action": "board_import", "task_id": task.id},
            )

    # --- write-back -----------------------------------------------------------------

    async def _reconcile(self, report: SyncReport) -> None:
        known: dict[str, str] = {}
        for card in await self.source.ready_cards([self.in_progress]):
            task_id = notes.started_task(card.comments)
            if task_id is not None:
                known[task_id] = card.id
        self._cards = known
        for task_id, card_id in list(known.items()):
            with self._per_card(card_id):
                await self._write_back_task(task_id, card_id, report)

    async def _write_back_task(self, task_id: str, card_id: str, report: SyncReport) -> None:
        try:
            task = await self.client.get_task(task_id)
        except NotFound:
            logger.warning(
                "card %s of %s names unknown task %s", card_id, self.source.name, task_id
            )
            self._cards.pop(task_id, None)
            return
        board = task.context.get("board")
        if not isinstance(board, dict) or (board.get("source"), board.get("card_id")) != (
            self.source.name,
            card_id,
        ):
            self._cards.pop(task_id, None)  # a comment naming some other task: not ours
            return
        if task.status not in FINAL_STATES:
            return
        card = await self.source.get_card(card_id)
        if card is None or card.queue != self.in_progress:
            # Deleted or moved on by a person meanwhile: theirs to decide.
            self._cards.pop(task_id, None)
            return
        target = self.done if task.status is TaskStatus.COMPLETED else self.failed
        self._cards.pop(task_id, None)
        reason = await self._cancel_reason(task_id) if task.status is TaskStatus.CANCELLED else None
        if not (
            await self._note(card, notes.outcome(task, reason))
            and await self._move(card_id, target)
        ):
            return
        report.finished[card_id] = target
        logger.info(
            "card %s of %s → %s (task %s %s)",
            card_id,
            self.source.name,
            target,
            task.id,
            task.status.value,
            extra={"action": "board_write_back", "task_id": task.id},
        )

    async def _cancel_reason(self, task_id: str) -> str | None:
        with contextlib.suppress(ClientError):
            for event in reversed(await self.client.task_events(task_id)):
                if event.type == "task.cancelled":
                    reason = event.data.get("reason")
                    return reason if isinstance(reason, str) and reason else None
        return None

    # --- board edits ----------------------------------------------------------------

    @contextlib.contextmanager
    def _per_card(self, card_id: str) -> Iterator[None]:
        """What the broker refuses for one card is logged and the pass goes on; a broker
        that cannot be reached ends the pass."""
        try:
            yield
        except (ServerError, RateLimited):
            raise
        except ApiError as exc:
            logger.warning("card %s of %s: %s", card_id, self.source.name, exc)

    async def _note(self, card: Card, text: str) -> bool:
        """Comment unless the sync's latest comment already says this (a pass that
        stopped half-way and is done again); False when the card is gone."""
        if notes.last_note(card.comments) == text:
            return True
        try:
            await self.source.add_comment(card.id, text)
        except CardNotFound:
            logger.warning("card %s left %s before it could be updated", card.id, self.source.name)
            return False
        return True

    async def _move(self, card_id: str, queue: str) -> bool:
        try:
            await self.source.move_card(card_id, queue)
        except CardNotFound:
            logger.warning("card %s left %s before it could be moved", card_id, self.source.name)
            return False
        return True
