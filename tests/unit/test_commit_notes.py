"""`CommitNotes`: a commit notification waits for the write transactions of this process
that were in flight when it came, and is never dropped."""

from __future__ import annotations

import asyncio

from dispatchd.store.postgres import CommitNotes


def notes() -> tuple[CommitNotes, list[int]]:
    passed: list[int] = []
    held = CommitNotes()
    held.advanced = passed.append
    return held, passed


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_note_with_no_transaction_in_flight_is_passed_on_at_once() -> None:
    held, passed = notes()
    held.heard(7)
    assert passed == [7]


async def test_a_note_waits_for_the_transaction_in_flight_and_comes_after_its_return() -> None:
    held, passed = notes()
    seq = held.begin()
    held.heard(7)
    await settle()
    assert passed == []
    held.end(seq)
    assert passed == []  # the transaction's caller tells its readers first
    await settle()
    assert passed == [7]


async def test_a_note_waits_only_for_transactions_already_in_flight() -> None:
    held, passed = notes()
    first = held.begin()
    held.heard(7)
    later = held.begin()
    held.heard(9)
    held.end(first)
    await settle()
    assert passed == [7]  # not held up by the one that started after it
    held.end(later)
    await settle()
    assert passed == [7, 9]


async def test_notes_held_together_are_passed_on_as_the_latest() -> None:
    held, passed = notes()
    seq = held.begin()
    for last in (3, 5, 4):
        held.heard(last)
    held.end(seq)
    await settle()
    assert passed == [5]


async def test_a_transaction_that_fails_still_releases_its_notes() -> None:
    """A commit whose answer was lost still wakes the readers through its notification."""
    held, passed = notes()
    seq = held.begin()
    held.heard(11)
    try:
        raise ConnectionError("the answer was lost")
    except ConnectionError:
        held.end(seq)
    await settle()
    assert passed == [11]
