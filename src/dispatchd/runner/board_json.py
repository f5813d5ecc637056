"""A board kept in one JSON file, in the format of seed 004's JSON adapter:

```json
{"queues": {"Todo": [{"id": "1", "name": "Fix crash", "description": "...",
                      "labels": [], "assignees": [], "comments": [], "tasks": []}],
            "In Progress": [], "Done": []}}
```

People edit the file while the sync runs, so every change re-reads it, edits only what
it must and replaces the file atomically (a temporary file in the same directory, fsync,
`os.replace`). If the file changed between that read and the replace, the edit is made
again on the new content rather than overwriting it. Fields the sync does not know, on
cards, queues' neighbours or the top level, are written back as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dispatchd.runner.board import BoardError, Card, CardNotFound

__all__ = ["JsonFileBoard"]

# How often an edit is made again when the file keeps changing under it.
_WRITE_TRIES = 5

_Stamp = tuple[int, int, int]


class JsonFileBoard:
    """A `BoardSource` over a JSON file; its `name` is the file's absolute path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self.name = str(self.path)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"JsonFileBoard({self.name!r})"

    # --- the BoardSource protocol ---------------------------------------------------

    async def ready_cards(self, queues: Sequence[str]) -> list[Card]:
        data = await self._read()
        cards: list[Card] = []
        for queue in queues:
            cards.extend(_card(raw, queue) for raw in data["queues"].get(queue, []))
        return cards

    async def get_card(self, card_id: str) -> Card | None:
        data = await self._read()
        found = _find(data, card_id)
        return None if found is None else _card(found[1][found[2]], found[0])

    async def move_card(self, card_id: str, queue: str) -> None:
        def move(data: dict[str, Any]) -> bool:
            source, cards, index = self._locate(data, card_id)
            if source == queue:
                return False
            card = cards.pop(index)
            data["queues"].setdefault(queue, []).append(card)
            return True

        await self._update(move)

    async def add_comment(self, card_id: str, text: str) -> None:
        def comment(data: dict[str, Any]) -> bool:
            _, cards, index = self._locate(data, card_id)
            card = cards[index]
            if card.get("comments") is None:
                card["comments"] = []
            card["comments"].append(text)
            return True

        await self._update(comment)

    async def list_queues(self) -> dict[str, int]:
        data = await self._read()
        return {name: len(cards) for name, cards in data["queues"].items()}

    # --- file access ----------------------------------------------------------------

    def _locate(self, data: dict[str, Any], card_id: str) -> tuple[str, list[Any], int]:
        found = _find(data, card_id)
        if found is None:
            raise CardNotFound(f"{self.name}: no card with id {card_id!r}")
        return found

    async def _read(self) -> dict[str, Any]:
        async with self._lock:
            data, _ = await asyncio.to_thread(self._load)
            return data

    async def _update(self, edit: Callable[[dict[str, Any]], bool]) -> None:
        async with self._lock:
            await asyncio.to_thread(self._edit, edit)

    def _load(self) -> tuple[dict[str, Any], _Stamp]:
        try:
            with self.path.open("rb") as f:
                stat = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            raise BoardError(f"{self.name}: the board file does not exist") from None
        except OSError as exc:
            raise BoardError(f"{self.name}: cannot read the board file: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BoardError(
                f"{self.name}: the board file is not UTF-8 text (bad byte at offset {exc.start})"
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BoardError(
                f"{self.name}: the board file is not valid JSON: {exc.msg} "
                f"(line {exc.lineno}, column {exc.colno})"
            ) from None
        _check(self.name, data)
        return data, (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _edit(self, edit: Callable[[dict[str, Any]], bool]) -> None:
        for _ in range(_WRITE_TRIES):
            data, stamp = self._load()
            if not edit(data):
                return
            if self._replace(data, stamp):
                return
        raise BoardError(
            f"{self.name}: the board file kept changing while it was being written; "
            "the change will be tried again"
        )

    def _replace(self, data: dict[str, Any], stamp: _Stamp) -> bool:
        """Write `data` over the file unless the file changed since `stamp` was taken."""
        body = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                raise BoardError(f"{self.name}: the board file was removed") from None
            if (current.st_mtime_ns, current.st_size, current.st_ino) != stamp:
                return False
            os.chmod(tmp, current.st_mode & 0o7777)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise BoardError(f"{self.name}: cannot write the board file: {exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(directory)
        return True


def _fsync_dir(directory: Path) -> None:
    # The rename is durable once the directory entry is on disk; not every platform
    # lets a directory be opened for this, and the write already happened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _find(data: dict[str, Any], card_id: str) -> tuple[str, list[Any], int] | None:
    for queue, cards in data["queues"].items():
        for index, card in enumerate(cards):
            if _card_id(card["id"]) == card_id:
                return queue, cards, index
    return None


def _card_id(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _texts(values: Any, *keys: str) -> tuple[str, ...]:
    """Strings as they are; objects by their first text field (e.g. a label's `name`)."""
    out: list[str] = []
    for value in values or ():
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            text = next((value[k] for k in keys if isinstance(value.get(k), str)), None)
            if text is not None:
                out.append(text)
    return tuple(out)


def _card(raw: dict[str, Any], queue: str) -> Card:
    return Card(
        id=_card_id(raw["id"]),
        name=raw.get("name") or "",
        description=raw.get("description") or "",
        labels=_texts(raw.get("labels"), "name", "label"),
        assignees=_texts(raw.get("assignees"), "name", "username", "id"),
        comments=_texts(raw.get("comments"), "text", "comment", "body"),
        queue=queue,
    )


def _check(name: str, data: Any) -> None:
    """Refuse a board the sync could misread, saying where and what is wrong."""
    if not isinstance(data, dict):
        raise BoardError(f"{name}: the top level must be an object with a 'queues' object")
    queues = data.get("queues")
    if not isinstance(queues, dict):
        raise BoardError(f"{name}: 'queues' must be an object of queue name to list of cards")
    seen: dict[str, str] = {}
    for queue, cards in queues.items():
        if not isinstance(cards, list):
            raise BoardError(f"{name}: queue {queue!r} must be a list of cards")
        for position, card in enumerate(cards, 1):
            where = f"{name}: queue {queue!r}, card {position}"
            if not isinstance(card, dict):
                raise BoardError(f"{where}: a card must be an object")
            card_id = card.get("id")
            if isinstance(card_id, bool) or not isinstance(card_id, str | int):
                raise BoardError(f"{where}: 'id' must be a string or a number")
            key = _card_id(card_id)
            if not key:
                raise BoardError(f"{where}: 'id' is empty")
            if key in seen:
                raise BoardError(f"{where}: id {key!r} is used twice (also in queue {seen[key]!r})")
            seen[key] = queue
            for field in ("name", "description"):
                if card.get(field) is not None and not isinstance(card[field], str):
                    raise BoardError(f"{where} ({key!r}): {field!r} must be a string")
            for field in ("labels", "assignees", "comments"):
                if card.get(field) is not None and not isinstance(card[field], list):
                    raise BoardError(f"{where} ({key!r}): {field!r} must be a list")
