"""The PostgreSQL store's own quoting of times and its JSON wrapper, without a server.

`tests/contract/test_store_literals.py` checks, against a real server, that each literal is
the one psycopg would write; this checks that remembering the last time quoted never hands
one moment's text to another.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from psycopg.types.json import Jsonb

from dispatchd.store import postgres_messages
from dispatchd.store.rows import POSTGRES

AT = datetime(2026, 12, 8, 3, 0, 1, 250000, tzinfo=UTC)


def psycopg_text(value: datetime) -> str:
    return f"'{value}'::timestamptz"


def test_each_time_gets_its_own_text_when_one_is_remembered() -> None:
    later = AT + timedelta(microseconds=1)
    same_moment_other_object = AT.replace()  # equal, not the same object
    local = AT.astimezone(timezone(timedelta(hours=2)))  # the same instant, another zone
    naive = AT.replace(tzinfo=None)
    quote = postgres_messages._quote_time
    seen = [quote(v) for v in (AT, AT, later, AT, same_moment_other_object, later, local, naive)]
    assert seen == [
        psycopg_text(AT),
        psycopg_text(AT),
        psycopg_text(later),
        psycopg_text(AT),
        psycopg_text(AT),
        psycopg_text(later),
        None,  # not UTC: psycopg quotes it
        None,
    ]
    assert quote(AT) == psycopg_text(AT)  # after the refusals, the cache still answers right


def test_json_values_are_wrapped_for_psycopg() -> None:
    for value in ({"a": [1, None]}, [], None, "text"):
        wrapped = POSTGRES.dump_json(value)
        assert isinstance(wrapped, Jsonb)
        assert wrapped.obj is value
