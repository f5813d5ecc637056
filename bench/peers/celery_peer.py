"""The Celery side of the peers benchmark: the app, its no-op task, and the producer.

Runs in the benchmark's own virtualenv (bench/peers/.venv), never in dispatchd's. The worker
is started by the benchmark as

    celery -A celery_peer worker --pool threads --concurrency 8 ...

and this file's commands create the tasks:

    python celery_peer.py enqueue --n 20000        # the backlog, one apply_async per task
    python celery_peer.py send --n 520 --gap 0.02  # one task every 20 ms, stamped when sent

The broker is Redis (`BENCH_BROKER_URL`); results are ignored (no result backend), which is
Celery's cheapest configuration for fire-and-forget tasks. Everything else is as shipped:
acknowledgement on receipt (`acks_late` off) and a prefetch of 4 messages per thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _stamps import RECORDER
from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(i: int, sent: float) -> None:
    start = time.time()
    end = time.time()  # the task does nothing
    RECORDER.add(i, sent, start, end)


def enqueue(n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:  # one connection for the whole backlog
        for i in range(n):
            noop.apply_async((i, 0.0), producer=producer)
    return {"n": n, "seconds": time.perf_counter() - t0}


def send(n: int, gap: float, first: int) -> dict[str, float]:
    """One task every `gap` seconds on a fixed schedule (a late send does not shift the
    rest), each stamped just before it is handed to the broker."""
    late = 0
    with app.producer_or_acquire() as producer:
        t0 = time.monotonic()
        for k in range(n):
            delay = t0 + k * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late += 1
            noop.apply_async((first + k, time.time()), producer=producer)
    return {"n": n, "late": late}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("--n", type=int, required=True)
    s = sub.add_parser("send")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--gap", type=float, default=0.02)
    s.add_argument("--first", type=int, default=0)
    args = p.parse_args()
    out = enqueue(args.n) if args.command == "enqueue" else send(args.n, args.gap, args.first)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
