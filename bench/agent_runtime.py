"""What the agent runtime costs on top of the broker: tasks per second and per-task time
through a `Worker` (handler functions) and a `Runner` (one subprocess per task).

A real server; the requester creates the tasks in batches of 1,000, then waits until all
are completed. Four ways of doing the work, all at the same concurrency:

* bare SDK loop (the baseline, in the same run): N asyncio loops each claiming one task
  with `wait_s`, completing it with the attempt fence: no heartbeats, no event watch;
* Worker: `Worker(max_concurrent=N)` with a handler that returns at once;
* Runner, `/bin/true`: a subprocess per task, the result from its (empty) output;
* Runner, python agent: a subprocess that reads its task through the local agent API
  and writes a result file, as a real agent would.

Per task: from its creation to its completion, as the broker recorded them
(`created_at` → `finished_at`). The Worker's figures next to the baseline's are its own
overhead; the Runner's, the price of a process and the local API per task.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    ADMIN_TOKEN,
    compare,
    database,
    dig,
    header,
    parser,
    previous,
    save,
    server,
    stats_ms,
    table,
)

from dispatchd import AsyncClient, Job, Runner, Worker

NAME = "agent_runtime"
AGENT = """
import json, os, urllib.request
api, task = os.environ["DISPATCH_URL"], os.environ["DISPATCH_TASK_ID"]
seen = json.load(urllib.request.urlopen(f"{api}/tasks/{task}"))
with open(os.environ["DISPATCH_RESULT_FILE"], "w") as f:
    json.dump({"title": seen["title"]}, f)
"""


async def submit_and_wait(url: str, cap: str, count: int) -> dict[str, Any]:
    """Create `count` tasks needing `cap`; follow the event log until all are completed."""
    async with AsyncClient(url, agent_id="bench-requester", admin_token=ADMIN_TOKEN) as c:
        cursor = (await c.read_events("latest", limit=1)).next_cursor
        started = time.perf_counter()
        created: dict[str, str | None] = {}
        for first in range(0, count, 1000):  # the batch route takes 1,000 at a time
            batch = [
                {"title": f"t{i}", "capabilities": [cap]}
                for i in range(first, min(first + 1000, count))
            ]
            created.update((t.id, t.created_at) for t in await c.create_tasks(batch))
        spans: list[float] = []
        while len(spans) < count:
            page = await c.read_events(cursor, types="task.completed", wait_s=5, limit=1000)
            cursor = page.next_cursor
            for event in page.events:
                if event.task_id in created:
                    begun = _at(created[event.task_id])
                    spans.append((_at(event.created_at) - begun).total_seconds())
        elapsed = time.perf_counter() - started
    return {"tasks_per_s": count / elapsed, "elapsed_s": elapsed, **stats_ms(sorted(spans))}


def _at(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def bare_loop(url: str, cap: str, count: int, concurrency: int) -> dict[str, Any]:
    async with AsyncClient(url, agent_id=f"bare-{cap}") as agent:
        await agent.register_agent(capabilities=[cap], max_concurrent=concurrency)
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                claim = await agent.claim(1, 1.0)
                for task in claim.tasks:
                    await agent.complete_task(task.id, "ok", attempt=task.attempt)

        loops = [asyncio.create_task(loop()) for _ in range(concurrency)]
        try:
            return await submit_and_wait(url, cap, count)
        finally:
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
            await agent.deregister_agent()


async def started(
    serve: Callable[[], Awaitable[None]], wait_started: Callable[[], Awaitable[None]]
) -> asyncio.Task[None]:
    """`serve()` running in the background, once it has registered and claims."""
    task = asyncio.create_task(serve())
    await wait_started()
    return task


async def worker_run(url: str, cap: str, count: int, concurrency: int) -> dict[str, Any]:
    async with AsyncClient(url, agent_id=f"worker-{cap}") as client:
        worker = Worker(client, max_concurrent=concurrency, claim_wait_s=5)

        @worker.handler(cap)
        async def noop(job: Job) -> str:
            return "ok"

        serving = await started(worker.serve, worker.wait_started)
        try:
            return await submit_and_wait(url, cap, count)
        finally:
            worker.stop()
            await serving


async def runner_run(
    url: str, cap: str, count: int, concurrency: int, command: list[str]
) -> dict[str, Any]:
    runner = Runner(
        command,
        url=url,
        agent_id=f"runner-{cap}",
        max_concurrent_agents=concurrency,
        claim_wait_s=5,
    )
    runner.add_route(capabilities=[cap])
    serving = await started(runner.serve, runner.wait_started)
    try:
        return await submit_and_wait(url, cap, count)
    finally:
        runner.stop()
        await serving


async def measure(url: str, sizes: dict[str, int], concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        agent = Path(tmp) / "agent.py"
        agent.write_text(AGENT)
        return {
            "bare SDK loop": await bare_loop(url, "bare", sizes["fast"], concurrency),
            "Worker": await worker_run(url, "worker", sizes["fast"], concurrency),
            "Runner /bin/true": await runner_run(
                url, "true", sizes["process"], concurrency, ["/bin/true"]
            ),
            "Runner python agent": await runner_run(
                url, "python", sizes["process"], concurrency, [sys.executable, str(agent)]
            ),
        }


def main() -> None:
    args = parser(__doc__ or NAME).parse_args()
    sizes = {"fast": 100, "process": 20} if args.quick else {"fast": 2000, "process": 200}
    concurrency = 8
    with database(NAME) as db:
        header("agent runtime: Worker and Runner against a bare SDK loop", args.quick, db)
        before = previous(NAME, args.quick)
        with server(db) as proc:
            results = asyncio.run(measure(proc.api_url, sizes, concurrency))
    rows = [
        [name, round(r["tasks_per_s"], 1), r["p50"], r["p99"], r["max"]]
        for name, r in results.items()
    ]
    print(
        f"\n{sizes['fast']} tasks (SDK, Worker) and {sizes['process']} (Runner), "
        f"concurrency {concurrency}; per task: created -> completed"
    )
    print(table(["how", "tasks/s", "p50 ms", "p99 ms", "max ms"], rows))
    bare = results["bare SDK loop"]["tasks_per_s"]
    worker = results["Worker"]["tasks_per_s"]
    print(f"\nWorker vs bare SDK loop in this run: {worker / bare:.2f}x the throughput")
    for name, r in results.items():
        print(
            compare(
                f"{name} tasks/s",
                r["tasks_per_s"],
                dig(before, "results", name, "tasks_per_s"),
                lower_is_better=False,
            )
        )
    save(NAME, args.quick, {"sizes": sizes, "concurrency": concurrency}, results)
    print(
        f"SUMMARY {NAME}: Worker {worker:.0f} tasks/s ({worker / bare:.2f}x bare loop), "
        f"Runner {results['Runner /bin/true']['tasks_per_s']:.0f} processes/s"
    )


if __name__ == "__main__":
    main()
