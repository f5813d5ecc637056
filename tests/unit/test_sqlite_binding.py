"""The SQLite connector binds the statements' `:name` parameters by number, from tuples."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from dispatchd.store.connector import PLACEHOLDER
from dispatchd.store.sqlite import SQLiteStore, _execute, _execute_many, _numbered


def test_a_name_used_twice_is_one_number_bound_once() -> None:
    sql, values = _numbered("SELECT :b, :a, :b WHERE x = :a")
    assert sql == "SELECT ?1, ?2, ?1 WHERE x = ?2"
    assert values({"a": 1, "b": 2, "unused": 3}) == (2, 1)


def test_casts_and_colons_inside_words_stay() -> None:
    sql, values = _numbered("SELECT x::text, 'a:b' FROM t WHERE y = :y")
    assert sql == "SELECT x::text, 'a:b' FROM t WHERE y = ?1"
    assert values({"y": 5}) == (5,)


def test_a_missing_value_is_the_error_sqlite3_gives() -> None:
    _, values = _numbered("SELECT :present, :absent")
    with pytest.raises(sqlite3.ProgrammingError, match=":absent"):
        values({"present": 1})


def test_rows_bind_by_name_as_before() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b, c)")
    _execute_many(
        conn,
        "INSERT INTO t (c, a, b) VALUES (:c, :a, :b)",
        [
            {"a": 1, "b": None, "c": "x"},
            {"c": "y", "b": 2.5, "a": None},
        ],
    )
    rows = _execute(conn, "SELECT a, b, c FROM t WHERE c >= :lo ORDER BY c", {"lo": "x"})
    assert rows.fetchall() == [(1, None, "x"), (None, 2.5, "y")]


def test_no_statement_of_the_store_names_a_parameter_inside_a_quoted_string(
    tmp_path: Path,
) -> None:
    # Numbering reads `:name` anywhere; SQLite reads none inside a string literal.
    store = SQLiteStore(tmp_path / "x.db")
    literal = re.compile(r"'(?:[^']|'')*'")
    found = [
        (name, text)
        for name, sql in store.q._sql.items()
        for text in literal.findall(sql)
        if PLACEHOLDER.search(text)
    ]
    assert found == []
