"""Shared pieces of the benchmark scripts: a real server, a fresh database, a light HTTP
client, statistics, tables and the results files.

Every script runs against SQLite in a temporary directory unless `BENCH_DATABASE_URL`
names a PostgreSQL server (`postgresql://user:pass@host:port/db`): then each run creates a
database of its own on that server (the role needs CREATEDB) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.integration.server

from tests.integration.server import ServerProcess  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105 - a throwaway test server's token
DATABASE_ENV = "BENCH_DATABASE_URL"
SERVER_ENV_PREFIX = "BENCH_SERVER_"
PYSPY_ENV = "BENCH_PYSPY"  # a directory: record each server with py-spy into it
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Arguments every script takes; `--results-dir` moves where its results file goes."""

    def parse_args(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        global RESULTS
        parsed = super().parse_args(*args, **kwargs)
        if parsed.results_dir is not None:
            RESULTS = parsed.results_dir
        return parsed


def parser(description: str) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    p.add_argument("--quick", action="store_true", help="a small smoke run (checks it works)")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="write the results file here instead of bench/results/ (for tests)",
    )
    return p


# --- machine and load ---------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "uptime": _uptime(),
    }


def _uptime() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False, timeout=5
        ).stdout.strip()
    return ""


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    return time.process_time()


def _system_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is counted in user already
    return total - idle, total


class LoadMeter:
    """CPU used over an interval: by our processes (the server, the clients) and by
    everything else on the machine, so that a busy machine shows in the results."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._sys = (0, 0)
        self._t = 0.0

    def start(self) -> LoadMeter:
        self._t = time.monotonic()
        self._sys = _system_jiffies()
        self._start = {name: self._cpu(pid) for name, pid in self.pids.items()}
        return self

    def _cpu(self, pid: int) -> float:
        return self_cpu_s() if pid == os.getpid() else proc_cpu_s(pid)

    def stop(self) -> dict[str, float]:
        """Cores kept busy on average: per named process, `ours`, `others`, `machine`."""
        wall = time.monotonic() - self._t
        busy0, total0 = self._sys
        busy1, total1 = _system_jiffies()
        cores = (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = round((self._cpu(pid) - self._start[name]) / wall, 3)
        ours = sum(out.values())
        out["ours"] = round(ours, 3)
        out["machine"] = round(cores, 3)
        out["others"] = round(max(cores - ours, 0.0), 3)
        return out


# --- database -----------------------------------------------------------------------------


@dataclass
class Database:
    """Where a run keeps its data: `url` None means SQLite in `data_dir`."""

    data_dir: Path
    url: str | None

    @property
    def engine(self) -> str:
        return "postgres" if self.url else "sqlite"

    @property
    def store_url(self) -> str:
        return self.url or "sqlite:///dispatchd.db"


@contextlib.contextmanager
def database(prefix: str) -> Iterator[Database]:
    """A temporary data directory, and a fresh PostgreSQL database when one is asked for."""
    with tempfile.TemporaryDirectory(prefix=f"dispatchd-bench-{prefix}-") as tmp:
        base = os.environ.get(DATABASE_ENV)
        if not base:
            yield Database(Path(tmp), None)
            return
        import psycopg

        name = f"dispatchd_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(base)
        url = urlunsplit(parts._replace(path=f"/{name}"))
        try:
            yield Database(Path(tmp), url)
        finally:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server(db: Database, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """A real `dispatchd serve` process on `db`, quiet (warnings only), killed at the end."""
    settings = {"DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN, "DISPATCH_LOG_LEVEL": "warning"}
    if db.url:
        settings["DISPATCH_DATABASE_URL"] = db.url
    # BENCH_SERVER_<NAME>=value reaches the server alone as <NAME>=value (for what-ifs).
    for name, value in os.environ.items():
        if name.startswith(SERVER_ENV_PREFIX):
            settings[name.removeprefix(SERVER_ENV_PREFIX)] = value
    settings.update(env or {})
    with ServerProcess(db.data_dir / "server", env=settings) as proc, _profiled(proc):
        yield proc


@contextlib.contextmanager
def _profiled(proc: ServerProcess) -> Iterator[None]:
    """With BENCH_PYSPY=<dir>, py-spy samples the server (all threads, native frames off)
    into <dir>/<script>-<pid>.txt as collapsed stacks, for flame graphs or a summary."""
    out_dir = os.environ.get(PYSPY_ENV)
    pyspy = shutil.which("py-spy")
    if not out_dir or pyspy is None:
        yield
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pid = server_pid(proc)
    target = Path(out_dir) / f"{Path(sys.argv[0]).stem}-{pid}.txt"
    spy = subprocess.Popen(
        [
            pyspy,
            "record",
            "-p",
            str(pid),
            "-o",
            str(target),
            "-f",
            "raw",
            "-r",
            "250",
            "-t",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(20)


def server_pid(proc: ServerProcess) -> int:
    assert proc.process is not None
    return proc.process.pid


# --- a light HTTP/1.1 client ----------------------------------------------------------------


class HTTPError(RuntimeError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status


class RawClient:
    """One keep-alive HTTP/1.1 connection speaking JSON, as cheap as a Python client gets:
    no pools, no header models. For load generation, where httpx's own CPU cost (around
    0.2 ms a request) would make the client, not the server, the thing measured."""

    def __init__(self, url: str, agent_id: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        headers = [f"Host: {self.host}:{self.port}", f"X-Agent-ID: {agent_id}"]
        if token:
            headers.append(f"Authorization: Bearer {token}")
        self._head = "\r\n".join(headers)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> RawClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._head}\r\n"
        if payload:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without Content-Length: {lines!r}")
        data = await self._reader.readexactly(length)
        return status, json.loads(data) if data else None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.request(method, path, body)
        if status >= 400:
            raise HTTPError(status, json.dumps(data).encode())
        return data


class HttpxClient:
    """The same interface over httpx (one AsyncClient, so one connection, per instance)."""

    def __init__(self, url: str, agent_id: str, token: str | None = None) -> None:
        import httpx

        headers = {"X-Agent-ID": agent_id}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(base_url=url, headers=headers, timeout=120)

    async def connect(self) -> HttpxClient:
        return self

    async def close(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        r = await self._client.request(method, path, json=body)
        return r.status_code, r.json() if r.content else None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.request(method, path, body)
        if status >= 400:
            raise HTTPError(status, json.dumps(data).encode())
        return data


Client = RawClient | HttpxClient
CLIENTS: dict[str, type[RawClient] | type[HttpxClient]] = {"raw": RawClient, "httpx": HttpxClient}


async def client(kind: str, url: str, agent_id: str) -> Client:
    return await CLIENTS[kind](url, agent_id).connect()


# --- the server's own view: /metrics --------------------------------------------------------

_METRIC = re.compile(
    r'^dispatchd_http_request_duration_seconds_(sum|count)\{method="(\w+)",route="([^"]+)"\} (\S+)$'
)


def route_times(metrics_text: str) -> dict[str, dict[str, float]]:
    """Time spent and requests answered per route, from the server's latency histogram."""
    out: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        m = _METRIC.match(line)
        if m:
            kind, method, route, value = m.groups()
            out.setdefault(f"{method} {route}", {"sum": 0.0, "count": 0.0})[kind] = float(value)
    return out


def route_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    delta = {}
    for route, now in after.items():
        was = before.get(route, {"sum": 0.0, "count": 0.0})
        n = now["count"] - was["count"]
        if n > 0:
            delta[route] = {"count": n, "sum_s": now["sum"] - was["sum"]}
    return delta


# --- statistics -----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_values[lo]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """n, mean, min, p50, p90, p95, p99, max of durations given in seconds, in ms."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(sum(values) / len(values), 4),
        "min": round(values[0], 4),
        "p50": round(percentile(values, 50), 4),
        "p90": round(percentile(values, 90), 4),
        "p95": round(percentile(values, 95), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(values[-1], 4),
    }


# --- output ---------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    rule = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    return "\n".join([line, rule, *body])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return (
            f"{value:,.0f}"
            if abs(value) >= 1000
            else f"{value:.3g}"
            if abs(value) < 1
            else f"{value:.2f}"
        )
    return str(value)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def engine() -> str:
    return "postgres" if os.environ.get(DATABASE_ENV) else "sqlite"


def results_path(name: str, quick: bool) -> Path:
    """bench/results/<name>[.postgres][.quick].json: runs only compare with their like."""
    suffix = (".postgres" if engine() == "postgres" else "") + (".quick" if quick else "")
    return RESULTS / f"{name}{suffix}.json"


def previous(name: str, quick: bool) -> dict[str, Any] | None:
    path = results_path(name, quick)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def save(name: str, quick: bool, params: Mapping[str, Any], results: Mapping[str, Any]) -> Path:
    """Write this run to its results file (see `results_path`)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(name, quick)
    doc = {
        "name": name,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "engine": engine(),
        "machine": machine(),
        "params": dict(params),
        "results": dict(results),
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def compare(label: str, now: float, before: float | None, *, lower_is_better: bool) -> str:
    """`label: now (before X, +N%)` — the change against the previous run, if any."""
    if before is None or not isinstance(before, int | float) or before == 0:
        return f"{label}: {_cell(float(now))} (no previous run)"
    change = (now - before) / before * 100
    better = change < 0 if lower_is_better else change > 0
    word = "better" if better else "worse" if abs(change) >= 0.5 else "same"
    return f"{label}: {_cell(float(now))} (previous {_cell(float(before))}, {change:+.1f}% {word})"


def dig(doc: Mapping[str, Any] | None, *keys: str) -> Any:
    """doc[k1][k2]... or None when any step is missing."""
    cur: Any = doc
    for key in keys:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def header(title: str, quick: bool, db: Database | None = None) -> None:
    m = machine()
    print(f"# {title}{' (quick)' if quick else ''}")
    print(
        f"# {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {db.engine if db else engine()}; "
        f"load average {' '.join(str(x) for x in m['loadavg'])}"
    )
