"""Claim latency with 1k, 100k and 1M pending tasks.

The store is filled in-process through the Store API (`store.commit([InsertTask, ...])` in
big batches), then `ClaimService.claim` is timed in-process (a Runtime without background
work: no push assignment, no sweeper) for each size, growing one database from the
smallest size to the largest.

Tasks carry one of ten capability tags (and a random priority), so the queue is mixed as
in a fleet of specialists. Three kinds of claim, each claiming one task:

* any: an agent with all ten tags takes the head of the queue;
* one tag: ten agents with one tag each claim in turn; each qualifies for ~10% of the
  queue, so the store skips the tasks it may not take;
* empty: an agent whose tag no task has; the claim answers `no_tasks_available` after
  looking at the whole pending queue (fewer claims: this is the slow path).

Each claimed task is replaced by a new pending one with the same tag and priority (not
timed), so the queue holds the same number of tasks throughout the measurement. A kind of
claim stops early when its time budget at one size is spent (the count is reported).

On SQLite the claim's candidate query is also timed alone, as the store issues it (pinned
to the queue index with `INDEXED BY tasks_queue`) and as the planner would run it without
the pin; and, at the largest size, the claims again after `ANALYZE`.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import (
    LoadMeter,
    compare,
    database,
    dig,
    header,
    parser,
    previous,
    save,
    stats_ms,
    table,
    verdict,
)

from dispatchd.config import Settings
from dispatchd.domain.access import Caller
from dispatchd.domain.ids import new_id
from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.runtime import Runtime
from dispatchd.store.base import InsertAgent, InsertTask, Store

NAME = "claim_latency"
TAGS = [f"skill-{i}" for i in range(10)]
PRIORITIES = list(Priority)
CHUNK = 20_000
TARGET_RATIO = 2.0
QUERY_RUNS = 20


def new_task(
    rng: random.Random, now: datetime, tag: str | None = None, priority: Any = None
) -> Task:
    return Task(
        id=new_id(),
        title="a pending task",
        prompt="do the thing",
        status=TaskStatus.PENDING,
        priority=priority or rng.choice(PRIORITIES),
        capabilities=(tag or rng.choice(TAGS),),
        requester="bench-requester",
        created_at=now,
        updated_at=now,
    )


async def fill(store: Store, count: int, rng: random.Random) -> float:
    """Insert `count` pending tasks; the seconds it took."""
    t0 = time.perf_counter()
    base = datetime.now(UTC)
    done = 0
    while done < count:
        n = min(CHUNK, count - done)
        # Distinct, increasing creation times: FIFO order within a priority is defined.
        ops = [InsertTask(new_task(rng, base + timedelta(microseconds=done + i))) for i in range(n)]
        await store.commit(ops)
        done += n
    return time.perf_counter() - t0


async def add_agents(store: Store) -> dict[str, list[str]]:
    now = datetime.now(UTC)

    def agent(agent_id: str, tags: list[str]) -> Agent:
        return Agent(
            id=agent_id,
            capabilities={t: 1.0 for t in tags},
            status=AgentStatus.READY,
            created_at=now,
            updated_at=now,
            max_concurrent=10**9,  # claims are never refused for capacity here
        )

    agents = [agent("claimer-any", TAGS)]
    agents += [agent(f"claimer-{tag}", [tag]) for tag in TAGS]
    agents.append(agent("claimer-none", ["skill-nobody-has"]))
    await store.commit([InsertAgent(a) for a in agents])
    return {
        "any": ["claimer-any"],
        "one tag": [f"claimer-{tag}" for tag in TAGS],
        "empty": ["claimer-none"],
    }


async def claims(
    rt: Runtime, agent_ids: list[str], count: int, rng: random.Random, budget_s: float | None
) -> tuple[list[float], int]:
    """Time `count` claims by `agent_ids` in turn; (durations, tasks claimed)."""
    times: list[float] = []
    got = 0
    started = time.perf_counter()
    for i in range(count):
        agent_id = agent_ids[i % len(agent_ids)]
        t0 = time.perf_counter()
        claimed = await rt.claims.claim(agent_id, Caller(agent_id), max_tasks=1)
        times.append(time.perf_counter() - t0)
        for task in claimed.tasks:
            got += 1
            replacement = new_task(rng, datetime.now(UTC), task.capabilities[0], task.priority)
            await rt.store.commit([InsertTask(replacement)])
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
    return times, got


def _candidate_sql(indexed: bool) -> tuple[str, dict[str, Any]]:
    """The claim's candidate query for a one-tag agent, as the SQLite store issues it
    (`indexed`) or with its index pin taken out (the planner's own choice)."""
    from dispatchd.store.base import ClaimQuery
    from dispatchd.store.queries import Queries
    from dispatchd.store.sqlite import SQLITE

    query = ClaimQuery("claimer-skill-0", ["skill-0"], None, True, datetime.now(UTC), 1)
    sql, params = Queries(SQLITE).claimable(query, lock=False)
    pin = "INDEXED BY tasks_queue "
    if not indexed:
        sql = sql.replace(pin, "", 1)
    elif pin not in sql:
        sql = sql.replace("FROM tasks ", f"FROM tasks {pin}", 1)
    return sql, params


def query_plan(db_path: str, indexed: bool = False) -> list[str]:
    sql, params = _candidate_sql(indexed)
    with sqlite3.connect(db_path) as conn:
        return [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def time_query(db_path: str, indexed: bool, budget_s: float) -> dict[str, Any]:
    """The candidate query alone, on a connection of its own (read only)."""
    sql, params = _candidate_sql(indexed)
    times = []
    started = time.perf_counter()
    with sqlite3.connect(db_path) as conn:
        conn.execute(sql, params).fetchall()  # warm the statement cache
        for _ in range(QUERY_RUNS):
            t0 = time.perf_counter()
            rows = conn.execute(sql, params).fetchall()
            times.append(time.perf_counter() - t0)
            assert len(rows) == 1
            if time.perf_counter() - started > budget_s:
                break
    return stats_ms(times)


async def run(sizes: list[int], per_size: int, empty: int, budget_s: float) -> dict[str, Any]:
    rng = random.Random(7)
    results: dict[str, Any] = {"sizes": {}}
    with database(NAME) as db:
        settings = Settings.model_validate(
            {"server": {"data_dir": str(db.data_dir)}, "database": {"url": db.url}}
        )
        async with Runtime.build(settings, background=False) as rt:
            scenarios = await add_agents(rt.store)
            pending = 0
            for size in sizes:
                fill_s = await fill(rt.store, size - pending, rng)
                added = size - pending
                pending = size
                counts = await rt.store.counts()
                assert counts.tasks_by_status.get("pending") == size, counts
                row: dict[str, Any] = {
                    "fill_s": round(fill_s, 2),
                    "fill_per_s": round(added / fill_s) if fill_s else None,
                }
                print(
                    f"  {size:>9,} pending (added {added:,} in {fill_s:.1f} s, "
                    f"{added / fill_s:,.0f}/s)",
                    flush=True,
                )
                for name, agent_ids in scenarios.items():
                    n = empty if name == "empty" else per_size
                    row[name] = await measure(rt, name, agent_ids, n, rng, budget_s, size)
                if db.url is None:
                    path = str(db.data_dir / "dispatchd.db")
                    for label, indexed in (("query unpinned", False), ("query as issued", True)):
                        row[label] = time_query(path, indexed, budget_s / 2)
                        print(f"    {label:15} p50 {row[label]['p50']:.3f} ms", flush=True)
                results["sizes"][str(size)] = row
            if db.url is None:
                path = str(db.data_dir / "dispatchd.db")
                results["plan"] = query_plan(path, indexed=True)
                results["plan_unpinned"] = query_plan(path)
                with sqlite3.connect(path) as conn:
                    t0 = time.perf_counter()
                    conn.execute("ANALYZE")
                    results["analyze_s"] = round(time.perf_counter() - t0, 2)
                results["plan_after_analyze"] = query_plan(path)
                print(f"  after ANALYZE ({results['analyze_s']} s):", flush=True)
                after = {}
                for name in ("any", "one tag", "empty"):
                    n = empty if name == "empty" else per_size
                    after[name] = await measure(
                        rt, name, scenarios[name], n, rng, budget_s, sizes[-1]
                    )
                results["after_analyze"] = after
    return results


async def measure(
    rt: Runtime,
    name: str,
    agent_ids: list[str],
    count: int,
    rng: random.Random,
    budget_s: float,
    size: int,
) -> dict[str, Any]:
    times, got = await claims(rt, agent_ids, count, rng, budget_s)
    out = stats_ms(times)
    out["claimed"] = got
    pending = (await rt.store.counts()).tasks_by_status.get("pending")
    assert pending == size, (name, pending)
    print(
        f"    {name:15} p50 {out['p50']:.3f} ms  p99 {out['p99']:.3f} ms"
        f"  ({len(times)} claims, {got} tasks)",
        flush=True,
    )
    return out


KINDS = ("any", "one tag", "empty", "query as issued", "query unpinned")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="pending counts (default 1000,100000,1000000)")
    p.add_argument("--claims", type=int, default=None, help="claims per size and kind (500)")
    p.add_argument("--budget", type=float, default=None, help="seconds per kind and size (20)")
    args = p.parse_args()
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    else:
        sizes = [1_000, 20_000] if args.quick else [1_000, 100_000, 1_000_000]
    per_size = args.claims or (50 if args.quick else 500)
    empty = 5 if args.quick else 20
    budget = args.budget or (3.0 if args.quick else 20.0)
    header("claim latency by queue size (in-process ClaimService)", args.quick)
    before = previous(NAME, args.quick)
    meter = LoadMeter({"bench": os.getpid()}).start()
    results = asyncio.run(run(sizes, per_size, empty, budget))
    results["cpu_cores"] = meter.stop()
    rows = []
    for size, row in results["sizes"].items():
        for name in KINDS:
            if name in row:
                s = row[name]
                rows.append(
                    [f"{int(size):,}", name, s["n"], s["p50"], s["p95"], s["p99"], s["max"]]
                )
    for name, s in results.get("after_analyze", {}).items():
        rows.append(
            [
                f"{sizes[-1]:,}",
                f"{name}, after ANALYZE",
                s["n"],
                s["p50"],
                s["p95"],
                s["p99"],
                s["max"],
            ]
        )
    print("\nclaim of one task, in-process (ms); query rows: the candidate SQL alone")
    print(table(["pending", "claim", "n", "p50", "p95", "p99", "max"], rows))
    if "plan" in results:
        print(f"query plan as issued:  {' / '.join(results['plan'])}")
        print(f"unpinned:              {' / '.join(results['plan_unpinned'])}")
        print(f"unpinned, ANALYZE:     {' / '.join(results['plan_after_analyze'])}")
    print(f"CPU (cores, average over the run): {results['cpu_cores']}")
    lo, hi = str(sizes[0]), str(sizes[-1])
    ratios: dict[str, float | None] = {}
    for name in KINDS:
        if name in results["sizes"][lo]:
            a, b = results["sizes"][lo][name]["p99"], results["sizes"][hi][name]["p99"]
            ratios[name] = round(b / a, 2) if a else None
    for name, s in results.get("after_analyze", {}).items():
        a = results["sizes"][lo][name]["p99"]
        ratios[f"{name}, after ANALYZE"] = round(s["p99"] / a, 2) if a else None
    results["p99_ratio_largest_to_smallest"] = ratios
    ok = all(ratios[n] is not None and ratios[n] <= TARGET_RATIO for n in ("any", "one tag"))
    print(
        f"p99 ratio {int(hi):,} / {int(lo):,}: " + ", ".join(f"{n} {r}x" for n, r in ratios.items())
    )
    print(
        f"target p99 at 1M within {TARGET_RATIO}x of 1k (claims any, one tag): "
        f"{verdict(ok)}{'' if hi == '1000000' else f' (largest size here {int(hi):,})'}"
    )
    for name in ("any", "one tag"):
        old = dig(before, "results", "sizes", hi, name, "p99")
        now = results["sizes"][hi][name]["p99"]
        print(compare(f"  p99 at {int(hi):,}, {name}, ms", now, old, lower_is_better=True))
    params = {
        "sizes": sizes,
        "claims": per_size,
        "empty_claims": empty,
        "budget_s": budget,
        "tags": len(TAGS),
    }
    path = save(NAME, args.quick, params, results)
    small, big = results["sizes"][lo], results["sizes"][hi]
    print(
        f"SUMMARY {NAME}: claim p99 any {small['any']['p99']:.2f} ms at {int(lo):,} → "
        f"{big['any']['p99']:.1f} ms at {int(hi):,} ({ratios['any']}x; one tag "
        f"{ratios['one tag']}x) [≤2x {verdict(ok)}]; empty claim p99 {big['empty']['p99']:.1f} ms"
        + (
            f"; after ANALYZE any {results['after_analyze']['any']['p99']:.2f} ms"
            if "after_analyze" in results
            else ""
        )
        + f" → {path.name}"
    )


if __name__ == "__main__":
    main()
