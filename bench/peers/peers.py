"""dispatchd beside its peers: Celery (Redis broker) and, on PostgreSQL, pgqueuer.

One method for every peer, in one run on this machine:

* drain: with the workers stopped, a backlog of N no-op tasks is created (timed: the
  "create" figure); then the workers start and drain it. Drain rate = N / (last finish -
  first start), the stamps taken inside the task (Celery's and pgqueuer's task body; for
  dispatchd in the agent, when a claim hands it the task and when its handler returns,
  before it reports the completion);
* latency: with the workers idle and waiting, one task every 20 ms, one at a time; create
  stamp (taken just before the create call) → start stamp, after a warm-up.

Every stamp is `time.time()`: all processes run here and read the same clock. dispatchd
runs as shipped (`dispatchd serve`, SQLite, or PostgreSQL with `--postgres` or
`BENCH_DATABASE_URL`) with 8 agents that are plain keep-alive HTTP clients; Celery 5 with
`--pool threads --concurrency 8` on a private redis-server; pgqueuer with one QueueManager,
batched dequeue and an entrypoint concurrency limit of 8, on the same PostgreSQL server as
dispatchd. Celery and pgqueuer run from bench/peers/.venv (made on first use), never from
dispatchd's environment. See bench/peers/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for _common

import dispatchd_peer as dp
import services as sv
from _common import (
    DATABASE_ENV,
    LoadMeter,
    compare,
    database,
    dig,
    engine,
    header,
    parser,
    previous,
    save,
    server,
    server_pid,
    stats_ms,
    table,
)

NAME = "peers"
STAMPS_ENV = "BENCH_STAMPS"
DUMP_AT_ENV = "BENCH_DUMP_AT"


def drain_timeout(n: int) -> float:
    """Generous even at 10 tasks/s (dispatchd on PostgreSQL, one per claim, drained
    12.8/s on a loaded machine), yet a stuck run still ends."""
    return 120.0 + n / 10


class Meter:
    """The CPU meter of _common (our processes vs. the rest of the machine), with our own
    PostgreSQL cluster counted as ours when the benchmark started one."""

    def __init__(self, pids: dict[str, int | None], postmaster: int | None) -> None:
        self.load = LoadMeter({k: v for k, v in pids.items() if v})
        self.cluster = sv.ClusterMeter(postmaster) if postmaster else None
        self._t = 0.0

    def start(self) -> Meter:
        self._t = time.monotonic()
        if self.cluster:
            self.cluster.start()
        self.load.start()
        return self

    def stop(self) -> dict[str, float]:
        out = self.load.stop()
        if self.cluster:
            pg = round(self.cluster.stop_s() / (time.monotonic() - self._t), 3)
            out["postgres"] = pg
            out["ours"] = round(out["ours"] + pg, 3)
            out["others"] = round(max(out["machine"] - out["ours"], 0.0), 3)
        out["wall_s"] = round(time.monotonic() - self._t, 3)
        return out


def cpu_of(meter: Meter) -> dict[str, float]:
    return meter.stop()


def drain_figures(
    rows: list[Any], n: int, create_s: float, cpu: dict[str, float]
) -> dict[str, Any]:
    rate, span = dp.drain_rate(rows)
    return {
        "tasks": n,
        "create_s": round(create_s, 3),
        "create_per_s": round(n / create_s, 1),
        "drain_s": round(span, 6),
        "drain_per_s": round(rate, 1),
        # CPU our processes spent per task while draining: what a busy machine changes least
        "cpu_ms_per_task": round(cpu["ours"] * cpu["wall_s"] / n * 1000, 3),
        "cpu_cores": cpu,
    }


def latency_figures(rows: list[Any], warmup: int, late: int, cpu: dict[str, float]) -> dict:
    values = dp.latencies(rows, warmup)
    return {"ms": stats_ms(values), "late_sends": late, "cpu_cores": cpu}


# --- dispatchd -------------------------------------------------------------------------------


def drains(
    args: Any, who: str, start: Callable[[], contextlib.AbstractContextManager[tuple[str, int]]]
) -> dict[str, Any]:
    """A backlog made and drained by dispatchd's agents in each mode, each on a fresh
    server from `start` (its URL and pid)."""
    out: dict[str, Any] = {}
    for name in args.modes:
        mode = dp.MODES[name]
        with start() as (url, pid):
            create_s = asyncio.run(dp.backlog(url, args.tasks, args.create_batch))
            meter = _meter(args, server=pid, agents=os.getpid())
            stamps = asyncio.run(
                dp.drain(url, args.tasks, args.workers, mode, drain_timeout(args.tasks))
            )
            fig = drain_figures(stamps.rows, args.tasks, create_s, cpu_of(meter))
        out[name] = fig
        _say(f"{who} {name}", fig)
    return out


@contextlib.contextmanager
def dispatchd_server() -> Iterator[tuple[str, int]]:
    """`dispatchd serve` on a fresh database: its API URL and pid."""
    with database(NAME) as db, server(db) as srv:
        yield srv.api_url, server_pid(srv)


def run_dispatchd(args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"drain": drains(args, "dispatchd", dispatchd_server), "latency": None}
    with dispatchd_server() as (url, pid):
        meter = _meter(args, server=pid, agents=os.getpid())
        stamps, late = asyncio.run(
            dp.latency(url, args.latency_tasks, args.warmup, args.gap, args.workers, 120)
        )
        out["latency"] = latency_figures(stamps.rows, args.warmup, late, cpu_of(meter))
    _say_latency("dispatchd", out["latency"])
    return out


# --- the floor -------------------------------------------------------------------------------


@contextlib.contextmanager
def floor_server(tmp: Path) -> Iterator[tuple[str, int]]:
    """`floor_app.py` on a fresh SQLite file and a free loopback port: its URL and pid."""
    port = sv.free_port()
    data = Path(tempfile.mkdtemp(prefix="floor-", dir=tmp))
    command = [sys.executable, "floor_app.py", "--db", str(data / "floor.db"), "--port", str(port)]
    with sv.Proc(f"floor-{port}", command, tmp, cwd=sv.PEERS_DIR) as proc:
        deadline = time.monotonic() + 30
        while not _listening(port):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the floor server did not start:\n{proc.log_tail()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc.pid


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def run_floor(args: Any, tmp: Path) -> dict[str, Any]:
    """dispatchd's drains against the floor server (`floor_app.py`), by the same agents."""
    return {"drain": drains(args, "floor", lambda: floor_server(tmp))}


# --- Celery ----------------------------------------------------------------------------------


def celery_worker(py: Path, tmp: Path, name: str, env: dict[str, str], workers: int) -> sv.Proc:
    command = [
        str(py),
        "-m",
        "celery",
        "-A",
        "celery_peer",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(workers),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--hostname",
        f"{name}@localhost",
    ]
    return sv.Proc(name, command, tmp, env, cwd=sv.PEERS_DIR)


def run_celery(args: Any, py: Path, tmp: Path) -> dict[str, Any]:
    (tmp / "redis").mkdir()
    out: dict[str, Any] = {}
    with sv.redis_server(tmp / "redis", tmp) as broker:
        redis_pid = sv.redis_pid(broker)
        env = {"BENCH_BROKER_URL": broker, "PYTHONPATH": str(sv.PEERS_DIR)}
        n = args.tasks
        made = sv.run_json(
            "celery-enqueue",
            [str(py), "celery_peer.py", "enqueue", "--n", str(n)],
            tmp,
            drain_timeout(n),
            env,
            sv.PEERS_DIR,
        )
        path = tmp / "celery-drain.json"
        worker_env = {**env, STAMPS_ENV: str(path), DUMP_AT_ENV: str(n)}
        with celery_worker(py, tmp, "celery-drain", worker_env, args.workers) as worker:
            meter = _meter(args, worker=worker.pid, redis=redis_pid)
            rows = sv.wait_stamps(path, n, drain_timeout(n), [worker])
            cpu = cpu_of(meter)
        _check_once(rows, n, "Celery")
        out["drain"] = drain_figures(rows, n, made["seconds"], cpu)
        _say("celery", out["drain"])
        out["latency"] = _peer_latency(
            args,
            tmp,
            "celery",
            lambda worker_env: celery_worker(py, tmp, "celery-latency", worker_env, args.workers),
            lambda count, gap, first: [
                str(py),
                "celery_peer.py",
                "send",
                "--n",
                str(count),
                "--gap",
                str(gap),
                "--first",
                str(first),
            ],
            env,
            {"redis": redis_pid},
        )
    _say_latency("celery", out["latency"])
    return out


def _peer_latency(
    args: Any,
    tmp: Path,
    name: str,
    start_worker: Any,
    send_command: Any,
    env: dict[str, str],
    extra_pids: dict[str, int | None],
) -> dict[str, Any]:
    """A worker is started and fed one probe task (it is then up and waiting); half a second
    later the producer sends warm-up + measured tasks, one every `gap` seconds."""
    total = args.warmup + args.latency_tasks
    path = tmp / f"{name}-latency.json"
    worker_env = {**env, STAMPS_ENV: str(path), DUMP_AT_ENV: f"1,{1 + total}"}
    with start_worker(worker_env) as worker:
        sv.run_json(f"{name}-probe", send_command(1, 0.0, -1), tmp, 60, env, sv.PEERS_DIR)
        sv.wait_stamps(path, 1, 60, [worker])
        time.sleep(0.5)
        meter = _meter(args, worker=worker.pid, **extra_pids)
        sent = sv.run_json(
            f"{name}-send",
            send_command(total, args.gap, 0),
            tmp,
            60 + total * args.gap * 3,
            env,
            sv.PEERS_DIR,
        )
        rows = sv.wait_stamps(path, 1 + total, 60, [worker])
        cpu = cpu_of(meter)
    rows = [r for r in rows if r[0] >= 0]  # without the probe
    _check_once(rows, total, name)
    return latency_figures(rows, args.warmup, int(sent["late"]), cpu)


# --- pgqueuer --------------------------------------------------------------------------------


def run_pgqueuer(args: Any, py: Path, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = args.tasks
    env = {"PYTHONPATH": str(sv.PEERS_DIR)}

    def peer(command: str, dsn: str, *rest: str) -> list[str]:
        return [str(py), "pgqueuer_peer.py", command, "--dsn", dsn, *rest]

    def worker(dsn: str, name: str, worker_env: dict[str, str]) -> sv.Proc:
        rest = [
            "--concurrency",
            str(args.pgq_concurrency),
            "--batch",
            str(args.pgq_batch),
            "--max-tasks",
            str(args.pgq_max_tasks),
        ]
        return sv.Proc(name, peer("worker", dsn, *rest), tmp, worker_env, cwd=sv.PEERS_DIR)

    with database("peers-pgqueuer") as db:
        assert db.url is not None
        sv.run_json("pgq-install", peer("install", db.url), tmp, 120, env, sv.PEERS_DIR)
        made = sv.run_json(
            "pgq-enqueue",
            peer("enqueue", db.url, "--n", str(n), "--batch", str(args.create_batch)),
            tmp,
            drain_timeout(n),
            env,
            sv.PEERS_DIR,
        )
        path = tmp / "pgq-drain.json"
        worker_env = {**env, STAMPS_ENV: str(path), DUMP_AT_ENV: str(n)}
        with worker(db.url, "pgq-drain", worker_env) as proc:
            meter = _meter(args, worker=proc.pid)
            rows = sv.wait_stamps(path, n, drain_timeout(n), [proc])
            cpu = cpu_of(meter)
        _check_once(rows, n, "pgqueuer")
        out["drain"] = drain_figures(rows, n, made["seconds"], cpu)
    _say("pgqueuer", out["drain"])
    with database("peers-pgqueuer") as db:
        assert db.url is not None
        dsn = db.url
        sv.run_json("pgq-install-2", peer("install", dsn), tmp, 120, env, sv.PEERS_DIR)
        out["latency"] = _peer_latency(
            args,
            tmp,
            "pgqueuer",
            lambda worker_env: worker(dsn, "pgq-latency", worker_env),
            lambda count, gap, first: peer(
                "send", dsn, "--n", str(count), "--gap", str(gap), "--first", str(first)
            ),
            env,
            {},
        )
    _say_latency("pgqueuer", out["latency"])
    return out


# --- shared ----------------------------------------------------------------------------------


def _meter(args: Any, **pids: int | None) -> Meter:
    return Meter(pids, args.postmaster).start()


def _check_once(rows: list[Any], n: int, who: str) -> None:
    """Every task ran, and exactly once (a duplicate would inflate the rate)."""
    seen = {int(r[0]) for r in rows}
    if len(rows) != n or len(seen) != n:
        raise RuntimeError(f"{who}: {len(rows)} runs of {len(seen)} distinct tasks, expected {n}")


def _say(who: str, fig: dict[str, Any]) -> None:
    cpu = fig["cpu_cores"]
    print(
        f"  {who}: created {fig['tasks']:,} in {fig['create_s']:.2f} s "
        f"({fig['create_per_s']:,.0f}/s), drained at {fig['drain_per_s']:,.0f}/s "
        f"({fig['drain_s']:.2f} s), {fig['cpu_ms_per_task']:.2f} ms CPU a task; cores: ours "
        f"{cpu['ours']:.2f}, others {cpu['others']:.2f}",
        flush=True,
    )


def _say_latency(who: str, fig: dict[str, Any]) -> None:
    ms = fig["ms"]
    print(
        f"  {who}: create → start p50 {ms['p50']:.2f} ms, p95 {ms['p95']:.2f}, "
        f"p99 {ms['p99']:.2f} ({ms['n']} tasks, {fig['late_sends']} sent late)",
        flush=True,
    )


def drains_of(peer: str, fig: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A peer's drain figures by mode: dispatchd and the floor drain in each mode, a
    peer of its own in its one way (mode "")."""
    return list(fig["drain"].items()) if peer in BY_MODE else [("", fig["drain"])]


# The peers that drain in each of dispatchd's modes.
BY_MODE = ("dispatchd", "floor")


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """dispatchd / peer: above 1 dispatchd drains faster, or its latency is longer."""
    out: dict[str, float] = {}
    d = results.get("dispatchd")
    if not d:
        return out
    floor = results.get("floor")
    if floor:
        for mode, fig in d["drain"].items():
            if mode in floor["drain"]:
                out[f"drain {mode} / floor"] = round(
                    fig["drain_per_s"] / floor["drain"][mode]["drain_per_s"], 3
                )
        out["create / floor"] = round(
            max(f["create_per_s"] for f in d["drain"].values())
            / max(f["create_per_s"] for f in floor["drain"].values()),
            3,
        )
    for peer in ("celery", "pgqueuer"):
        p = results.get(peer)
        if not p:
            continue
        for mode, fig in d["drain"].items():
            out[f"drain {mode} / {peer}"] = round(fig["drain_per_s"] / p["drain"]["drain_per_s"], 3)
        out[f"create / {peer}"] = round(
            max(f["create_per_s"] for f in d["drain"].values()) / p["drain"]["create_per_s"], 3
        )
        for q in ("p50", "p99"):
            out[f"latency {q} / {peer}"] = round(d["latency"]["ms"][q] / p["latency"]["ms"][q], 3)
    return out


def report(results: dict[str, Any], args: Any) -> None:
    rows = []
    for peer, fig in results.items():
        for mode, f in drains_of(peer, fig):
            rows.append(
                [
                    f"{peer} {mode}".strip(),
                    f["create_per_s"],
                    f["drain_per_s"],
                    f["drain_s"],
                    f["cpu_ms_per_task"],
                    f["cpu_cores"]["ours"],
                    f["cpu_cores"]["others"],
                ]
            )
    print(
        f"\ndrain: {args.tasks:,} no-op tasks, {args.workers} workers (per second; CPU in "
        "cores, and ms of our processes' CPU per task)"
    )
    headers = ["peer", "create/s", "drain/s", "drain s", "cpu ms/task", "ours cpu", "others cpu"]
    print(table(headers, rows))
    rows = []
    for peer, fig in results.items():
        if not fig.get("latency"):
            continue  # the floor measures drains only
        ms = fig["latency"]["ms"]
        rows.append(
            [
                peer,
                ms["p50"],
                ms["p95"],
                ms["p99"],
                ms["max"],
                fig["latency"]["cpu_cores"]["others"],
            ]
        )
    if not rows:
        return
    print(
        f"\nlatency: create → start at an idle worker, {args.latency_tasks} tasks "
        f"{args.gap * 1000:.0f} ms apart after {args.warmup} warm-up (ms)"
    )
    print(table(["peer", "p50", "p95", "p99", "max", "others cpu"], rows))


@contextlib.contextmanager
def postgres_if_asked(flag: bool, settings: str) -> Iterator[int | None]:
    """The postmaster's pid when a private cluster was started, None otherwise."""
    if not flag:
        yield None
        return
    print(f"# starting a private PostgreSQL ({settings} settings)", flush=True)
    with sv.postgres_server(settings) as (url, postmaster):
        os.environ[DATABASE_ENV] = url
        try:
            yield postmaster
        finally:
            os.environ.pop(DATABASE_ENV, None)


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `with` block stops what it started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=None, help="backlog size (20,000; quick 2,000)")
    p.add_argument("--latency-tasks", type=int, default=None, help="measured (500; quick 100)")
    p.add_argument("--warmup", type=int, default=None, help="latency tasks not counted (20)")
    p.add_argument("--gap", type=float, default=0.02, help="seconds between latency tasks")
    p.add_argument("--workers", type=int, default=8, help="agents / threads / concurrency")
    p.add_argument("--create-batch", type=int, default=500, help="tasks per batch create")
    p.add_argument(
        "--modes", default="single,claim10+bc", help=f"dispatchd modes, of {', '.join(dp.MODES)}"
    )
    p.add_argument(
        "--peers",
        default=None,
        help="of dispatchd, celery, pgqueuer, floor (default: dispatchd,celery; "
        "on PostgreSQL dispatchd,pgqueuer; floor: floor_app.py, SQLite only)",
    )
    p.add_argument(
        "--postgres",
        action="store_true",
        help="start a private PostgreSQL and run dispatchd (and pgqueuer) on it",
    )
    p.add_argument(
        "--pg-settings",
        choices=list(sv.PG_SETTINGS),
        default="async-commit",
        help="how the --postgres server writes: fsync on, synchronous_commit off (default: "
        "the guarantee of dispatchd's SQLite), PostgreSQL's defaults, or the test server's",
    )
    p.add_argument("--pgq-batch", type=int, default=10, help="pgqueuer dequeue batch_size")
    p.add_argument(
        "--pgq-concurrency",
        type=int,
        default=0,
        help="pgqueuer entrypoint concurrency_limit (0: unlimited)",
    )
    p.add_argument(
        "--pgq-max-tasks",
        type=int,
        default=20,
        help="pgqueuer max_concurrent_tasks per worker (0: none; at least 2x the batch)",
    )
    args = p.parse_args()
    args.tasks = args.tasks or (2_000 if args.quick else 20_000)
    args.latency_tasks = args.latency_tasks or (100 if args.quick else 500)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.quick else 20)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in dp.MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; known: {list(dp.MODES)}")
    _stop_on_sigterm()
    with postgres_if_asked(args.postgres, args.pg_settings) as args.postmaster:
        on_pg = engine() == "postgres"
        default = "dispatchd,pgqueuer" if on_pg else "dispatchd,celery"
        peers = [x.strip() for x in (args.peers or default).split(",") if x.strip()]
        if "pgqueuer" in peers and not on_pg:
            p.error(f"pgqueuer needs PostgreSQL: --postgres or {DATABASE_ENV}")
        others = [x for x in peers if x != "dispatchd"]
        title = "peers: " + (
            "dispatchd beside " + ", ".join(others) if others else "dispatchd alone"
        )
        header(title, args.quick)
        before = previous(NAME, args.quick)
        py = sv.ensure_venv() if set(peers) & {"celery", "pgqueuer"} else None
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="dispatchd-bench-peers-") as tmp_name:
            tmp = Path(tmp_name)
            for peer in peers:
                print(f"\n{peer}", flush=True)
                if peer == "dispatchd":
                    results[peer] = run_dispatchd(args)
                elif peer == "celery":
                    assert py is not None
                    results[peer] = run_celery(args, py, tmp)
                elif peer == "pgqueuer":
                    assert py is not None
                    results[peer] = run_pgqueuer(args, py, tmp)
                elif peer == "floor":
                    if on_pg:
                        p.error("the floor server is SQLite's: run it without --postgres")
                    results[peer] = run_floor(args, tmp)
                else:
                    p.error(f"unknown peer {peer!r}")
        report(results, args)
        rs = ratios(results)
        if rs:
            print(
                "\ndispatchd / peer (drain and create: above 1 is faster; latency: above 1 "
                "is slower)"
            )
            for key, value in rs.items():
                print(f"  {key}: {value:.2f}x")
        for peer, fig in results.items():
            for mode, f in drains_of(peer, fig):
                label = f"  {peer}{' ' + mode if mode else ''} drain/s"
                old = dig(
                    before,
                    "results",
                    "peers",
                    peer,
                    "drain",
                    *([mode] if mode else []),
                    "drain_per_s",
                )
                print(compare(label, f["drain_per_s"], old, lower_is_better=False))
        params = {
            "tasks": args.tasks,
            "latency_tasks": args.latency_tasks,
            "warmup": args.warmup,
            "gap_s": args.gap,
            "workers": args.workers,
            "create_batch": args.create_batch,
            "modes": args.modes,
            "peers": peers,
            "pgq_batch": args.pgq_batch,
            "pgq_concurrency": args.pgq_concurrency,
            "pgq_max_tasks": args.pgq_max_tasks,
            "pg_settings": args.pg_settings if args.postgres else None,
            "clock": "time.time() in every process (one machine, one clock)",
        }
        path = save(NAME, args.quick, params, {"peers": results, "ratios": rs})
        summary = "; ".join(f"{k} {v:.2f}x" for k, v in rs.items()) or "no peer to compare"
        print(f"SUMMARY {NAME}: {summary} → {path.name}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        sys.exit(130)
