"""Reviewers as agents (docs/review.md), end to end on a real server: `dispatchd worker
--review -- <command>` reads the command's Aegis answer (`VERDICT:` / `NOTES:`), a stand-in
worker does the work twice (the second time with the feedback), and `@worker.review` makes
a reviewer of a function."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import AsyncClient
from dispatchd.runner.review import ReviewVerdict, UnderReview
from dispatchd.runner.worker import Job, Worker
from tests.agent.conftest import LiveServer
from tests.agent.helpers import serving
from tests.api.helpers import eventually
from tests.integration.server import clean_env, dispatchd_command

STANDINS = Path(__file__).parent / "standins"


@contextlib.asynccontextmanager
async def cli_worker(
    live_server: LiveServer, agent_id: str, args: Sequence[str], env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A `dispatchd worker` process, stopped with SIGTERM at the end (it must exit 0)."""
    process = await asyncio.create_subprocess_exec(
        *dispatchd_command(
            "worker",
            "--url",
            live_server.url,
            "--agent-id",
            agent_id,
            "--timeout",
            "30",
            "--progress-interval",
            "0.2",
            *args,
        ),
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await process.communicate()
        assert process.returncode == 0, err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def finished(client: AsyncClient, task_id: str) -> Any:
    """The task once completed or failed: four agent runs and two worker processes'
    start, given time on a busy machine."""

    async def probe() -> Any:
        task = await client.get_task(task_id)
        return task if task.status.value in ("completed", "failed") else None

    return await eventually(probe, f"task {task_id} to finish", limit_s=90)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_reviewer_command_rejects_once_and_the_worker_revises(
    live_server: LiveServer, requester: AsyncClient, unique: str, tmp_path: Path
) -> None:
    code, review = f"code-{unique}", f"review-{unique}"
    worker_log, reviewer_log = tmp_path / "worker.jsonl", tmp_path / "reviewer.jsonl"
    worker_args = [
        "-c",
        code,
        "--",
        sys.executable,
        str(STANDINS / "reviewed_worker.py"),
        "--feedback",
        "{feedback}",
    ]
    reviewer_args = ["--review", "-c", review, "--", sys.executable, str(STANDINS / "reviewer.py")]
    env_w = {"STANDIN_WORKER_RECORD": str(worker_log)}
    env_r = {"STANDIN_REVIEWER_RECORD": str(reviewer_log)}
    async with (
        cli_worker(live_server, f"w-{unique}", worker_args, env_w),
        cli_worker(live_server, f"aegis-{unique}", reviewer_args, env_r),
    ):
        task = await requester.create_task(
            "Sort the list",
            prompt="Sort the numbers",
            capabilities=[code],
            review=True,
            reviewer={"capability": review},
        )
        done = await finished(requester, task.id)
        assert done.status.value == "completed", done.error
    assert done.assignee == f"w-{unique}" and done.review_cycles == 1
    assert done.result == (
        "sorted, and empty lists handled (feedback: handle empty lists\nand keep the order stable)"
    )
    assert [(r.cycle, r.reviewer, r.verdict, r.feedback) for r in done.reviews] == [
        (1, f"aegis-{unique}", "rejected", "handle empty lists\nand keep the order stable"),
        (2, f"aegis-{unique}", "approved", "empty lists are handled now"),
    ]
    # The worker did the work twice, the second time seeing the feedback.
    runs = records(worker_log)
    assert [r["task_id"] for r in runs] == [task.id, task.id]
    assert runs[0]["feedback"] == ""
    assert runs[1]["feedback"] == "handle empty lists\nand keep the order stable"
    # The reviewer ran once per review task, on the review prompt with the work in it.
    reviews = records(reviewer_log)
    assert [r["task_id"] for r in reviews] == [r.review_task_id for r in done.reviews]
    assert "Result:\nsorted" in reviews[0]["prompt"] and "VERDICT: APPROVED" in reviews[0]["prompt"]
    for review_task_id in [r.review_task_id for r in done.reviews]:
        assert review_task_id is not None
        reviewed = await requester.get_task(review_task_id)
        assert reviewed.kind.value == "review" and reviewed.review_of == task.id
        assert reviewed.assignee == f"aegis-{unique}" and reviewed.status.value == "completed"


async def test_a_reviewer_output_without_a_verdict_fails_the_review_attempt(
    live_server: LiveServer, requester: AsyncClient, unique: str, tmp_path: Path
) -> None:
    code, review = f"code-{unique}", f"review-{unique}"
    worker_args = ["-c", code, "--", sys.executable, str(STANDINS / "reviewed_worker.py")]
    reviewer_args = ["--review", "-c", review, "--", sys.executable, str(STANDINS / "reviewer.py")]
    async with (
        cli_worker(live_server, f"w-{unique}", worker_args, {}),
        cli_worker(
            live_server, f"aegis-{unique}", reviewer_args, {"STANDIN_REVIEWER_MODE": "silent"}
        ),
    ):
        task = await requester.create_task(
            "Sort the list", capabilities=[code], review=True, reviewer={"capability": review}
        )

        async def failed_review() -> Any:
            page = await requester.list_tasks(review_of=task.id)
            if not page.items:
                return None
            detail = await requester.get_task(page.items[0].id)
            return detail if any(a.outcome == "failed" for a in detail.attempts) else None

        review_task = await eventually(failed_review, "a failed review attempt", limit_s=90)
        assert "no `VERDICT: APPROVED` or `VERDICT: REJECTED` line" in (
            next(a.error for a in review_task.attempts if a.outcome == "failed") or ""
        )
        # The work stays in review; the review goes back to its queue.
        assert (await requester.get_task(task.id)).status.value == "review"
        await requester.cancel_task(task.id)
    assert (await requester.get_task(review_task.id)).status.value == "cancelled"


@pytest.mark.parametrize(
    "answer",
    [
        lambda work: ReviewVerdict.reject("needs tests") if work.cycle == 1 else True,
        lambda work: ("rejected", "needs tests") if work.cycle == 1 else ("approved", None),
        lambda work: (
            "VERDICT: REJECTED\nNOTES: needs tests" if work.cycle == 1 else "VERDICT: APPROVED"
        ),
    ],
    ids=["verdict", "pair", "aegis-text"],
)
async def test_a_review_handler_of_a_worker(
    live_server: LiveServer,
    requester: AsyncClient,
    unique: str,
    answer: Callable[[UnderReview], Any],
) -> None:
    code = f"code-{unique}"
    seen: list[UnderReview] = []
    async with (
        AsyncClient(live_server.url, agent_id=f"w-{unique}") as w_client,
        AsyncClient(live_server.url, agent_id=f"r-{unique}") as r_client,
        serving() as start,
    ):
        worker = Worker(w_client, capabilities=[code], claim_wait_s=2.0, heartbeat_s=1.0)
        reviewer = Worker(r_client, claim_wait_s=2.0, heartbeat_s=1.0)

        @worker.handler(code)
        async def work(job: Job) -> str:
            return f"attempt {job.attempt}, feedback {job.task.context.get('feedback')}"

        @reviewer.review()
        def check(work: UnderReview) -> Any:
            seen.append(work)
            return answer(work)

        await start(worker)
        await start(reviewer)
        task = await requester.create_task(
            "Do it", prompt="the job", capabilities=[code], review=True, reviewer=f"r-{unique}"
        )
        done = await finished(requester, task.id)
    assert done.status.value == "completed", done.error
    assert done.result == "attempt 2, feedback needs tests"
    assert [(w.cycle, w.prompt, w.worker) for w in seen] == [
        (1, "the job", f"w-{unique}"),
        (2, "the job", f"w-{unique}"),
    ]
    assert seen[0].result == "attempt 1, feedback None" and seen[0].task_id == task.id
    assert [(r.verdict, r.feedback) for r in done.reviews] == [
        ("rejected", "needs tests"),
        ("approved", None),
    ]
