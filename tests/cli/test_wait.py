"""`dispatchd task create --wait` and `dispatchd task wait` against a real broker, with an
agent working the task. A server of their own: no other task may reach the agents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatchd.client import Client
from tests.cli.conftest import Agent, Run, start
from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow


def test_wait_follows_a_task_through_review_to_completion(
    server: ServerProcess, cli: Run, workdir: Path, admin: Client
) -> None:
    agent = Agent(server.api_url, "cli-worker-ok")
    try:
        waiting = start(
            workdir,
            server.api_url,
            "task",
            "create",
            "Answer",
            "--assigned-to",
            "cli-worker-ok",
            "--label",
            "cli-worker-ok",
            "--review",
            "--wait",
        )
        # Completed, the task waits in review (and the command with it) for the verdict.
        agent.work("complete", then=lambda task_id: admin.review_task(task_id, "approved", "fine"))
        out, err = waiting.communicate(timeout=60)
        agent.join()
    finally:
        agent.close()
    assert waiting.returncode == 0, err
    first, *rest = out.splitlines()
    assert first.startswith("created ")
    assert rest[0].split()[0] == "completed"
    assert "the answer" in out
    # Without a terminal the live line becomes a line per change on standard error.
    assert "50% halfway" in err
    assert "\nreview " in err
    task_id = first.split()[1]

    # The finished task: `show` has its attempts, progress, comments and reviews.
    shown = cli("task", "show", task_id)
    assert shown.code == 0, shown.err
    for part in (
        "attempts",
        "progress",
        "comments",
        "halfway",
        "on it",
        "cli-worker-ok",
        "reviews",
        "approved",
        "fine",
    ):
        assert part in shown.out
    detail = cli("task", "show", task_id, "--json").json()
    assert detail["status"] == "completed" and detail["result"] == {"answer": 42}
    assert [a["outcome"] for a in detail["attempts"]] == ["completed"]
    assert [p["message"] for p in detail["progress_log"]] == ["halfway"]
    assert [c["body"] for c in detail["comments"]] == ["on it"]
    assert [(r["verdict"], r["feedback"]) for r in detail["reviews"]] == [("approved", "fine")]

    again = cli("task", "wait", task_id, "--json")
    assert again.code == 0 and again.json()["id"] == task_id


def test_wait_exits_1_when_the_task_fails(server: ServerProcess, workdir: Path, cli: Run) -> None:
    agent = Agent(server.api_url, "cli-worker-fail")
    try:
        made = cli(
            "task",
            "create",
            "Doomed",
            "--assigned-to",
            "cli-worker-fail",
            "--label",
            "cli-worker-fail",
            "--json",
        ).json()
        waiting = start(workdir, server.api_url, "task", "wait", made["id"], "--json")
        agent.work("fail")
        out, err = waiting.communicate(timeout=60)
        agent.join()
    finally:
        agent.close()
    assert waiting.returncode == 1, err
    assert err == ""
    final = json.loads(out)
    assert final["status"] == "failed" and final["error"] == "it broke"
