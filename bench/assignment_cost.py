"""The cost of one assignment with 10k registered agents, in-process.

A store holding 10,000 agents with varied capabilities (weighted tags), statuses (mostly
ready; some busy, sleeping, degraded; some drained), limits and idle times, and the
assigner's in-memory Directory loaded from it. Two cases:

* shared: every agent has the task's tag, so all 10k are scored for each choice;
* spread: tags are spread so that ~1% of the agents (~100) have the task's tag.

For each of N pending tasks: `Directory.best(task)` alone (the choice), then a full
`Assigner.assign(task)` (the choice again, the hand-over writes and their commit, which
takes the agent's slot). Then, where the assigner has it, `Assigner.assign_many` on
bursts of 100 new tasks (all choices first, one commit), per task. `--profile` adds a
cProfile of the choice in the shared case.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import random
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
from dispatchd.domain.ids import new_id
from dispatchd.domain.models import Agent, AgentStatus, Priority, Task, TaskStatus
from dispatchd.runtime import Runtime
from dispatchd.store.base import InsertAgent, InsertTask

NAME = "assignment_cost"
TARGET_MS = 1.0
AGENTS = 10_000
BURST = 100  # tasks per Assigner.assign_many call
STATUSES = (
    [AgentStatus.READY] * 80
    + [AgentStatus.BUSY] * 10
    + [AgentStatus.SLEEPING] * 5
    + [AgentStatus.DEGRADED] * 5
)


def make_agents(case: str, count: int, rng: random.Random) -> list[Agent]:
    now = datetime.now(UTC)
    pool = [f"tag-{i}" for i in range(300)]
    agents = []
    for i in range(count):
        # spread: 3 of 300 tags each, so any one tag is held by ~1% of the agents
        tags = ["python", *rng.sample(pool, 2)] if case == "shared" else rng.sample(pool, 3)
        status = rng.choice(STATUSES)
        agents.append(
            Agent(
                id=f"agent-{i:05d}",
                capabilities={t: round(rng.uniform(0.1, 1.0), 2) for t in tags},
                status=status,
                created_at=now,
                updated_at=now,
                max_concurrent=rng.randint(5, 15),
                drained=rng.random() < 0.02,
                last_heartbeat_at=now,
            )
        )
    return agents


def make_task(tag: str, now: datetime) -> Task:
    return Task(
        id=new_id(),
        title="write the report",
        prompt="collect the numbers and write them up",
        status=TaskStatus.PENDING,
        priority=Priority.MEDIUM,
        capabilities=(tag,),
        requester="bench-requester",
        created_at=now,
        updated_at=now,
    )


async def run_case(case: str, tasks: int, bursts: int, profile: bool) -> dict[str, Any]:
    rng = random.Random(11)
    tag = "python" if case == "shared" else "tag-0"
    with database(f"{NAME}-{case}") as db:
        settings = Settings.model_validate(
            {"server": {"data_dir": str(db.data_dir)}, "database": {"url": db.url}}
        )
        async with Runtime.build(settings, background=False) as rt:
            agents = make_agents(case, AGENTS, rng)
            for i in range(0, len(agents), 2000):
                await rt.store.commit([InsertAgent(a) for a in agents[i : i + 2000]])
            await rt.directory.load()
            directory, assigner, rules = rt.directory, rt.assigner, rt.assigner.rules
            capable = len(directory.capable([tag]))
            now = datetime.now(UTC)
            pending = [make_task(tag, now + timedelta(microseconds=i)) for i in range(tasks)]
            await rt.store.commit([InsertTask(t) for t in pending])

            def choose(task: Task) -> Any:
                return directory.best(
                    task,
                    default_limit=rules.default_limit,
                    owner_filter=rules.owner_filter,
                    skip=set(),
                )

            for task in pending[:5]:  # warm up
                choose(task)
            best_s, assign_s = [], []
            for task in pending:
                t0 = time.perf_counter()
                choice = choose(task)
                t1 = time.perf_counter()
                assigned = await assigner.assign(task)
                t2 = time.perf_counter()
                assert choice is not None and assigned is not None, (choice, assigned)
                best_s.append(t1 - t0)
                assign_s.append(t2 - t1)
            out: dict[str, Any] = {
                "agents": len(directory.agents),
                "capable": capable,
                "best_ms": stats_ms(best_s),
                "assign_ms": stats_ms(assign_s),
            }
            many = getattr(assigner, "assign_many", None)
            if many is not None:  # a burst: choices made first, committed together
                per_task = []
                for _ in range(bursts):
                    burst = [make_task(tag, datetime.now(UTC)) for _ in range(BURST)]
                    await rt.store.commit([InsertTask(t) for t in burst])
                    t0 = time.perf_counter()
                    await many(burst)
                    per_task.append((time.perf_counter() - t0) / BURST)
                    done = await rt.store.get_tasks([t.id for t in burst])
                    assert all(t.status is TaskStatus.ASSIGNED for t in done)
                out["burst_per_task_ms"] = stats_ms(per_task)
            out["assigned"] = assigner.assigned
            if profile:
                out["profile"] = profile_choice(choose, make_task(tag, now))
            return out


def profile_choice(choose: Any, task: Task, calls: int = 20) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        choose(task)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(10)
    return buf.getvalue()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=None, help="assignments per case (500)")
    p.add_argument("--profile", action="store_true", help="cProfile the choice")
    args = p.parse_args()
    tasks = args.tasks or (30 if args.quick else 500)
    header(f"assignment cost with {AGENTS:,} agents (in-process)", args.quick)
    before = previous(NAME, args.quick)
    results = {}
    for case in ("shared", "spread"):
        meter = LoadMeter({"bench": os.getpid()}).start()
        results[case] = asyncio.run(
            run_case(case, tasks, 1 if args.quick else 3, args.profile and case == "shared")
        )
        results[case]["cpu_cores"] = meter.stop()
    rows = []
    for case, r in results.items():
        steps = [
            ("best_ms", "Directory.best"),
            ("assign_ms", "Assigner.assign"),
            ("burst_per_task_ms", f"assign_many({BURST}) / task"),
        ]
        for key, label in steps:
            if key not in r:
                continue
            s = r[key]
            rows.append(
                [f"{case} ({r['capable']:,} capable)", label, s["n"], s["p50"], s["p99"], s["max"]]
            )
    print(f"\none assignment among {AGENTS:,} agents (ms)")
    print(table(["case", "step", "n", "p50", "p99", "max"], rows))
    for case, r in results.items():
        print(f"CPU (cores, average over the {case} case): {r['cpu_cores']}")
    for case, r in results.items():
        if "profile" in r:
            print(f"\ncProfile of Directory.best, {case} case, 20 calls:")
            print(r["profile"])
    verdicts = {}
    for case, r in results.items():
        ok = r["assign_ms"]["p50"] <= TARGET_MS
        verdicts[case] = ok
        print(
            f"target ≤ {TARGET_MS} ms per assignment (p50 of Assigner.assign), {case}: "
            f"{verdict(ok)}"
        )
        for key in ("best_ms", "assign_ms"):
            old = dig(before, "results", case, key, "p50")
            print(compare(f"  {case} {key[:-3]} p50 ms", r[key]["p50"], old, lower_is_better=True))
    path = save(NAME, args.quick, {"agents": AGENTS, "tasks": tasks}, results)
    parts = [
        f"{case}: best p50 {r['best_ms']['p50']:.3f} ms, assign p50 {r['assign_ms']['p50']:.3f} "
        f"p99 {r['assign_ms']['p99']:.3f} ms [≤1 ms {verdict(verdicts[case])}]"
        for case, r in results.items()
    ]
    print(f"SUMMARY {NAME}: {'; '.join(parts)} → {path.name}")


if __name__ == "__main__":
    main()
