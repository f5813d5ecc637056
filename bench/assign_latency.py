"""Create → assigned latency with idle agents long-polling over real HTTP.

A real `dispatchd serve` process; N agents (8 by default) each hold a long-polling
`POST /api/v1/tasks/claim` (`wait_s=30`) open on a connection of its own; a requester
creates tasks one at a time. For each task:

* client latency: from just before the create request is sent to the moment the claim
  response carrying the task reaches its agent (same process, monotonic clock);
* server latency: the task's `task.created` → `task.assigned` event timestamps (push
  assignment), and `task.created` → `task.started` (the long-polling claim took it);
* the create round trip alone, and the floor of any request (a 404: HTTP and the
  framework, no engine work), for scale.

The agent completes each task before the requester creates the next, so every task meets
an idle server and idle agents (the case SPEC §8 "Fast" names). The run is made twice on
fresh servers: with httpx clients (what agents use), then with a minimal socket client, so
that the client's own cost can be told apart from the server's; and a third time without
HTTP at all: the same agents and requester calling the services of an in-process Runtime
(push assignment on), which is the engine's share of the latency; that run also counts
the store calls (thread hops and transactions on SQLite) each task costs.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections import Counter
from datetime import datetime
from typing import Any

from _common import (
    Database,
    LoadMeter,
    client,
    compare,
    database,
    dig,
    header,
    parser,
    previous,
    save,
    server,
    server_pid,
    stats_ms,
    table,
    verdict,
)

from dispatchd.config import Settings
from dispatchd.domain.access import Caller
from dispatchd.domain.models import TaskSpec
from dispatchd.runtime import Runtime

NAME = "assign_latency"
TAG = "bench"
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
# A pause before each create, so that the agent that completed the last task is back in its
# long poll (past its first look for work): else it may pull the new task by claim before
# push assignment gets to it, which is another path than the one measured here.
SETTLE_S = 0.005
LABELS = {
    "client_create_to_claimed_ms": "client: create sent → claim answer at agent",
    "server_created_to_assigned_ms": "server: task.created → task.assigned",
    "server_created_to_started_ms": "server: task.created → task.started (claimed)",
    "create_round_trip_ms": "client: create round trip",
    "http_floor_ms": "client: HTTP floor (a 404, no engine work)",
}


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Bench:
    def __init__(self, url: str, agents: int, kind: str) -> None:
        self.url = url
        self.kind = kind
        self.agent_ids = [f"bench-agent-{i:02d}" for i in range(agents)]
        # title → arrival time at the agent (the title is known before the create answers,
        # and the claim may answer first); title → the agent has completed it.
        self.arrived: dict[str, asyncio.Future[float]] = {}
        self.finished: dict[str, asyncio.Future[None]] = {}
        self.by_agent: dict[str, int] = {}

    def expect(self, title: str) -> tuple[asyncio.Future[float], asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        self.arrived[title] = loop.create_future()
        self.finished[title] = loop.create_future()
        return self.arrived[title], self.finished[title]

    async def agent(self, agent_id: str) -> None:
        conn = await client(self.kind, self.url, agent_id)
        try:
            while True:
                body = await conn.call(
                    "POST", "/api/v1/tasks/claim", {"max_tasks": 1, "wait_s": 30}
                )
                at = time.monotonic()
                for task in body["tasks"]:
                    title = task["title"]
                    arrived = self.arrived.get(title)
                    if arrived is not None and not arrived.done():
                        arrived.set_result(at)
                    self.by_agent[agent_id] = self.by_agent.get(agent_id, 0) + 1
                    await conn.call(
                        "POST", f"/api/v1/tasks/{task['id']}/complete", {"result": "ok"}
                    )
                    finished = self.finished.get(title)
                    if finished is not None and not finished.done():
                        finished.set_result(None)
        finally:
            await conn.close()

    async def run(self, tasks: int, warmup: int) -> dict[str, Any]:
        for agent_id in self.agent_ids:
            conn = await client(self.kind, self.url, agent_id)
            await conn.call("POST", "/api/v1/agents", {"capabilities": [TAG], "status": "ready"})
            await conn.close()
        requester = await client(self.kind, self.url, "bench-requester")
        agents = [asyncio.create_task(self.agent(a)) for a in self.agent_ids]
        await asyncio.sleep(0.5)  # every agent is long-polling by now
        rows: list[dict[str, Any]] = []
        try:
            for i in range(warmup + tasks):
                title = f"bench task {i}"
                await asyncio.sleep(SETTLE_S)
                arrived, finished = self.expect(title)
                t0 = time.monotonic()
                created = await requester.call(
                    "POST", "/api/v1/tasks", {"title": title, "capabilities": [TAG]}
                )
                t_created = time.monotonic()
                t_arrived = await asyncio.wait_for(arrived, 30)
                await asyncio.wait_for(finished, 30)
                if i >= warmup:
                    rows.append(
                        {
                            "id": created["id"],
                            "client_s": t_arrived - t0,
                            "create_rtt_s": t_created - t0,
                        }
                    )
        finally:
            for job in agents:
                job.cancel()
            await asyncio.gather(*agents, return_exceptions=True)
        floor = []
        for _ in range(min(tasks, 200)):
            t0 = time.monotonic()
            status, _ = await requester.request("GET", "/api/v1/tasks/-/nothing")
            floor.append(time.monotonic() - t0)
            assert status == 404, status
        for row in rows:  # the server's view, from each task's event log
            events = await requester.call("GET", f"/api/v1/tasks/{row['id']}/events")
            times = {e["type"]: _ts(e["created_at"]) for e in events["events"]}
            created_at = times["task.created"]
            row["server_assigned_s"] = (times["task.assigned"] - created_at).total_seconds()
            row["server_started_s"] = (times["task.started"] - created_at).total_seconds()
            row["pushed"] = _pushed(times)
        await requester.close()
        return {
            "client_create_to_claimed_ms": stats_ms([r["client_s"] for r in rows]),
            "server_created_to_assigned_ms": stats_ms([r["server_assigned_s"] for r in rows]),
            "server_created_to_started_ms": stats_ms([r["server_started_s"] for r in rows]),
            "create_round_trip_ms": stats_ms([r["create_rtt_s"] for r in rows]),
            "http_floor_ms": stats_ms(floor),
            "pushed_share": round(sum(r["pushed"] for r in rows) / len(rows), 3),
            "tasks_per_agent": dict(sorted(self.by_agent.items())),
        }


def _pushed(times: dict[str, Any]) -> bool:
    """Assigned by push: before the claim started it, or in the creating commit itself
    (then started in it too, for the claim that was waiting)."""
    assigned = times["task.assigned"]
    return bool(assigned < times["task.started"] or assigned == times["task.created"])


async def in_process(db: Database, agents: int, tasks: int, warmup: int) -> dict[str, Any]:
    """The same flow on the services of a Runtime in this process: no HTTP, no JSON."""
    settings = Settings.model_validate(
        {"server": {"data_dir": str(db.data_dir)}, "database": {"url": db.url}}
    )
    agent_ids = [f"bench-agent-{i:02d}" for i in range(agents)]
    arrived: dict[str, asyncio.Future[float]] = {}
    finished: dict[str, asyncio.Future[None]] = {}
    by_agent: dict[str, int] = {}
    stages: dict[str, tuple[float, float]] = {}  # title → (woken, answered), wall clock
    starts: dict[str, float] = {}  # title → wall-clock time the create was called
    calls: Counter[str] = Counter()
    woken: dict[str, float] = {}  # agent → wall-clock time its long poll was last woken
    async with Runtime.build(settings) as rt:
        count_calls(rt.store, calls)
        waiters = rt.claims.waiters
        wake = waiters.wake

        def timed_wake(agent_id: str) -> None:
            woken.setdefault(agent_id, time.time())
            wake(agent_id)

        waiters.wake = timed_wake  # type: ignore[method-assign]
        take = waiters.take

        def timed_take(agent_id: str, tasks: Any = ()) -> Any:
            # A claim taken by the assigning commit is answered from it, not woken.
            waiter = take(agent_id, tasks)
            if waiter is not None:
                waiter.future.add_done_callback(lambda _: woken.setdefault(agent_id, time.time()))
            return waiter

        waiters.take = timed_take  # type: ignore[method-assign]
        for agent_id in agent_ids:
            await rt.agents.register(
                agent_id, {"capabilities": {TAG: 1.0}}, Caller(agent_id, is_admin=False)
            )

        async def agent(agent_id: str) -> None:
            caller = Caller(agent_id)
            while True:
                woken.pop(agent_id, None)
                claimed = await rt.claims.claim(agent_id, caller, max_tasks=1, wait_s=30)
                at, wall = time.monotonic(), time.time()
                for task in claimed.tasks:
                    stages[task.title] = (woken.get(agent_id, math.nan), wall)
                    arrived[task.title].set_result(at)
                    by_agent[agent_id] = by_agent.get(agent_id, 0) + 1
                    await rt.tasks.complete(task.id, caller, result="ok", summary=None)
                    finished[task.title].set_result(None)

        jobs = [asyncio.create_task(agent(a)) for a in agent_ids]
        await asyncio.sleep(0.2)
        requester = Caller("bench-requester")
        rows = []
        loop = asyncio.get_running_loop()
        try:
            for i in range(warmup + tasks):
                title = f"bench task {i}"
                await asyncio.sleep(SETTLE_S)
                arrived[title], finished[title] = loop.create_future(), loop.create_future()
                t0 = time.monotonic()
                starts[title] = time.time()
                created = await rt.tasks.create(
                    TaskSpec(title=title, capabilities=[TAG]), requester
                )
                t_created = time.monotonic()
                t_arrived = await asyncio.wait_for(arrived[title], 30)
                await asyncio.wait_for(finished[title], 30)
                if i == warmup - 1:
                    calls.clear()
                if i >= warmup:
                    rows.append(
                        {
                            "id": created.task.id,
                            "title": title,
                            "client_s": t_arrived - t0,
                            "create_rtt_s": t_created - t0,
                        }
                    )
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
        per_task = {name: round(n / tasks, 2) for name, n in calls.most_common()}
        for row in rows:
            times = {e.type: e.created_at for e in await rt.store.events_for_task(row["id"])}
            created_at = times["task.created"]
            row["server_assigned_s"] = (times["task.assigned"] - created_at).total_seconds()
            row["server_started_s"] = (times["task.started"] - created_at).total_seconds()
            row["pushed"] = _pushed(times)
            woke, answered = stages[row["title"]]
            row["stages"] = {
                "create called → task.created stamped": created_at.timestamp()
                - starts[row["title"]],
                "task.created → task.assigned stamped": row["server_assigned_s"],
                "task.assigned → long poll woken or given": woke
                - times["task.assigned"].timestamp(),
                "long poll woken → claim answered": answered - woke,
            }
    return {
        "stages_ms": {
            name: stats_ms([r["stages"][name] for r in rows]) for name in rows[0]["stages"]
        },
        "client_create_to_claimed_ms": stats_ms([r["client_s"] for r in rows]),
        "server_created_to_assigned_ms": stats_ms([r["server_assigned_s"] for r in rows]),
        "server_created_to_started_ms": stats_ms([r["server_started_s"] for r in rows]),
        "create_round_trip_ms": stats_ms([r["create_rtt_s"] for r in rows]),
        "http_floor_ms": {"n": 0, "p50": None, "p95": None, "p99": None, "max": None},
        "pushed_share": round(sum(r["pushed"] for r in rows) / len(rows), 3),
        "tasks_per_agent": dict(sorted(by_agent.items())),
        "store_calls_per_task": per_task,
    }


def count_calls(store: Any, calls: Counter[str]) -> None:
    """Count the store calls (each a thread hop and a transaction on SQLite) by method."""
    for name in dir(store):
        method = getattr(store, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(method):
            continue
        if name in ("open", "close", "migrate", "watch"):
            continue

        def wrap(method: Any, name: str) -> Any:
            async def counted(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return await method(*args, **kwargs)

            return counted

        setattr(store, name, wrap(method, name))


def measure(kind: str, agents: int, tasks: int, warmup: int) -> dict[str, Any]:
    if kind == "inprocess":
        with database(NAME) as db:
            meter = LoadMeter({"bench": os.getpid()}).start()
            results = asyncio.run(in_process(db, agents, tasks, warmup))
            results["cpu_cores"] = meter.stop()
            return results
    with database(NAME) as db, server(db) as srv:
        meter = LoadMeter({"server": server_pid(srv), "bench": os.getpid()}).start()
        results = asyncio.run(Bench(srv.api_url, agents, kind).run(tasks, warmup))
        results["cpu_cores"] = meter.stop()
    return results


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--tasks", type=int, default=None, help="measured tasks (default 1000)")
    p.add_argument(
        "--clients",
        default="httpx,raw,inprocess",
        help="client kinds to run, in order (httpx, raw, inprocess)",
    )
    args = p.parse_args()
    tasks = args.tasks or (50 if args.quick else 1000)
    warmup = 10 if args.quick else 50
    kinds = [k.strip() for k in args.clients.split(",") if k.strip()]
    header("create → assigned latency, idle agents long-polling over HTTP", args.quick)
    before = previous(NAME, args.quick)
    results: dict[str, Any] = {}
    for kind in kinds:
        results[kind] = measure(kind, args.agents, tasks, warmup)
        rows = []
        for key, label in LABELS.items():
            s = results[kind][key]
            rows.append([label, s["n"], s["p50"], s["p95"], s["p99"], s["max"]])
        print(
            f"\n{kind} clients: {args.agents} agents long-polling, {tasks} tasks one at a time (ms)"
        )
        print(table(["measure", "n", "p50", "p95", "p99", "max"], rows))
        print(
            f"tasks per agent: {list(results[kind]['tasks_per_agent'].values())}; assigned by "
            f"push (not pulled by a claim): {results[kind]['pushed_share'] * 100:.1f}%"
        )
        print(f"CPU (cores, average over the run): {results[kind]['cpu_cores']}")
        if "store_calls_per_task" in results[kind]:
            print(
                "store calls per task (create → assign → claim → complete): "
                f"{results[kind]['store_calls_per_task']}"
            )
        if "stages_ms" in results[kind]:
            print("where the in-process latency goes (ms):")
            stage_rows = [
                [name, s["p50"], s["p95"], s["p99"]]
                for name, s in results[kind]["stages_ms"].items()
            ]
            print(table(["stage", "p50", "p95", "p99"], stage_rows))
        for key in ("p50", "p99"):
            old = dig(before, "results", kind, "client_create_to_claimed_ms", key)
            now = results[kind]["client_create_to_claimed_ms"][key]
            print(compare(f"  {kind} client {key} ms", now, old, lower_is_better=True))
    main_kind = kinds[0]
    c = results[main_kind]["client_create_to_claimed_ms"]
    s = results[main_kind]["server_created_to_assigned_ms"]
    p50_ok, p99_ok = c["p50"] <= TARGET_P50_MS, c["p99"] <= TARGET_P99_MS
    print(
        f"\ntarget (client view, {main_kind}): p50 ≤ {TARGET_P50_MS} ms {verdict(p50_ok)}, "
        f"p99 ≤ {TARGET_P99_MS} ms {verdict(p99_ok)}"
    )
    params = {"agents": args.agents, "tasks": tasks, "warmup": warmup, "clients": kinds}
    path = save(NAME, args.quick, params, results)
    others = "; ".join(
        f"{k} p50 {results[k]['client_create_to_claimed_ms']['p50']:.2f} "
        f"p99 {results[k]['client_create_to_claimed_ms']['p99']:.2f}"
        for k in kinds[1:]
    )
    print(
        f"SUMMARY {NAME}: {main_kind} client p50 {c['p50']:.2f} ms p99 {c['p99']:.2f} ms "
        f"[p50≤2 {verdict(p50_ok)}, p99≤10 {verdict(p99_ok)}]; server created→assigned "
        f"p50 {s['p50']:.2f} p99 {s['p99']:.2f}{'; ' + others if others else ''} → {path.name}"
    )


if __name__ == "__main__":
    main()
