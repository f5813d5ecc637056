"""The Worker (SPEC §5) against a real broker: registration, claims, handlers per
capability, concurrency, reports, cancellation, questions, follow-ups and a graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import AsyncClient, NotFound
from dispatchd.runner.worker import Job, TaskFailed, Worker
from tests.agent.conftest import LiveServer
from tests.agent.helpers import serving, settled
from tests.api.helpers import eventually
from tests.integration.server import clean_env

StartWorker = Callable[[Worker], Awaitable[asyncio.Task[None]]]


@pytest.fixture
async def agent_client(live_server: LiveServer, unique: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(live_server.url, agent_id=f"worker-{unique}") as client:
        yield client


@pytest.fixture
async def start_worker(agent_client: AsyncClient) -> AsyncIterator[StartWorker]:
    """Workers stopped at the end of the test, before `agent_client` (which they use) is
    closed: a client closed under calls in flight can open a connection nobody closes."""
    async with serving() as start:
        yield start


def worker_for(client: AsyncClient, **options: Any) -> Worker:
    options.setdefault("claim_wait_s", 2.0)
    options.setdefault("heartbeat_s", 1.0)
    options.setdefault("grace_s", 5.0)
    return Worker(client, **options)


async def test_a_handler_completes_its_task_with_progress(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"code-{unique}"
    worker = worker_for(agent_client, max_concurrent=2)
    seen: list[tuple[str, int, str]] = []

    @worker.handler(cap)
    async def code(job: Job) -> dict[str, Any]:
        seen.append((job.id, job.attempt, job.task.prompt))
        await job.progress("halfway", percent=50)
        await job.comment("looked at it")
        return {"echo": job.task.prompt.upper()}

    await start_worker(worker)
    agent = await requester.get_agent(worker.agent_id)
    assert agent.capabilities == {cap: 1.0} and agent.max_concurrent == 2

    task = await requester.create_task("shout", prompt="hello", capabilities=[cap])
    done = await settled(requester, task.id, "completed")
    assert done.result == {"echo": "HELLO"} and done.assignee == worker.agent_id
    assert seen == [(task.id, 1, "hello")]
    assert [(p.message, p.percent) for p in done.progress_log] == [("halfway", 50.0)]
    assert [c.body for c in done.comments] == ["looked at it"]
    types = [e.type for e in await requester.task_events(task.id)]
    assert types[-1] == "task.completed" and "task.started" in types


async def test_an_exception_fails_the_task_with_a_short_traceback(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"fails-{unique}"
    worker = worker_for(agent_client)

    @worker.handler(cap)
    async def broken(job: Job) -> None:
        if job.task.title == "final":
            raise TaskFailed("the input is unusable", retryable=False)
        raise ValueError(f"boom on attempt {job.attempt}")

    await start_worker(worker)
    task = await requester.create_task("retry", capabilities=[cap], max_attempts=1)
    failed = await settled(requester, task.id, "failed")
    assert failed.error is not None
    assert "Traceback" in failed.error and "ValueError: boom on attempt 1" in failed.error
    assert "in broken" in failed.error and len(failed.error) <= 4001

    final = await requester.create_task("final", capabilities=[cap], max_attempts=3)
    failed = await settled(requester, final.id, "failed")
    assert failed.error == "the input is unusable" and failed.attempt == 1


async def test_handlers_per_capability_and_plain_functions(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    code, docs = f"code-{unique}", f"docs-{unique}"
    worker = worker_for(agent_client, max_concurrent=3)

    @worker.handler(code)
    async def coder(job: Job) -> str:
        return "coder"

    @worker.handler(docs)
    def writer(job: Job) -> str:  # a plain function runs in a thread
        return f"writer in {threading.current_thread().name != 'MainThread'}"

    await start_worker(worker)
    a = await requester.create_task("a", capabilities=[code])
    b = await requester.create_task("b", capabilities=[docs])
    assert (await settled(requester, a.id, "completed")).result == "coder"
    assert (await settled(requester, b.id, "completed")).result == "writer in True"


async def test_no_more_than_max_concurrent_run_at_once(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"busy-{unique}"
    worker = worker_for(agent_client, max_concurrent=2)
    release = asyncio.Event()
    running = 0
    most = 0

    @worker.handler(cap)
    async def slow(job: Job) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return job.id

    await start_worker(worker)
    tasks = [await requester.create_task(f"t{i}", capabilities=[cap]) for i in range(5)]
    await eventually(lambda: running == 2, "two handlers running")
    agent = await requester.get_agent(worker.agent_id)
    assert agent.active_tasks == 2
    pending = await requester.list_tasks(capability=cap, status="pending")
    assert len(pending.items) == 3
    release.set()
    for t in tasks:
        assert (await settled(requester, t.id, "completed")).result == t.id
    assert most == 2


async def test_a_handler_concurrency_holds_back_its_own_tasks_only(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    narrow, wide = f"narrow-{unique}", f"wide-{unique}"
    worker = worker_for(agent_client, max_concurrent=4)
    release = asyncio.Event()
    counts = {"narrow": 0, "most": 0}

    @worker.handler(narrow, concurrency=1)
    async def one_at_a_time(job: Job) -> None:
        counts["narrow"] += 1
        counts["most"] = max(counts["most"], counts["narrow"])
        try:
            await release.wait()
        finally:
            counts["narrow"] -= 1

    @worker.handler(wide)
    async def any_number(job: Job) -> str:
        return "wide"

    await start_worker(worker)
    held = [await requester.create_task(f"n{i}", capabilities=[narrow]) for i in range(3)]
    await eventually(lambda: counts["narrow"] == 1, "one narrow task running")
    other = await requester.create_task("w", capabilities=[wide])
    assert (await settled(requester, other.id, "completed")).result == "wide"
    release.set()
    for t in held:
        await settled(requester, t.id, "completed")
    assert counts["most"] == 1


async def test_a_task_with_no_handler_is_failed_with_a_clear_error(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    worker = worker_for(agent_client, capabilities=[f"extra-{unique}"])

    @worker.handler(f"code-{unique}")
    async def code(job: Job) -> None:
        raise AssertionError("not this one")

    await start_worker(worker)
    task = await requester.create_task("odd", capabilities=[f"extra-{unique}"], max_attempts=1)
    failed = await settled(requester, task.id, "failed")
    assert failed.error == (f"{worker.agent_id} has no handler for capabilities: extra-{unique}")


async def test_a_cancelled_task_stops_its_handler(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"cancel-{unique}"
    worker = worker_for(agent_client)
    started = asyncio.Event()
    stopped: list[str] = []

    @worker.handler(cap)
    async def forever(job: Job) -> str:
        if job.task.title == "after":
            return "next one ran"
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(job.id)
            raise
        return "unreachable"

    await start_worker(worker)
    task = await requester.create_task("long", capabilities=[cap])
    await asyncio.wait_for(started.wait(), 10)
    await requester.cancel_task(task.id, reason="changed my mind")
    await eventually(lambda: stopped == [task.id], "the handler to be cancelled")
    assert (await requester.get_task(task.id)).status.value == "cancelled"
    after = await requester.create_task("after", capabilities=[cap])
    assert (await settled(requester, after.id, "completed")).result == "next one ran"


async def test_ask_waits_for_the_answer_and_followup_hands_over(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"ask-{unique}"
    worker = worker_for(agent_client)

    @worker.handler(cap)
    async def asking(job: Job) -> str:
        if job.task.title == "next":
            return f"got {job.task.context['inputs']}"
        answer = await job.ask("which branch?", timeout_s=20)
        nxt = await job.followup("next", capabilities=[cap])
        assert nxt.status.value == "blocked" and nxt.depends_on == [job.id]
        return answer

    await start_worker(worker)
    task = await requester.create_task("question", capabilities=[cap])
    waiting = await settled(requester, task.id, "waiting_input")
    assert waiting.question == "which branch?"
    await requester.provide_input(task.id, "main")
    assert (await settled(requester, task.id, "completed")).result == "main"
    children = await requester.list_tasks(capability=cap)
    [follow] = [t for t in children.items if t.title == "next"]
    assert follow.depends_on == [task.id]
    follow = await settled(requester, follow.id, "completed")
    assert task.id in str(follow.result) and "main" in str(follow.result)


async def test_stop_lets_handlers_finish_within_the_grace(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"grace-{unique}"
    worker = worker_for(agent_client, grace_s=10)
    started = asyncio.Event()
    finish = asyncio.Event()

    @worker.handler(cap)
    async def steady(job: Job) -> str:
        started.set()
        await finish.wait()
        return "finished while stopping"

    serving = await start_worker(worker)
    task = await requester.create_task("steady", capabilities=[cap])
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    later = await requester.create_task("later", capabilities=[cap])
    await asyncio.sleep(0.3)
    assert not serving.done()
    finish.set()
    await asyncio.wait_for(serving, 10)
    assert (await requester.get_task(task.id)).result == "finished while stopping"
    with pytest.raises(NotFound):
        await requester.get_agent(worker.agent_id)
    # What came after the stop was never run here: it waits for another agent.
    left = await requester.get_task(later.id)
    assert left.status.value == "pending" and left.assignee is None


async def test_stop_hands_back_what_does_not_finish_in_the_grace(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"handback-{unique}"
    worker = worker_for(agent_client, grace_s=0.5)
    started = asyncio.Event()
    cancelled: list[str] = []

    @worker.handler(cap)
    async def stuck(job: Job) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(job.id)
            raise

    serving = await start_worker(worker)
    task = await requester.create_task("stuck", capabilities=[cap])
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.wait_for(serving, 10)
    assert cancelled == [task.id]
    back = await requester.get_task(task.id)
    assert back.status.value == "pending" and back.assignee is None
    assert back.attempts[-1].outcome == "lost"


async def test_a_late_report_on_a_task_taken_away_changes_nothing(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"late-{unique}"
    worker = worker_for(agent_client, max_concurrent=2)
    go = asyncio.Event()
    started = asyncio.Event()

    @worker.handler(cap)
    async def slow(job: Job) -> str:
        if job.task.title == "probe":
            return "still working"
        started.set()
        # Shielded from the worker's cancellation, as a handler stuck in a blocking call.
        await asyncio.shield(go.wait())
        return "late"

    await start_worker(worker)
    task = await requester.create_task("taken", capabilities=[cap])
    await asyncio.wait_for(started.wait(), 10)
    await requester.cancel_task(task.id)
    go.set()
    probe = await requester.create_task("probe", capabilities=[cap])
    assert (await settled(requester, probe.id, "completed")).result == "still working"
    after = await requester.get_task(task.id)
    assert after.status.value == "cancelled" and after.result is None


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from dispatchd.client import AsyncClient
    from dispatchd.runner.worker import Job, Worker

    url, agent_id, cap, marker = sys.argv[1:5]
    client = AsyncClient(url, agent_id=agent_id)
    worker = Worker(client, claim_wait_s=1.0, heartbeat_s=1.0, grace_s=10.0)

    @worker.handler(cap)
    async def work(job: Job) -> str:
        open(marker, "w").write(job.id)
        await asyncio.sleep(1.0)
        return "done before exit"

    worker.run()
    print("stopped cleanly", flush=True)
    """
)


async def test_sigterm_stops_claiming_and_finishes_running_work(
    requester: AsyncClient, live_server: LiveServer, unique: str, tmp_path: Path
) -> None:
    cap = f"sigterm-{unique}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    marker = tmp_path / "started"
    agent_id = f"proc-{unique}"
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, str(script), live_server.url, agent_id, cap, str(marker)],
        env=clean_env({"PYTHONPATH": os.pathsep.join(sys.path)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        task = await requester.create_task("work", capabilities=[cap])
        await eventually(marker.exists, "the worker to start the task", limit_s=20)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert "stopped cleanly" in out.decode()
    assert (await requester.get_task(task.id)).result == "done before exit"
    with pytest.raises(NotFound):
        await requester.get_agent(agent_id)


async def test_a_refused_report_fails_the_attempt_instead_of_leaving_it_held(
    requester: AsyncClient, agent_client: AsyncClient, start_worker: StartWorker, unique: str
) -> None:
    cap = f"huge-{unique}"
    worker = worker_for(agent_client)

    @worker.handler(cap)
    async def huge(job: Job) -> str:
        return "x" * 2_000_000  # more than the broker takes in one body

    await start_worker(worker)
    task = await requester.create_task("huge", capabilities=[cap], max_attempts=1)
    failed = await settled(requester, task.id, "failed")
    assert failed.error is not None
    assert failed.error.startswith("the worker's report was refused (payload_too_large)")
    assert (await requester.get_agent(worker.agent_id)).active_tasks == 0


async def test_a_task_held_with_nobody_on_it_is_taken_up(
    live_server: LiveServer, requester: AsyncClient, unique: str
) -> None:
    """An earlier run of the agent claimed a task and died (or a claim's answer was lost):
    the broker shows it running with this agent. The worker runs it under that attempt."""
    cap = f"orphan-{unique}"
    agent_id = f"orphan-{unique}"
    async with AsyncClient(live_server.url, agent_id=agent_id) as earlier:
        await earlier.register_agent(capabilities=[cap])
        task = await requester.create_task("orphan", capabilities=[cap])
        claimed = await earlier.claim(1, 5.0)
        assert [t.id for t in claimed.tasks] == [task.id]
    # The worker is stopped before its client closes: a client closed under the worker's
    # calls in flight leaves the connection one of them was opening to the garbage collector.
    async with AsyncClient(live_server.url, agent_id=agent_id) as client, serving() as start_worker:
        worker = worker_for(client)

        @worker.handler(cap)
        async def again(job: Job) -> str:
            return f"taken up at attempt {job.attempt}"

        await start_worker(worker)
        done = await settled(requester, task.id, "completed")
        assert done.result == "taken up at attempt 1"
        assert [a.outcome for a in done.attempts] == ["completed"]


def test_claims_never_ask_more_than_a_bounded_handler_has_room_for() -> None:
    class Stub:
        agent_id = "w"

    worker = Worker(Stub(), capabilities=["python"], max_concurrent=5)  # type: ignore[arg-type]
    narrow = worker.add_handler(lambda job: None, ["a"], concurrency=2)
    worker.add_handler(lambda job: None, ["b"])
    assert worker._claim_plan(5) == [(["a", "b", "python"], 2)]
    narrow.active = 1
    assert worker._claim_plan(5) == [(["a", "b", "python"], 1)]
    narrow.active = 2  # full: the claim no longer asks for its tag
    assert worker._claim_plan(5) == [(["b", "python"], 5)]
    assert worker._claim_plan(0) == []
    worker.add_handler(lambda job: None, ["c"], priority=1)
    narrow.active = 0
    assert worker._claim_plan(4) == [(["a", "b", "python"], 2), (["a", "b", "c", "python"], 2)]
    worker.add_handler(lambda job: None, (), priority=2)  # takes anything
    assert worker._claim_plan(4)[-1] == (None, 2)
