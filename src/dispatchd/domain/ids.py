"""Identifiers and clock."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id() -> str:
    """A 26-character id that sorts by creation time (48-bit ms clock, 80 random bits)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime) -> str:
    """RFC 3339 in UTC with a Z and microseconds: fixed width, so text order is time order."""
    global _last_iso
    # The same moment is written several times in a row (a task's created_at, updated_at
    # and its event's time): the last one is remembered. One tuple, swapped whole, so a
    # reader in another thread sees a matching pair.
    last = _last_iso
    if last[0] is value:
        return last[1]
    # isoformat, not strftime: %Y does not pad a year before 1000 to four digits. A UTC
    # time (what the clock gives) ends in "+00:00", cut off: no datetime made to convert.
    if value.tzinfo is UTC:
        text = value.isoformat(timespec="microseconds")[:-6] + "Z"
    else:
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    _last_iso = (value, text)
    return text


_last_iso: tuple[datetime | None, str] = (None, "")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
