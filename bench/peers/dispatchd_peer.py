"""The dispatchd side of the peers benchmark: a backlog, agents that drain it, and the
create → start latency at idle agents, all through the HTTP API of a real server.

Agents are plain HTTP clients, one keep-alive connection each (`RawClient`), run as asyncio
tasks in the benchmark's process. Each records what `_stamps.py` describes for the other
peers: `time.time()` when a claim answer hands it the task (start) and when its handler
(which does nothing) returns (end), before it reports the completion.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from _common import RawClient

TAG = "bench"
API = "/api/v1"


@dataclass(frozen=True)
class Mode:
    """How agents take and report work: `per_claim` tasks per claim, completed one call
    each or with one batch completion call per claim."""

    name: str
    per_claim: int
    batch_complete: bool


MODES = {
    "single": Mode("single", 1, False),
    "claim10": Mode("claim10", 10, False),
    "claim10+bc": Mode("claim10+bc", 10, True),
}


class Stamps:
    """Rows (i, sent, start, end) shared by the agents, and an event when `want` are in."""

    def __init__(self, want: int) -> None:
        self.rows: list[tuple[int, float, float, float]] = []
        self.ids: set[str] = set()
        self.want = want
        self.done = asyncio.Event()

    def add(self, task_id: str, i: int, sent: float, start: float, end: float) -> None:
        self.rows.append((i, sent, start, end))
        self.ids.add(task_id)
        if len(self.rows) >= self.want:
            self.done.set()


async def register(url: str, agents: int, max_concurrent: int) -> list[str]:
    ids = [f"agent-{k:02d}" for k in range(agents)]
    for agent_id in ids:
        conn = RawClient(url, agent_id)
        try:
            await conn.call(
                "POST",
                f"{API}/agents",
                {"capabilities": [TAG], "status": "ready", "max_concurrent": max_concurrent},
            )
        finally:
            await conn.close()
    return ids


async def backlog(url: str, n: int, batch: int) -> float:
    """Create `n` tasks through POST /tasks/batch, `batch` at a time; the seconds it took."""
    conn = RawClient(url, "requester")
    body = {"title": "noop", "capabilities": [TAG]}
    try:
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            await conn.call("POST", f"{API}/tasks/batch", {"tasks": [body] * min(batch, n - lo)})
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def agent(url: str, agent_id: str, mode: Mode, wait_s: float, stamps: Stamps) -> None:
    conn = RawClient(url, agent_id)
    claim = {"max_tasks": mode.per_claim, "wait_s": wait_s}
    try:
        while not stamps.done.is_set():
            got = await conn.call("POST", f"{API}/tasks/claim", claim)
            start = time.time()
            for task in got["tasks"]:
                ctx = task.get("context") or {}
                # the handler: nothing to do
                stamps.add(
                    task["id"],
                    int(ctx.get("i", 0)),
                    float(ctx.get("sent", 0.0)),
                    start,
                    time.time(),
                )
                if not mode.batch_complete:
                    await conn.call("POST", f"{API}/tasks/{task['id']}/complete", {})
            if mode.batch_complete and got["tasks"]:
                items = [{"task_id": task["id"]} for task in got["tasks"]]
                answer = await conn.call("POST", f"{API}/tasks/batch/complete", {"items": items})
                failed = [item for item in answer["items"] if not item["ok"]]
                if failed:
                    raise RuntimeError(f"batch completion refused: {failed[:3]}")
    finally:
        await conn.close()


async def _run_agents(
    url: str,
    ids: list[str],
    mode: Mode,
    wait_s: float,
    stamps: Stamps,
    limit_s: float,
    requester: Any = None,
) -> None:
    jobs = [asyncio.create_task(agent(url, a, mode, wait_s, stamps)) for a in ids]
    if requester is not None:
        jobs.append(asyncio.create_task(requester))
    waiter = asyncio.create_task(stamps.done.wait())
    try:
        done, _ = await asyncio.wait(
            [waiter, *jobs], timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
        )
        while waiter not in done:
            if not done:
                raise RuntimeError(
                    f"only {len(stamps.rows)} of {stamps.want} tasks done within {limit_s:.0f} s"
                )
            for job in done:
                job.result()  # an agent or the requester failed: raise its error
                jobs.remove(job)
            done, _ = await asyncio.wait(
                [waiter, *jobs], timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
            )
    finally:
        for job in [waiter, *jobs]:
            job.cancel()
        await asyncio.gather(waiter, *jobs, return_exceptions=True)


async def drain(url: str, n: int, agents: int, mode: Mode, limit_s: float) -> Stamps:
    """Agents registered now (the workers start) drain the backlog already created."""
    ids = await register(url, agents, mode.per_claim)
    stamps = Stamps(n)
    await _run_agents(url, ids, mode, 1.0, stamps, limit_s)
    if len(stamps.ids) != len(stamps.rows):
        raise RuntimeError(f"{len(stamps.rows) - len(stamps.ids)} tasks were handed out twice")
    return stamps


async def latency(
    url: str, n: int, warmup: int, gap: float, agents: int, limit_s: float
) -> tuple[Stamps, int]:
    """Idle agents wait in a long-poll claim; a requester creates one task every `gap`
    seconds (fixed schedule), stamping each just before its create request is sent."""
    ids = await register(url, agents, 1)
    stamps = Stamps(warmup + n)
    late = 0

    async def requester() -> None:
        nonlocal late
        conn = RawClient(url, "requester")
        try:
            await asyncio.sleep(0.5)  # every agent is in its long poll by now
            t0 = time.monotonic()
            for k in range(warmup + n):
                delay = t0 + k * gap - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late += 1
                context = {"i": k, "sent": time.time()}  # stamped just before it is sent
                body = {"title": "noop", "capabilities": [TAG], "context": context}
                await conn.call("POST", f"{API}/tasks", body)
        finally:
            await conn.close()
        await asyncio.Event().wait()  # done sending; the agents decide when it is over

    await _run_agents(url, ids, MODES["single"], 30.0, stamps, limit_s, requester())
    return stamps, late


def drain_rate(rows: list[Any]) -> tuple[float, float]:
    """(tasks per second, seconds) from the first start to the last finish."""
    first = min(r[2] for r in rows)
    last = max(r[3] for r in rows)
    span = max(last - first, 1e-9)
    return len(rows) / span, span


def latencies(rows: list[Any], warmup: int) -> list[float]:
    """Seconds from the create stamp to the start, of the tasks after the warm-up."""
    return [r[2] - r[1] for r in rows if r[0] >= warmup]
