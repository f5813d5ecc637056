"""The API layer's cost per request, without the network: a route called through the ASGI
app against the same engine call made directly.

An in-process Runtime with one registered agent; `POST /api/v1/tasks/claim` (an empty
queue, `wait_s` 0: the claim reads and answers, writes nothing) is called N times through
the app's ASGI interface, with the hot routes (as served) and through FastAPI's router
(`hot_routes=False`), and `rt.claims.claim` N times directly, the three interleaved in
seven rounds (each figure the median of its rounds). The difference in this process's CPU
per call is what the app adds around the engine: middleware, authentication,
the body's checks and validation, the answer's serialisation. uvicorn's HTTP parsing and
the socket are not in it (see `bench/peers`, whose floor server gives the whole stack's
share).
"""

from __future__ import annotations

import asyncio
import json
import statistics
from typing import Any

from _common import compare, database, dig, header, parser, previous, save, self_cpu_s, table

from dispatchd.api.app import create_app
from dispatchd.config import Settings
from dispatchd.domain.access import Caller
from dispatchd.runtime import Runtime

NAME = "api_cost"
AGENT = "bench-agent"
PATH = "/api/v1/tasks/claim"
BODY = json.dumps({"max_tasks": 1, "wait_s": 0}).encode()
ROUNDS = 7


def _scope(app: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"x-agent-id", AGENT.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "state": {},
        "app": app,
    }


async def _call(app: Any) -> None:
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the request runs
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(app), receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"{PATH} answered {sent[0]['status']}: {sent[1:]}")


async def measure(calls: int, warmup: int) -> dict[str, Any]:
    with database(NAME) as db:
        settings = Settings.model_validate(
            {"server": {"data_dir": str(db.data_dir)}, "database": {"url": db.store_url}}
        )
        async with Runtime.build(settings) as rt:
            fields = {"capabilities": {"bench": 1.0}, "max_concurrent": 1}
            await rt.agents.register(AGENT, fields, Caller(AGENT, is_admin=False))
            caller = Caller(AGENT)

            async def engine() -> None:
                await rt.claims.claim(AGENT, caller, max_tasks=1, wait_s=0)

            hot = create_app(runtime=rt)
            plain = create_app(runtime=rt, hot_routes=False)
            ways = {
                "engine": engine,
                "hot route": lambda: _call(hot),
                "FastAPI router": lambda: _call(plain),
            }
            for once in ways.values():
                for _ in range(warmup):
                    await once()
            # Interleaved in rounds, each way's figure the median of its rounds: the
            # machine's drift lands on all three alike.
            per_round = max(calls // ROUNDS, 1)
            samples: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(ROUNDS):
                for name, once in ways.items():
                    cpu0 = self_cpu_s()
                    for _ in range(per_round):
                        await once()
                    samples[name].append((self_cpu_s() - cpu0) / per_round * 1e6)
            out = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "calls": calls,
        "engine_us": round(out["engine"], 1),
        "hot_us": round(out["hot route"], 1),
        "router_us": round(out["FastAPI router"], 1),
        "hot_layer_us": round(out["hot route"] - out["engine"], 1),
        "router_layer_us": round(out["FastAPI router"] - out["engine"], 1),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=None, help="calls per way (default 3,000)")
    args = p.parse_args()
    calls = args.calls or (500 if args.quick else 3000)
    before = previous(NAME, args.quick)
    with database(NAME) as db:
        header(f"API layer: {calls:,} claims of an empty queue, in-process", args.quick, db)
    r = asyncio.run(measure(calls, warmup=max(calls // 10, 20)))
    rows = [
        ["engine call alone", r["engine_us"], "—"],
        ["hot route (as served)", r["hot_us"], r["hot_layer_us"]],
        ["FastAPI's router", r["router_us"], r["router_layer_us"]],
    ]
    print(table(["way", "CPU µs a call", "API layer µs"], rows))
    for key, label in (("hot_layer_us", "hot route layer"), ("router_layer_us", "router layer")):
        was = dig(before, "results", key)
        print(compare(f"  {label} µs", r[key], was, lower_is_better=True))
    path = save(NAME, args.quick, {"calls": calls}, r)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
