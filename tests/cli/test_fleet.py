"""`dispatchd agent …`, `events watch`, `notifications` and `stats` against a real broker."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from dispatchd.client import Client
from tests.cli.conftest import Lines, Run, start, stop
from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow


def test_agents_listed_shown_drained_and_undrained(
    server: ServerProcess, cli: Run, admin: Client
) -> None:
    with Client(server.api_url, agent_id="fleet-1") as agent:
        agent.register_agent(capabilities={"python": 1.0, "sql": 0.5}, max_concurrent=4)

        page = cli("agent", "list", "--json").json()
        assert set(page) == {"items", "next_cursor"}
        (listed,) = [a for a in page["items"] if a["id"] == "fleet-1"]
        assert listed["capabilities"] == {"python": 1.0, "sql": 0.5}

        table = cli("agent", "list")
        assert table.code == 0 and table.err == ""
        (row,) = [line for line in table.out.splitlines() if line.startswith("fleet-1 ")]
        assert "ready" in row and "0/4" in row and "python, sql:0.5" in row

        drained = cli("agent", "drain", "fleet-1")
        assert drained.code == 0, drained.err
        assert drained.out.startswith("drained fleet-1") and "draining" in drained.out
        # The broker gives a drained agent nothing.
        admin.create_task("For a drained agent", capabilities=["python"])
        assert agent.claim(1).reason == "draining"

        shown = cli("agent", "show", "fleet-1")
        assert shown.code == 0
        assert "draining" in shown.out and "0/4" in shown.out
        assert cli("agent", "show", "fleet-1", "--json").json()["draining"] is True

        undrained = cli("agent", "undrain", "fleet-1", "--json")
        assert undrained.code == 0 and undrained.json()["draining"] is False
        assert agent.claim(1).tasks

    missing = cli("agent", "show", "nobody-here")
    assert missing.code == 7 and missing.out == "" and len(missing.err.splitlines()) == 1


def test_events_watch_prints_each_event_as_it_happens(
    server: ServerProcess, workdir: Path, admin: Client
) -> None:
    # From a cursor read now: what happens next is shown, however long the commands take
    # to start.
    after = admin.read_events("latest", limit=1).next_cursor
    as_json = start(
        workdir, server.api_url, "events", "watch", "--json", "--types", "task", "--after", after
    )
    people = start(
        workdir, server.api_url, "events", "watch", "--types", "task.created", "--after", after
    )
    json_lines, people_lines = Lines(as_json.stdout), Lines(people.stdout)
    try:
        task = admin.create_task("Watched", labels=["watched"])
        admin.cancel_task(task.id)
        created = json.loads(
            json_lines.wait_for(lambda line: '"task.created"' in line and task.id in line)
        )
        cancelled = json.loads(json_lines.wait_for(lambda line: '"task.cancelled"' in line))
        assert created["task_id"] == task.id and cancelled["task_id"] == task.id
        assert set(created) == {"id", "type", "task_id", "agent_id", "data", "created_at"}
        assert int(cancelled["id"]) > int(created["id"])
        for line in json_lines.seen:
            json.loads(line)  # nothing but JSON lines on standard output

        line = people_lines.wait_for(lambda line: task.id in line)
        assert "task.created" in line and "tester" in line
        assert not any("task.cancelled" in seen for seen in people_lines.seen)

        # Ctrl-C ends a watch with one line and 130.
        assert stop(people, people_lines, sig=signal.SIGINT) == "dispatchd: interrupted\n"
        assert people.returncode == 130
    finally:
        for process, lines in ((as_json, json_lines), (people, people_lines)):
            if process.stdout is not None and not process.stdout.closed:
                stop(process, lines)


def test_notifications_and_stats(cli: Run, admin: Client) -> None:
    with Client(admin.aio.base_url, agent_id="fleet-2") as agent:
        agent.register_agent(capabilities=["notify"], max_concurrent=1)
        task = admin.create_task("Will fail", assigned_to="fleet-2", labels=["notify"])
        claimed = agent.claim(1, wait_s=10)
        assert [t.id for t in claimed.tasks] == [task.id]
        agent.fail_task(task.id, "out of disk", retryable=False)

    page = cli("notifications", "--json").json()
    assert set(page) >= {"items", "next_cursor", "open_digest"}
    failed = [n for n in page["items"] if n["task_id"] == task.id]
    assert failed and failed[0]["kind"] == "failed"
    people = cli("notifications")
    assert people.code == 0 and "out of disk" in people.out

    stats = cli("stats", "--json").json()
    assert stats["queue"]["by_state"]["failed"] >= 1
    assert "by_state_and_priority" in stats["queue"]
    drawn = cli("stats")
    assert drawn.code == 0 and drawn.err == ""
    (failed_row,) = [line for line in drawn.out.splitlines() if line.split()[:1] == ["failed"]]
    assert "█" in failed_row or "▏" in failed_row
    assert "tasks by state" in drawn.out and "unfinished tasks by priority" in drawn.out
