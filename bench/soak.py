"""Soak: a steady mixed load on a real server for a configured time (30 minutes by
default), reporting each minute the server's memory (RSS), its open files, the database's
size and the latency percentiles of every call. Flat after warm-up is the goal: a figure
that keeps growing is a leak.

The load, at `--rate` tasks a second: a requester creating tasks (nine in ten one by one,
the rest in batches of ten) and reading some back (a task, a page of the list); `--agents`
agents each in a loop of heartbeat, claim (up to 5, long poll) and complete, or fail one in
twenty without retry; an operator reading /stats and /health every few seconds. The event
log and finished tasks are kept (the default retention), so the database grows by design:
what must stay flat is memory, files and latency.

    .venv/bin/python bench/soak.py                 # 30 minutes, SQLite
    .venv/bin/python bench/soak.py --minutes 5
    BENCH_DATABASE_URL=postgresql://... .venv/bin/python bench/soak.py

Not part of `make bench` (it runs for half an hour) nor of CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import (
    ADMIN_TOKEN,
    Database,
    RawClient,
    database,
    header,
    save,
    server,
    server_pid,
    stats_ms,
)

CAPABILITY = "soak"
OPS = ("create", "batch", "read", "list", "claim", "complete", "fail", "heartbeat", "stats")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def database_mb(db: Database) -> float:
    if db.url:
        import psycopg

        with psycopg.connect(db.url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return float(row[0]) / 1024 / 1024 if row else float("nan")
    files = (db.data_dir / "server").glob("dispatchd.db*")
    return sum(f.stat().st_size for f in files) / 1024 / 1024


async def request(client: RawClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One call; a keep-alive connection the server closed while idle is opened again."""
    try:
        return await client.request(method, path, body)
    except (asyncio.IncompleteReadError, ConnectionError):
        await client.close()
        await client.connect()
        return await client.request(method, path, body)


class Load:
    """The clients and what they measured in the current minute."""

    def __init__(self, url: str, rate: float, agents: int) -> None:
        self.url = url
        self.rate = rate
        self.agents = agents
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.created: list[str] = []
        self.stop = asyncio.Event()

    def take(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        latency, errors = self.latency, self.errors
        self.latency, self.errors = defaultdict(list), defaultdict(int)
        return latency, errors

    async def timed(
        self, op: str, client: RawClient, method: str, path: str, body: Any = None
    ) -> Any:
        started = time.perf_counter()
        status, data = await request(client, method, path, body)
        self.latency[op].append(time.perf_counter() - started)
        if status >= 400:
            self.errors[op] += 1
            return None
        return data

    async def requester(self) -> None:
        client = await RawClient(self.url, "soak-requester").connect()
        numbers = itertools.count()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not self.stop.is_set():
                n = next(numbers)
                body = {"title": f"soak {n}", "prompt": "x" * 200, "capabilities": [CAPABILITY]}
                body["context"] = {"n": n, "tags": ["a", "b"]}
                if n % 10 == 9:
                    tasks = [{**body, "title": f"soak {n}.{i}"} for i in range(10)]
                    out = await self.timed(
                        "batch", client, "POST", "/api/v1/tasks/batch", {"tasks": tasks}
                    )
                    step = 10
                else:
                    out = await self.timed("create", client, "POST", "/api/v1/tasks", body)
                    if out:
                        self.created.append(out["id"])
                    step = 1
                if n % 5 == 0 and self.created:
                    task_id = random.choice(self.created[-1000:])
                    await self.timed("read", client, "GET", f"/api/v1/tasks/{task_id}")
                if n % 20 == 0:
                    await self.timed("list", client, "GET", "/api/v1/tasks?limit=50&status=pending")
                if len(self.created) > 10_000:
                    del self.created[:5_000]
                next_at += step / self.rate
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            await client.close()

    async def agent(self, number: int) -> None:
        agent_id = f"soak-agent-{number}"
        client = await RawClient(self.url, agent_id).connect()
        status, out = await client.request(
            "POST", "/api/v1/agents", {"capabilities": [CAPABILITY], "max_concurrent": 5}
        )
        assert status == 201, out
        await client.close()
        client = await RawClient(self.url, agent_id, token=out["token"]).connect()
        beat = 0.0
        turn = itertools.count()
        try:
            while not self.stop.is_set():
                if time.monotonic() - beat > 5:
                    await self.timed(
                        "heartbeat", client, "POST", f"/api/v1/agents/{agent_id}/heartbeat", {}
                    )
                    beat = time.monotonic()
                out = await self.timed(
                    "claim", client, "POST", "/api/v1/tasks/claim", {"max_tasks": 5, "wait_s": 2}
                )
                for task in (out or {}).get("tasks", []):
                    path = f"/api/v1/tasks/{task['id']}"
                    if next(turn) % 20 == 19:
                        body = {"attempt": task["attempt"], "error": "soak", "retryable": False}
                        await self.timed("fail", client, "POST", f"{path}/fail", body)
                    else:
                        body = {
                            "attempt": task["attempt"],
                            "result": {"ok": True},
                            "summary": "done",
                        }
                        await self.timed("complete", client, "POST", f"{path}/complete", body)
        finally:
            await client.close()

    async def operator(self, ops_url: str) -> None:
        client = await RawClient(self.url, "operator", token=ADMIN_TOKEN).connect()
        ops = await RawClient(ops_url, "operator").connect()
        try:
            while not self.stop.is_set():
                await self.timed("stats", client, "GET", "/api/v1/stats")
                status, _ = await request(ops, "GET", "/health")
                if status != 200:
                    self.errors["health"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 5)
        finally:
            await client.close()
            await ops.close()


async def soak(minutes: float, rate: float, agents: int) -> list[dict[str, Any]]:
    with database("soak") as db, server(db) as proc:
        pid = server_pid(proc)
        load = Load(proc.api_url, rate, agents)
        jobs = [
            asyncio.create_task(load.requester()),
            asyncio.create_task(load.operator(proc.ops_url)),
        ]
        jobs += [asyncio.create_task(load.agent(i)) for i in range(agents)]
        rows: list[dict[str, Any]] = []
        started = time.monotonic()
        headers = [
            "min",
            "RSS MB",
            "fds",
            "DB MB",
            "calls",
            "errors",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "claim p50",
        ]
        print("  ".join(h.rjust(8) for h in headers), flush=True)
        try:
            for minute in range(1, int(minutes) + 1):
                await asyncio.sleep(max(0.0, started + minute * 60 - time.monotonic()))
                for job in jobs:
                    if job.done():
                        job.result()  # a client that died ends the soak with its error
                latency, errors = load.take()
                # A claim long-polls (up to 2 s when the queue is empty): its wait is not
                # latency, so it is reported on its own, not in the percentiles of the rest.
                every = stats_ms([s for op, v in latency.items() if op != "claim" for s in v])
                row = {
                    "minute": minute,
                    "rss_mb": round(rss_mb(pid), 1),
                    "open_files": open_files(pid),
                    "db_mb": round(database_mb(db), 1),
                    "calls": every.get("n", 0),
                    "errors": dict(errors),
                    "latency_ms": every,
                    "by_call": {op: stats_ms(latency[op]) for op in OPS if latency.get(op)},
                }
                rows.append(row)
                cells = [
                    minute,
                    row["rss_mb"],
                    row["open_files"],
                    row["db_mb"],
                    row["calls"],
                    sum(errors.values()),
                    every.get("p50", float("nan")),
                    every.get("p95", float("nan")),
                    every.get("p99", float("nan")),
                    every.get("max", float("nan")),
                    row["by_call"].get("claim", {}).get("p50", float("nan")),
                ]
                print("  ".join(f"{c:>8.6g}" for c in cells), flush=True)
        finally:
            load.stop.set()
            await asyncio.gather(*jobs, return_exceptions=True)
        return rows


def main() -> None:
    from _common import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30, help="how long (default 30)")
    p.add_argument("--rate", type=float, default=20, help="tasks created a second (default 20)")
    p.add_argument("--agents", type=int, default=4, help="agents claiming (default 4)")
    args = p.parse_args()
    minutes = 1 if args.quick else args.minutes
    header(f"soak: {minutes:g} min, {args.rate:g} tasks/s, {args.agents} agents", args.quick)
    rows = asyncio.run(soak(minutes, args.rate, args.agents))
    params = {"minutes": minutes, "rate": args.rate, "agents": args.agents}
    path = save("soak", args.quick, params, {"minutes": rows})
    first, last = rows[0], rows[-1]
    print(
        f"SUMMARY soak {minutes:g} min: RSS {first['rss_mb']} → {last['rss_mb']} MB, "
        f"open files {first['open_files']} → {last['open_files']}, "
        f"DB {first['db_mb']} → {last['db_mb']} MB, "
        f"p99 {first['latency_ms'].get('p99')} → {last['latency_ms'].get('p99')} ms ({path.name})"
    )


if __name__ == "__main__":
    main()
