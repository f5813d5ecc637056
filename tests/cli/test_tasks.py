"""`dispatchd task …` against a real broker: people's output, --json and exit codes."""

from __future__ import annotations

import time

import pytest

from dispatchd.client import Client
from tests.cli.conftest import Run
from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow


def test_create_takes_the_title_and_the_api_fields(cli: Run) -> None:
    made = cli(
        "task", "create", "Fix the login page",
        "--prompt", "The button does nothing",
        "-c", "web", "--capability", "css",
        "--priority", "high",
        "--room", "frontend",
        "--label", "bug", "--label", "ui",
        "--assigned-to", "nobody-yet",
        "--timeout", "600",
        "--context", '{"ticket": 12}',
        "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    task = made.json()
    assert task["title"] == "Fix the login page"
    assert task["prompt"] == "The button does nothing"
    assert task["capabilities"] == ["web", "css"]
    assert task["priority"] == "high"
    assert task["scope"] == "frontend"
    assert task["labels"] == ["bug", "ui"]
    assert task["assigned_to"] == "nobody-yet"
    assert task["timeout_s"] == 600
    assert task["context"] == {"ticket": 12}

    people = cli("task", "create", "Write the notes", "--prompt", "-", stdin="from stdin\n")
    assert people.code == 0, people.err
    assert people.err == ""
    assert people.out.startswith("created ")
    assert "pending" in people.out and "Write the notes" in people.out


def test_list_shows_tasks_as_a_table_or_the_api_page(cli: Run) -> None:
    for title in ("List one", "List two"):
        assert cli("task", "create", title, "--label", "listing").code == 0
    page = cli("task", "list", "--label", "listing", "--json").json()
    assert set(page) == {"items", "next_cursor"}
    assert [t["title"] for t in page["items"]] == ["List two", "List one"]

    table = cli("task", "list", "--label", "listing", "--status", "pending,running")
    assert table.code == 0 and table.err == ""
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "PRIORITY"]
    assert len(rows) == 2
    assert rows[0].split()[0] == page["items"][0]["id"]
    assert "pending" in rows[0] and "List two" in rows[0]

    none = cli("task", "list", "--label", "listing", "--status", "completed")
    assert none.code == 0 and none.out.strip() == "no tasks"

    one = cli("task", "list", "--label", "listing", "--limit", "1", "--json").json()
    assert len(one["items"]) == 1 and one["next_cursor"]


def test_cancel_and_retry(cli: Run) -> None:
    task = cli("task", "create", "Change of plan", "--json").json()
    cancelled = cli("task", "cancel", task["id"], "--reason", "not needed")
    assert cancelled.code == 0, cancelled.err
    assert cancelled.out.startswith("cancelled ") and task["id"] in cancelled.out

    # A cancelled task cannot be cancelled again: the broker refuses (409).
    twice = cli("task", "cancel", task["id"], "--json")
    assert twice.code == 8 and twice.out == ""
    assert len(twice.err.splitlines()) == 1 and "invalid_transition" in twice.err

    ended = cli("task", "wait", task["id"])
    assert ended.code == 1 and ended.out.split()[0] == "cancelled"

    retried = cli("task", "retry", task["id"], "--json")
    assert retried.code == 0, retried.err
    assert retried.json()["status"] == "pending"


def test_an_unknown_task_exits_7_with_one_line(cli: Run) -> None:
    for args in (("task", "show", "no-such-task"), ("task", "show", "no-such-task", "--json")):
        result = cli(*args)
        assert result.code == 7
        assert result.out == ""
        assert result.err.count("\n") == 1
        assert result.err.startswith("dispatchd: ") and "no-such-task" in result.err


def test_refused_input_and_usage_errors(cli: Run) -> None:
    # The broker refuses a timeout above a week (422).
    refused = cli("task", "create", "Too long", "--timeout", "99999999")
    assert refused.code == 8 and refused.out == ""
    assert len(refused.err.splitlines()) == 1 and "HTTP 422" in refused.err

    for args in (
        ("task", "create"),  # no title
        ("task", "create", "Bad context", "--context", "{not json"),
        ("task", "create", "Bad context", "--context", "[1, 2]"),
        ("task", "create", "Bad priority", "--priority", "urgent"),
        ("task", "nothing-of-the-kind"),
    ):
        result = cli(*args)
        assert result.code == 2, (args, result)
        assert result.out == ""


def test_credentials_decide_3_and_4(cli: Run, server: ServerProcess) -> None:
    wrong = cli("task", "list", "--token", "not-a-token")
    assert wrong.code == 3, wrong.err
    assert len(wrong.err.splitlines()) == 1

    # No token on an admin route: the caller has not said who it is (401).
    anonymous = cli("agent", "drain", "someone", env={"DISPATCH_ADMIN_TOKEN": ""})
    assert anonymous.code == 3, anonymous.err

    # An agent with its own token is known, and may not drain (403).
    with Client(server.api_url, agent_id="someone") as agent:
        token = agent.register_agent(capabilities=["x"]).token
    assert token is not None
    plain = cli(
        "agent", "drain", "someone", "--as", "someone", "--token", token,
        env={"DISPATCH_ADMIN_TOKEN": ""},
    )  # fmt: skip
    assert plain.code == 4, plain.err
    assert plain.out == "" and len(plain.err.splitlines()) == 1


def test_an_unreachable_broker_exits_5_quickly(cli: Run) -> None:
    began = time.monotonic()
    result = cli("task", "list", "--url", "http://127.0.0.1:9", timeout=30)
    assert result.code == 5
    assert result.out == ""
    assert len(result.err.splitlines()) == 1 and "cannot reach the broker" in result.err
    assert time.monotonic() - began < 30
