"""Identifiers and clock."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id() -> str:
    """A 26-character id that sorts by creation time: a 48-bit millisecond clock, then 80
    random bits, in Crockford's base 32 (lower case), most significant digit first.

    The clock's ten digits are the same for every id of a millisecond and are kept; the
    random part is read ten bits (two digits) at a time. A bulk create makes thousands of
    ids in a request, and a digit at a time cost more than the row it names.
    """
    global _last_clock
    ms = time.time_ns() // 1_000_000
    clock = _last_clock
    if clock[0] != ms:
        # 48 bits in ten digits: the first digit holds the top three.
        clock = _last_clock = (ms, "".join(_PAIRS[(ms >> s) & 1023] for s in (40, 30, 20, 10, 0)))
    bits = int.from_bytes(os.urandom(10), "big")
    p = _PAIRS
    return (
        clock[1]
        + p[bits >> 70]
        + p[(bits >> 60) & 1023]
        + p[(bits >> 50) & 1023]
        + p[(bits >> 40) & 1023]
        + p[(bits >> 30) & 1023]
        + p[(bits >> 20) & 1023]
        + p[(bits >> 10) & 1023]
        + p[bits & 1023]
    )


# Every pair of digits, by the ten bits it writes.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
# The last millisecond an id was made in, with its ten digits: one tuple, swapped whole.
_last_clock: tuple[int, str] = (-1, "")


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
