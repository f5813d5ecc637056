"""`dispatchd room …` and `dispatchd schedule …` against a real broker."""

from __future__ import annotations

import pytest

from dispatchd.client import Client
from tests.cli.conftest import Run
from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow


def test_rooms_listed_shown_dispatched_to_and_interrupted(
    server: ServerProcess, cli: Run, admin: Client
) -> None:
    admin.create_room("infra", workspace="~/ops/servers")
    with Client(server.api_url, agent_id="infra-agent") as agent:
        agent.register_agent(room="infra", max_concurrent=1)

        dispatched = cli("room", "dispatch", "infra", "Check the disks\nand report", "--json")
        assert dispatched.code == 0, dispatched.err
        task = dispatched.json()
        assert task["scope"] == "infra" and task["title"] == "Check the disks"
        claimed = agent.claim(1, wait_s=10)
        assert [t.id for t in claimed.tasks] == [task["id"]]
        agent.report_progress(task["id"], "df -h", 30)

        page = cli("room", "list", "--json").json()
        (room,) = [r for r in page["items"] if r["id"] == "infra"]
        assert room["agent_status"] == "working"
        assert room["current_task"]["id"] == task["id"]

        table = cli("room", "list")
        (row,) = [line for line in table.out.splitlines() if line.startswith("infra ")]
        assert "working" in row and "infra-agent" in row and task["id"] in row

        shown = cli("room", "show", "infra")
        assert shown.code == 0, shown.err
        for part in ("~/ops/servers", "working", "30% df -h", "recent tasks", task["id"]):
            assert part in shown.out
        assert cli("room", "show", "infra", "--json").json()["agents"] == ["infra-agent"]

        people = cli("room", "dispatch", "infra", "Rotate the logs")
        assert people.code == 0 and people.out.startswith("dispatched ")

        interrupted = cli("room", "interrupt", "infra", "--reason", "stop", "--json")
        assert interrupted.code == 0, interrupted.err
        assert interrupted.json() == {"cancelled": [task["id"]]}
        assert admin.get_task(task["id"]).status == "cancelled"

    missing = cli("room", "show", "no-such-room")
    assert missing.code == 7 and missing.out == "" and len(missing.err.splitlines()) == 1


def test_schedules_from_creation_to_removal(cli: Run) -> None:
    made = cli(
        "schedule", "create", "nightly", "0 3 * * *",
        "--title", "Nightly report", "-c", "reports", "--label", "nightly",
        "--timezone", "Europe/Paris", "--misfire", "latest", "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    schedule = made.json()
    sid = schedule["id"]
    assert schedule["task_template"] == {
        "title": "Nightly report",
        "capabilities": ["reports"],
        "labels": ["nightly"],
    }
    assert schedule["timezone"] == "Europe/Paris" and schedule["misfire"] == "latest"
    assert schedule["paused"] is False and schedule["next_fire_at"]

    listed = cli("schedule", "list")
    (row,) = [line for line in listed.out.splitlines() if line.startswith(sid)]
    assert "nightly" in row and "0 3 * * *" in row and "active" in row and "in " in row
    assert [s["id"] for s in cli("schedule", "list", "--json").json()["items"]] == [sid]

    shown = cli("schedule", "show", sid, "--preview", "3", "--json").json()
    assert len(shown["preview"]) == 3
    assert "fires at" in cli("schedule", "show", sid).out

    paused = cli("schedule", "pause", sid)
    assert paused.code == 0 and "paused" in paused.out
    assert cli("schedule", "resume", sid, "--json").json()["paused"] is False

    fired = cli("schedule", "run", sid, "--json").json()
    assert fired["labels"] == ["nightly"] and fired["title"].startswith("Nightly report")

    removed = cli("schedule", "remove", sid)
    assert removed.code == 0 and removed.out.strip() == f"removed {sid}"
    gone = cli("schedule", "show", sid)
    assert gone.code == 7 and gone.out == "" and len(gone.err.splitlines()) == 1

    refused = cli("schedule", "create", "bad", "not cron", "--title", "x")
    assert refused.code == 8 and "invalid_schedule" in refused.err
    untitled = cli("schedule", "create", "untitled", "@daily")
    assert untitled.code == 2 and untitled.out == ""
