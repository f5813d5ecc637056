"""Seed 001's conversation, replayed: a control-plane LLM runs rooms of agents through the
MCP tools alone.

A real `dispatchd serve`; three rooms (`gorp-rs`, `research`, `infra`); a `dispatchd
worker` process in each, running the stand-in agent of `standins/room_agent.py`; and an
MCP client session (the `mcp` SDK's client over stdio) against `dispatchd mcp`. The test
harness only sets the scene (the rooms, the work already under way) and looks at the
agents' processes; everything the control plane learns and does goes through the tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import AsyncClient
from mcp import Client
from tests.api.helpers import eventually
from tests.integration.server import ServerProcess, clean_env, dispatchd_command
from tests.mcp.helpers import call, stdio_session

ADMIN_TOKEN = "control-plane-e2e-admin-token"
AGENT = Path(__file__).parent / "standins" / "room_agent.py"
ROOMS = {
    "gorp-rs": ("#gorp-rs", "~/code/gorp-rs"),
    "research": ("#research", "~/research/papers"),
    "infra": ("#infra", "~/ops/servers"),
}
# Completions and progress are gathered for this long before a digest is given.
WINDOW_S = 8

pytestmark = pytest.mark.slow


@asynccontextmanager
async def worker(url: str, room: str, standin_dir: Path, logs: Path) -> AsyncIterator[None]:
    """`dispatchd worker --room <room>` around the stand-in agent, stopped by SIGTERM."""
    out = (logs / f"{room}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *dispatchd_command(
            "worker",
            "--url",
            url,
            "--agent-id",
            f"{room}-agent",
            "--room",
            room,
            "--max-concurrent",
            "2",
            "--timeout",
            "300",
            "--grace",
            "1",
            "--",
            sys.executable,
            str(AGENT),
        ),
        env=clean_env({"STANDIN_DIR": str(standin_dir)}),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        out.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def settled(admin: AsyncClient, task_id: str, check: Any, what: str) -> None:
    async def ready() -> bool:
        return bool(check(await admin.get_task(task_id)))

    await eventually(ready, what, limit_s=60)


async def until_final(session: Client, task_id: str) -> list[dict[str, Any]]:
    """check_task with a wait, again after each change, until the task is finished: the
    requester is woken by the task's changes instead of polling (seed 002)."""
    checks: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        while not checks or checks[-1]["task"]["status"] not in ("completed", "failed"):
            checks.append(await call(session, "check_task", {"task_id": task_id, "wait_s": 60}))
    return checks


async def test_the_seed_conversation_through_the_mcp_tools(tmp_path: Path) -> None:
    standins = tmp_path / "standins"
    standins.mkdir()
    env = {
        "DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "DISPATCH_NOTIFICATIONS__BATCH_WINDOW_S": str(WINDOW_S),
    }
    with ServerProcess(tmp_path / "server", env=env) as server:
        async with contextlib.AsyncExitStack() as stack:
            admin = await stack.enter_async_context(
                AsyncClient(server.api_url, agent_id="alice", admin_token=ADMIN_TOKEN)
            )
            for room, (name, workspace) in ROOMS.items():
                await admin.create_room(room, name=name, workspace=workspace)
                await stack.enter_async_context(worker(server.api_url, room, standins, tmp_path))
            for room in ROOMS:
                await eventually(
                    lambda room=room: _has_agent(admin, room), f"{room}'s worker", limit_s=60
                )
            session = await stack.enter_async_context(
                stdio_session(
                    server.api_url,
                    cwd=tmp_path,
                    env={"DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN},
                    args=("--as", "dispatch"),
                )
            )
            await _conversation(session, admin, standins)


async def _has_agent(admin: AsyncClient, room: str) -> bool:
    return bool((await admin.get_room(room)).agents)


async def _conversation(session: Client, admin: AsyncClient, standins: Path) -> None:
    # The scene: work the user started earlier in each room.
    tests_run = await call(
        session, "dispatch_task", {"room": "gorp-rs", "prompt": "Run the test suite"}
    )
    await settled(
        admin, tests_run["task"]["id"], lambda t: t.status == "completed", "gorp-rs's tests"
    )
    papers = (
        await call(
            session,
            "dispatch_task",
            {
                "room": "research",
                "prompt": "Summarize the arxiv papers on RAG",
                "title": "Summarizing arxiv papers on RAG",
            },
        )
    )["task"]
    restart = (
        await call(
            session,
            "dispatch_task",
            {"room": "infra", "prompt": "Do the nginx restart on web-1"},
        )
    )["task"]
    await settled(admin, papers["id"], lambda t: t.progress, "research's progress")
    await settled(admin, restart["id"], lambda t: t.status == "waiting_input", "infra's question")

    # "What's happening across my projects?"
    listed = await call(session, "list_rooms")
    rooms = {r["id"]: r for r in listed["rooms"]}
    assert set(rooms) == set(ROOMS)
    gorp, research, infra = rooms["gorp-rs"], rooms["research"], rooms["infra"]
    assert (gorp["name"], gorp["workspace"]) == ROOMS["gorp-rs"]
    assert gorp["agent_status"] == "idle"
    assert gorp["last_activity_at"]
    assert gorp["line"].startswith("gorp-rs: idle, last activity ")
    assert research["agent_status"] == "working"
    assert research["current_task"]["id"] == papers["id"]
    assert research["current_task"]["progress"]["message"] == "3/7 papers processed"
    assert research["line"] == (
        "research: working on 'Summarizing arxiv papers on RAG' (3/7 papers processed, 43%)"
    )
    assert infra["agent_status"] == "waiting_input"
    assert infra["current_task"]["question"] == "Should I proceed with the nginx restart?"
    assert infra["line"].endswith(": Should I proceed with the nginx restart?")
    assert listed["summary"] == "\n".join(r["line"] for r in listed["rooms"])
    status = await call(session, "get_room_status", {"room": "infra"})
    assert status["room"]["agent_status"] == "waiting_input"

    # The question reached the user at once, without waiting for a digest.
    news = await call(session, "get_notifications")
    questions = [n for n in news["notifications"] if n["kind"] == "question"]
    assert [q["task_id"] for q in questions] == [restart["id"]]
    assert "Should I proceed with the nginx restart?" in news["summary"]
    cursor = news["next_cursor"]

    # "Tell infra yes, proceed."
    answered = await call(session, "answer_question", {"room": "infra", "answer": "yes, proceed"})
    assert answered["task"]["id"] == restart["id"]
    restarted = (await until_final(session, restart["id"]))[-1]["task"]
    assert restarted["status"] == "completed"
    assert restarted["result"] == "nginx restarted on web-1 (told: yes, proceed)"

    # "And when research is done, summarize findings."
    summary = (
        await call(
            session,
            "dispatch_task",
            {
                "room": "research",
                "prompt": "summarize the findings",
                "depends_on": [papers["id"]],
            },
        )
    )["task"]
    assert summary["status"] == "blocked"
    still = await call(session, "check_task", {"task_id": summary["id"], "wait_s": 1})
    assert (still["changed"], still["task"]["status"]) == (False, "blocked")
    # The research agent finishes its papers.
    (standins / f"{papers['id']}.release").touch()
    findings = (await until_final(session, papers["id"]))[-1]["task"]
    assert findings["result"]["papers"] == 7
    summarized = (await until_final(session, summary["id"]))[-1]["task"]
    assert summarized["status"] == "completed"
    assert summarized["result"] == {"summary_of": [findings["result"]]}
    done = await admin.get_task(summary["id"])
    assert done.context["inputs"] == {papers["id"]: findings["result"]}
    parent = await admin.get_task(papers["id"])
    assert done.started_at is not None and parent.finished_at is not None
    assert done.started_at >= parent.finished_at

    # The completions arrive batched in digests, none on its own.
    completed = {tests_run["task"]["id"], restart["id"], papers["id"], summary["id"]}
    seen: list[dict[str, Any]] = []

    async def all_digested() -> bool:
        nonlocal cursor
        page = await call(session, "get_notifications", {"after": cursor, "wait_s": 5})
        seen.extend(page["notifications"])
        cursor = page["next_cursor"]
        return completed <= _digested(seen, news["notifications"])

    await eventually(all_digested, "the completions' digests", limit_s=WINDOW_S * 4)
    digests = [n for n in news["notifications"] + seen if n["kind"] == "digest"]
    with_completions = [d for d in digests if d["data"]["completed"]]
    assert len(with_completions) < len(completed)
    assert not [n for n in seen if n["kind"] not in ("digest",)]

    # Interrupt a room with running work.
    watch = (
        await call(
            session,
            "dispatch_task",
            {"room": "research", "prompt": "Watch the arxiv feed for new RAG papers"},
        )
    )["task"]
    await settled(admin, watch["id"], lambda t: t.progress, "the watcher to run")
    pid = int((standins / f"{watch['id']}.pid").read_text())
    assert alive(pid)
    interrupted = await call(
        session, "interrupt_room", {"room": "research", "reason": "the user stopped it"}
    )
    assert interrupted["cancelled"] == [watch["id"]]
    await eventually(lambda: not alive(pid), "the watcher's process to end", limit_s=30)
    history = await call(session, "read_room_history", {"room": "research", "limit": 50})
    events = [e for e in history["entries"] if e["kind"] == "event"]
    assert "room.interrupted" in [e["data"]["type"] for e in events]
    tasks = {
        e["data"]["id"]: e["data"]["status"] for e in history["entries"] if e["kind"] == "task"
    }
    assert tasks[watch["id"]] == "cancelled"
    assert tasks[papers["id"]] == "completed"
    after = await call(session, "check_task", {"task_id": watch["id"]})
    assert after["task"]["status"] == "cancelled"
    nothing = await call(session, "interrupt_room", {"room": "research"})
    assert nothing["cancelled"] == []


def _digested(*pages: list[dict[str, Any]]) -> set[str]:
    return {
        item["task_id"]
        for page in pages
        for n in page
        if n["kind"] == "digest"
        for item in n["data"]["completed"]
    }
