"""The pgqueuer side of the peers benchmark: schema, producer and worker over asyncpg.

Runs in the benchmark's own virtualenv (bench/peers/.venv), never in dispatchd's:

    python pgqueuer_peer.py install --dsn postgresql://…   # pgqueuer's tables and trigger
    python pgqueuer_peer.py enqueue --dsn … --n 20000 --batch 500
    python pgqueuer_peer.py send --dsn … --n 520 --gap 0.02
    python pgqueuer_peer.py worker --dsn … --concurrency 8 --batch 10

The worker is one QueueManager in one process, as pgqueuer is run: it dequeues in batches
(`batch_size`, default 10), is woken by the NOTIFY its enqueue trigger sends, and logs
completions in buffered batches. `--concurrency` is the entrypoint's `concurrency_limit`,
the number of jobs of it picked and running at once, and `--max-tasks` the worker's
`max_concurrent_tasks` (at least twice the batch size); 0 means unlimited for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import asyncpg
from _stamps import RECORDER
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

ENTRYPOINT = "bench_noop"


def _payload(i: int, sent: float) -> bytes:
    return f"{i} {sent!r}".encode()


async def install(dsn: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()
    return {}


async def enqueue(dsn: str, n: int, batch: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            size = min(batch, n - lo)
            await queries.enqueue(
                [ENTRYPOINT] * size, [_payload(i, 0.0) for i in range(lo, lo + size)], [0] * size
            )
        seconds = time.perf_counter() - t0
    finally:
        await conn.close()
    return {"n": n, "seconds": seconds}


async def send(dsn: str, n: int, gap: float, first: int) -> dict[str, float]:
    """One job every `gap` seconds on a fixed schedule, stamped just before its enqueue."""
    conn = await asyncpg.connect(dsn)
    late = 0
    try:
        queries = Queries(AsyncpgDriver(conn))
        t0 = time.monotonic()
        for k in range(n):
            delay = t0 + k * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late += 1
            await queries.enqueue(ENTRYPOINT, _payload(first + k, time.time()))
    finally:
        await conn.close()
    return {"n": n, "late": late}


async def worker(dsn: str, concurrency: int, batch: int, max_tasks: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(ENTRYPOINT, concurrency_limit=concurrency)
    async def noop(job: Job) -> None:
        start = time.time()
        end = time.time()  # the job does nothing
        i, sent = (job.payload or b"0 0.0").split()
        RECORDER.add(int(i), float(sent), start, end)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    try:
        await qm.run(batch_size=batch, max_concurrent_tasks=max_tasks or None)
    finally:
        await conn.close()
    return {"done": len(RECORDER.rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["install", "enqueue", "send", "worker"])
    p.add_argument("--dsn", required=True)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--batch", type=int, default=10, help="enqueue or dequeue batch size")
    p.add_argument("--gap", type=float, default=0.02)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tasks", type=int, default=0, help="max_concurrent_tasks (0: none)")
    args = p.parse_args()
    if args.command == "install":
        out = asyncio.run(install(args.dsn))
    elif args.command == "enqueue":
        out = asyncio.run(enqueue(args.dsn, args.n, args.batch))
    elif args.command == "send":
        out = asyncio.run(send(args.dsn, args.n, args.gap, args.first))
    else:
        out = asyncio.run(worker(args.dsn, args.concurrency, args.batch, args.max_tasks))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
