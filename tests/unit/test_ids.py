"""Task ids: their text, their order, and that they do not repeat."""

from __future__ import annotations

import time

import pytest

from dispatchd.domain import ids

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def reference(ms: int, random_bits: int) -> str:
    """The id's definition, a digit at a time: 48 bits of clock, 80 random, base 32."""
    value = ms << 80 | random_bits
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@pytest.mark.parametrize(
    ("ms", "blob"),
    [
        (0, bytes(10)),
        (1_765_000_000_123, bytes(range(10))),
        (2**48 - 1, b"\xff" * 10),
        (1_700_000_000_000, b"\x80" + bytes(9)),
        (1_234_567_890_123, bytes.fromhex("b0c9c3a3014d01830203")),
    ],
)
def test_an_id_is_the_clock_and_the_random_bits_in_base_32(
    monkeypatch: pytest.MonkeyPatch, ms: int, blob: bytes
) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: ms * 1_000_000 + 999_999)
    monkeypatch.setattr(ids.os, "urandom", lambda n: blob[:n])
    made = ids.new_id()
    assert made == reference(ms, int.from_bytes(blob, "big"))
    assert len(made) == 26


def test_ids_of_one_millisecond_share_the_clock_and_the_next_one_moves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_765_000_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: clock[0] * 1_000_000)
    first, second = ids.new_id(), ids.new_id()
    clock[0] += 1
    third = ids.new_id()
    assert first[:10] == second[:10] != third[:10]
    assert first != second
    assert max(first, second) < third  # text order is time order


def test_ids_made_in_a_burst_are_distinct_and_sort_by_time() -> None:
    made = []
    for _ in range(3):
        made.extend(ids.new_id() for _ in range(5_000))
        time.sleep(0.002)
    assert len(set(made)) == len(made)
    assert all(set(i) <= set(CROCKFORD) and len(i) == 26 for i in made)
    clocks = [i[:10] for i in made]
    assert clocks == sorted(clocks)
