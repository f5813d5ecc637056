"""Full lifecycle throughput (create → claim → complete) with 1, 8 and 32 agents.

A real `dispatchd serve` process (a fresh one per configuration) and client processes,
each running some of the agents as asyncio tasks on connections of their own. Two modes:

* single: each agent loops POST /tasks (one task), POST /tasks/claim (max_tasks=1),
  POST /tasks/{id}/complete for what it got;
* batch: each agent keeps up to `--batch` tasks of its own making outstanding with
  POST /tasks/batch, claims up to `--claim` at a time and completes each with its own
  POST /tasks/{id}/complete;
* batch+bc: the same, but what a claim returned is completed with one
  POST /tasks/batch/complete (skipped when the server has no such route).

Push assignment runs as always: a created task is handed to the best agent with room, and
that agent's claim starts it. Throughput counts the completions answered inside the
measuring window (after a warm-up). The CPU used by the server, by the clients and by
anything else on the machine is measured over the same window, which says who was the
bottleneck; the server's own latency histogram (/metrics) says where its time went.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections import defaultdict
from typing import Any

import httpx
from _common import (
    LoadMeter,
    client,
    compare,
    database,
    dig,
    header,
    parser,
    percentile,
    previous,
    route_delta,
    route_times,
    save,
    server,
    server_pid,
    table,
    verdict,
)

NAME = "lifecycle_throughput"
TAG = "bench"
TARGET_SINGLE = 1_500.0
TARGET_BATCH = 10_000.0


# --- client processes -------------------------------------------------------------------


class Agent:
    def __init__(self, spec: dict[str, Any], agent_id: str) -> None:
        self.spec = spec
        self.agent_id = agent_id
        self.completed = 0
        self.time: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.lifecycles: list[float] = []

    def _count(self, kind: str, seconds: float, at: float, n: int = 1) -> None:
        if self.spec["t_start"] <= at < self.spec["t_end"]:
            self.time[kind] += seconds
            self.calls[kind] += n

    async def run(self) -> None:
        spec = self.spec
        conn = await client(spec["client"], spec["url"], self.agent_id)
        t_end = spec["t_end"]
        outstanding = 0
        task_body = {"title": "bench task", "capabilities": [TAG]}
        try:
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                if spec["mode"] == "single":
                    await conn.call("POST", "/api/v1/tasks", task_body)
                    t1 = time.monotonic()
                    self._count("create", t1 - t0, t1)
                    claim = {"max_tasks": 1, "wait_s": 1}
                else:
                    t1 = t0
                    if outstanding < spec["batch"]:
                        await conn.call(
                            "POST", "/api/v1/tasks/batch", {"tasks": [task_body] * spec["batch"]}
                        )
                        outstanding += spec["batch"]
                        t1 = time.monotonic()
                        self._count("create", t1 - t0, t1)
                    claim = {"max_tasks": spec["claim"], "wait_s": 0.5}
                got = await conn.call("POST", "/api/v1/tasks/claim", claim)
                t2 = time.monotonic()
                self._count("claim", t2 - t1, t2)
                if spec["mode"] == "batch+bc" and got["tasks"]:
                    items = [{"task_id": task["id"]} for task in got["tasks"]]
                    answer = await conn.call(
                        "POST", "/api/v1/tasks/batch/complete", {"items": items}
                    )
                    t4 = time.monotonic()
                    self._count("complete", t4 - t2, t4)
                    ok = sum(1 for item in answer["items"] if item["ok"])
                    outstanding -= ok
                    if spec["t_start"] <= t4 < t_end:
                        self.completed += ok
                    continue
                for task in got["tasks"]:
                    t3 = time.monotonic()
                    await conn.call("POST", f"/api/v1/tasks/{task['id']}/complete", {})
                    t4 = time.monotonic()
                    self._count("complete", t4 - t3, t4)
                    outstanding -= 1
                    if spec["t_start"] <= t4 < t_end:
                        self.completed += 1
                if spec["mode"] == "single" and got["tasks"] and spec["t_start"] <= t0:
                    self.lifecycles.append(time.monotonic() - t0)
        finally:
            await conn.close()


def worker(spec: dict[str, Any], agent_ids: list[str], ready: Any, go: Any, out: Any) -> None:
    """One client process: its agents run until the window ends, then it reports."""
    ready.put(len(agent_ids))
    go.wait()
    spec = {**spec, "t_start": spec["start"].value, "t_end": spec["end"].value}
    spec.pop("start"), spec.pop("end")
    agents = [Agent(spec, a) for a in agent_ids]

    async def main() -> float:
        jobs = [asyncio.create_task(a.run()) for a in agents]
        await asyncio.sleep(max(spec["t_start"] - time.monotonic(), 0))
        cpu0 = time.process_time()
        await asyncio.sleep(max(spec["t_end"] - time.monotonic(), 0))
        cpu = time.process_time() - cpu0
        await asyncio.gather(*jobs)
        return cpu

    cpu = asyncio.run(main())
    time_by: dict[str, float] = defaultdict(float)
    calls_by: dict[str, int] = defaultdict(int)
    for a in agents:
        for k, v in a.time.items():
            time_by[k] += v
        for k, n in a.calls.items():
            calls_by[k] += n
    out.put(
        {
            "completed": sum(a.completed for a in agents),
            "time": dict(time_by),
            "calls": dict(calls_by),
            "lifecycles": [x for a in agents for x in a.lifecycles],
            "cpu_s": cpu,
        }
    )


# --- one configuration ------------------------------------------------------------------


def measure(
    mode: str, agents: int, procs: int, args: Any, duration: float, warmup: float
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with database(NAME) as db, server(db) as srv:
        agent_ids = [f"agent-{i:03d}" for i in range(agents)]
        limit = 3 if mode == "single" else max(args.batch, args.claim)
        with httpx.Client(base_url=srv.api_url, timeout=30) as http:
            for agent_id in agent_ids:
                http.post(
                    "/api/v1/agents",
                    json={"capabilities": [TAG], "status": "ready", "max_concurrent": limit},
                    headers={"X-Agent-ID": agent_id},
                ).raise_for_status()
            ops = httpx.Client(base_url=srv.ops_url, timeout=30)
            start, end = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
            ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
            spec = {
                "url": srv.api_url,
                "mode": mode,
                "batch": args.batch,
                "claim": args.claim,
                "client": args.client,
                "start": start,
                "end": end,
            }
            groups = [agent_ids[i::procs] for i in range(procs)]
            workers = [
                ctx.Process(target=worker, args=(spec, g, ready, go, out), daemon=True)
                for g in groups
                if g
            ]
            for w in workers:
                w.start()
            for _ in workers:
                ready.get(timeout=60)
            start.value = time.monotonic() + warmup
            end.value = start.value + duration
            go.set()
            pids = {
                "server": server_pid(srv),
                **{f"client{i}": w.pid for i, w in enumerate(workers)},
            }
            time.sleep(max(start.value - time.monotonic(), 0))
            meter = LoadMeter({k: v for k, v in pids.items() if v}).start()
            routes0 = route_times(ops.get("/metrics").text)
            time.sleep(max(end.value - time.monotonic(), 0))
            cpu = meter.stop()
            routes = route_delta(routes0, route_times(ops.get("/metrics").text))
            reports = [out.get(timeout=60) for _ in workers]
            for w in workers:
                w.join(30)
            ops.close()
    completed = sum(r["completed"] for r in reports)
    time_by: dict[str, float] = defaultdict(float)
    calls_by: dict[str, int] = defaultdict(int)
    for r in reports:
        for k, v in r["time"].items():
            time_by[k] += v
        for k, n in r["calls"].items():
            calls_by[k] += n
    client_total = sum(time_by.values()) or 1.0
    server_total = sum(r["sum_s"] for r in routes.values()) or 1.0
    lifecycles = sorted(x * 1000 for r in reports for x in r["lifecycles"])
    clients_cpu = round(sum(v for k, v in cpu.items() if k.startswith("client")), 3)
    return {
        "mode": mode,
        "agents": agents,
        "client_processes": len(workers),
        "completed": completed,
        "per_s": round(completed / duration, 1),
        "calls": dict(calls_by),
        "client_time_share": {k: round(v / client_total, 3) for k, v in time_by.items()},
        "client_mean_ms": {k: round(time_by[k] / calls_by[k] * 1000, 3) for k in time_by},
        "server_routes": {
            k: {
                "count": int(v["count"]),
                "mean_ms": round(v["sum_s"] / v["count"] * 1000, 3),
                "share": round(v["sum_s"] / server_total, 3),
            }
            for k, v in routes.items()
        },
        "lifecycle_ms": {
            "p50": round(percentile(lifecycles, 50), 3),
            "p99": round(percentile(lifecycles, 99), 3),
        }
        if lifecycles
        else {},
        "cpu_cores": {**cpu, "clients": clients_cpu},
        "bottleneck": bottleneck(cpu["server"], clients_cpu, len(workers), cpu["machine"]),
    }


def bottleneck(server_cpu: float, clients_cpu: float, procs: int, machine: float) -> str:
    if server_cpu >= 0.9:
        return "server (its event loop is saturated)"
    if clients_cpu >= 0.9 * procs:
        return "clients"
    if machine >= 1.8:
        return "the machine (both cores busy)"
    return "neither saturated: round trips and waits bound it"


def has_batch_complete() -> bool:
    with database(NAME) as db, server(db) as srv:
        r = httpx.post(
            f"{srv.api_url}/api/v1/tasks/batch/complete",
            json={"items": []},
            headers={"X-Agent-ID": "probe"},
        )
        return r.status_code not in (404, 405)


# --- report -----------------------------------------------------------------------------


def _share(r: dict[str, Any], kind: str) -> str:
    share = r["client_time_share"].get(kind)
    return "-" if share is None else f"{share * 100:.0f}%"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", default="1,8,32", help="agent counts to run")
    p.add_argument("--modes", default="single,batch,batch+bc")
    p.add_argument("--batch", type=int, default=100, help="tasks per POST /tasks/batch")
    p.add_argument("--claim", type=int, default=50, help="max_tasks per claim in batch mode")
    p.add_argument("--client", default="raw", choices=["raw", "httpx"])
    p.add_argument("--procs", type=int, default=0, help="client processes (default: auto)")
    p.add_argument("--duration", type=float, default=None, help="seconds measured per run")
    args = p.parse_args()
    duration = args.duration or (1.5 if args.quick else 8.0)
    warmup = 0.5 if args.quick else 2.0
    counts = [int(x) for x in args.agents.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    header("lifecycle throughput: create → claim → complete over HTTP", args.quick)
    before = previous(NAME, args.quick)
    runs: list[dict[str, Any]] = []
    if "batch+bc" in modes and not has_batch_complete():
        print("  no POST /api/v1/tasks/batch/complete on this server: batch+bc skipped")
        modes.remove("batch+bc")
    for mode in modes:
        for n in counts:
            procs = args.procs or min(n, 2)
            r = measure(mode, n, procs, args, duration, warmup)
            runs.append(r)
            print(
                f"  {mode:6} {n:3} agents / {r['client_processes']} client procs: "
                f"{r['per_s']:,.0f}/s, server {r['cpu_cores']['server']:.2f} cores, "
                f"clients {r['cpu_cores']['clients']:.2f}, others {r['cpu_cores']['others']:.2f}",
                flush=True,
            )
    for mode in modes:
        rows = []
        for r in (r for r in runs if r["mode"] == mode):
            rows.append(
                [
                    r["agents"],
                    r["client_processes"],
                    r["per_s"],
                    r["lifecycle_ms"].get("p50", float("nan")),
                    r["cpu_cores"]["server"],
                    r["cpu_cores"]["clients"],
                    r["cpu_cores"]["others"],
                    _share(r, "create"),
                    _share(r, "claim"),
                    _share(r, "complete"),
                    r["bottleneck"],
                ]
            )
        unit = "lifecycles/s" if mode == "single" else "tasks/s"
        if mode == "batch+bc":
            mode_name = "batch+bc (batch create, claim, one batch completion per claim)"
        else:
            mode_name = mode
        print(f"\n{mode_name} mode ({unit}; CPU in cores; agents' time share in each call)")
        print(
            table(
                [
                    "agents",
                    "procs",
                    unit,
                    "lifecycle p50 ms",
                    "server cpu",
                    "clients cpu",
                    "others cpu",
                    "create",
                    "claim",
                    "complete",
                    "bottleneck",
                ],
                rows,
            )
        )
        for r in (r for r in runs if r["mode"] == mode):
            routes = ", ".join(
                f"{route.split('/api/v1')[-1]} {v['mean_ms']:.2f} ms x{v['count']} "
                f"({v['share'] * 100:.0f}%)"
                for route, v in sorted(r["server_routes"].items(), key=lambda kv: -kv[1]["share"])
            )
            print(f"  server time, {r['agents']} agents: {routes}")
    best = {m: max((r["per_s"] for r in runs if r["mode"] == m), default=0.0) for m in modes}
    summary = []
    if "single" in best:
        ok = best["single"] >= TARGET_SINGLE
        summary.append(f"single {best['single']:,.0f}/s [≥1,500 {verdict(ok)}]")
        print(f"\ntarget one per call ≥ {TARGET_SINGLE:,.0f} lifecycles/s: {verdict(ok)}")
    batched = {m: v for m, v in best.items() if m != "single"}
    if batched:
        top_mode = max(batched, key=lambda m: batched[m])
        ok = batched[top_mode] >= TARGET_BATCH
        summary.append(f"batched {batched[top_mode]:,.0f}/s ({top_mode}) [≥10,000 {verdict(ok)}]")
        print(
            f"target batched ≥ {TARGET_BATCH:,.0f} tasks/s: {verdict(ok)} "
            f"(best {batched[top_mode]:,.0f}/s, {top_mode})"
        )
        for r in (r for r in runs if r["mode"] == "batch"):
            comp = r["server_routes"].get("POST /api/v1/tasks/{task_id}/complete", {})
            print(
                f"  batch, {r['agents']} agents: completion calls take {_share(r, 'complete')} of "
                f"the agents' time and {comp.get('share', 0) * 100:.0f}% of the server's "
                "request time"
            )
            bc = next(
                (x for x in runs if x["mode"] == "batch+bc" and x["agents"] == r["agents"]), None
            )
            if bc is not None:
                print(
                    "    "
                    + compare(
                        "with the batch completion route, tasks/s",
                        bc["per_s"],
                        r["per_s"],
                        lower_is_better=False,
                    ).replace("previous", "one completion per task")
                )
    old_runs = {(o["mode"], o["agents"]): o for o in dig(before, "results", "runs") or []}
    for r in runs:
        old = old_runs.get((r["mode"], r["agents"]), {}).get("per_s")
        print(
            compare(
                f"  {r['mode']} {r['agents']} agents per s", r["per_s"], old, lower_is_better=False
            )
        )
    params = {
        "duration_s": duration,
        "warmup_s": warmup,
        "batch": args.batch,
        "claim": args.claim,
        "client": args.client,
    }
    path = save(NAME, args.quick, params, {"runs": runs, "best": best})
    print(f"SUMMARY {NAME}: {'; '.join(summary)} → {path.name}")


if __name__ == "__main__":
    main()
