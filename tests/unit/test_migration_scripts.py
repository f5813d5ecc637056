"""A migration script is split into its statements (the `script` query runs them in turn,
and PostgreSQL's transactions send them in one message)."""

from __future__ import annotations

from dispatchd.store import migrations
from dispatchd.store.connector import statements

SCRIPT = """
-- A comment; with a semicolon.
CREATE TABLE a (x INTEGER);
CREATE FUNCTION f(ok boolean) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'no';
    END IF;
    RETURN true;
END
$$;
INSERT INTO a VALUES (1);
"""


def test_a_function_body_between_dollar_quotes_stays_whole() -> None:
    found = statements(SCRIPT)
    assert [s.split()[0:2] for s in found] == [
        ["CREATE", "TABLE"],
        ["CREATE", "FUNCTION"],
        ["INSERT", "INTO"],
    ]
    assert found[1].endswith("END\n$$") and "RETURN true;" in found[1]


def test_every_migration_splits_into_whole_statements() -> None:
    for dialect in ("sqlite", "postgres"):
        for migration in migrations.load(dialect):
            for statement in statements(migration.sql):
                assert statement.count("$$") % 2 == 0, (migration.name, statement)
                assert not statement.startswith("--"), (migration.name, statement)
