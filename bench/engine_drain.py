"""The engine's cost per task, without HTTP: a backlog drained through the services of an
in-process Runtime.

The same flow as `bench/peers` (a backlog of N no-op tasks created with the agents away,
then 8 agents registered that drain it: one task per claim and single completions, or
claims of 10 and batch completion), but the agents call `rt.claims.claim` and
`rt.tasks.complete` / `complete_many` in this process. What is left is the engine, the
store and the database: the CPU this process spends per task (all its threads) is the
figure to compare with the server's CPU per task in `bench/peers`, whose difference is the
HTTP layer's share. Printed per mode: tasks/s and CPU µs per task, against the previous
run's results file.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import (
    Database,
    compare,
    database,
    dig,
    header,
    parser,
    previous,
    save,
    self_cpu_s,
    table,
)

from dispatchd.config import Settings
from dispatchd.domain.access import Caller
from dispatchd.domain.models import TaskSpec
from dispatchd.engine.tasks import Completion
from dispatchd.runtime import Runtime

NAME = "engine_drain"
TAG = "bench"
MODES = {"single": 1, "claim10+bc": 10}


async def drain(db: Database, tasks: int, agents: int, per_claim: int) -> dict[str, Any]:
    settings = Settings.model_validate(
        {"server": {"data_dir": str(db.data_dir)}, "database": {"url": db.store_url}}
    )
    async with Runtime.build(settings) as rt:
        requester = Caller("bench-requester")
        created_at = time.perf_counter()
        for start in range(0, tasks, 500):
            specs = [
                TaskSpec(title=f"bench {i}", capabilities=[TAG])
                for i in range(start, min(tasks, start + 500))
            ]
            await rt.tasks.create_batch(specs, requester)
        created_s = time.perf_counter() - created_at
        ids = [f"bench-agent-{i:02d}" for i in range(agents)]
        for agent_id in ids:
            fields = {"capabilities": {TAG: 1.0}, "max_concurrent": per_claim}
            await rt.agents.register(agent_id, fields, Caller(agent_id, is_admin=False))
        done = 0

        async def agent(agent_id: str) -> None:
            nonlocal done
            caller = Caller(agent_id)
            while True:
                claimed = await rt.claims.claim(agent_id, caller, max_tasks=per_claim)
                if not claimed.tasks:
                    return
                if per_claim == 1:
                    task = claimed.tasks[0]
                    await rt.tasks.complete(task.id, caller, result="ok", summary=None)
                else:
                    items = [Completion(t.id, result="ok") for t in claimed.tasks]
                    await rt.tasks.complete_many(items, caller)
                done += len(claimed.tasks)

        cpu0, wall0 = self_cpu_s(), time.perf_counter()
        await asyncio.gather(*(agent(a) for a in ids))
        cpu_s, wall_s = self_cpu_s() - cpu0, time.perf_counter() - wall0
    assert done == tasks, f"drained {done} of {tasks}"
    return {
        "tasks": tasks,
        "create_per_s": round(tasks / created_s),
        "drain_per_s": round(tasks / wall_s),
        "cpu_us_per_task": round(cpu_s / tasks * 1e6),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=None, help="backlog size (default 10,000)")
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    args = p.parse_args()
    tasks = args.tasks or (2000 if args.quick else 10_000)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; known: {list(MODES)}")
    before = previous(NAME, args.quick)
    results: dict[str, Any] = {}
    with database(NAME) as db:
        header(f"engine drain: {tasks:,} tasks, {args.agents} agents, no HTTP", args.quick, db)
    for mode in modes:
        with database(NAME) as db:
            results[mode] = asyncio.run(drain(db, tasks, args.agents, MODES[mode]))
    rows = [
        [m, r["drain_per_s"], r["cpu_us_per_task"], r["create_per_s"]] for m, r in results.items()
    ]
    print(table(["mode", "drain/s", "CPU µs/task", "create/s"], rows))
    for mode, r in results.items():
        was = dig(before, "results", mode, "cpu_us_per_task")
        print(compare(f"  {mode} CPU µs/task", r["cpu_us_per_task"], was, lower_is_better=True))
    path = save(NAME, args.quick, {"tasks": tasks, "agents": args.agents}, results)
    print(f"saved {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
