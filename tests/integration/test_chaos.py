"""Chaos (issue 14, point 6; SPEC §8 "Durable"): requesters and real `dispatchd worker`
processes under load while the broker is killed with SIGKILL and restarted, again and
again, on SQLite; and while two replicas on one PostgreSQL database are killed in turn, on
PostgreSQL. Workers are killed too.

Afterwards every task whose creation was acknowledged exists once and is `completed`, with
exactly one `task.completed` event; none was lost and none completed twice; each task
orphaned by a killed worker was back at work within its lease. The test prints the
at-least-once cost (how many tasks ran more than once) and how long recovery took.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import list_tasks
from tests.integration.server import ServerProcess, clean_env, dispatchd_command

# A minute of load each, a drain after it; slack for a loaded CI machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ADMIN = "chaos-admin-token-0123456789abcdef"
LABEL = "chaos"
CAPABILITY = "chaos"
LEASE_S = 20.0  # above the worker's 10 s heartbeat, with room for a broker restart
# An assigned task not yet started is held for the wake timeout instead: its lease then.
WAKE_S = 15.0
REQUEST_TIMEOUT_S = 10.0
# A task is back at work this long after its lease lapsed, at the most: the sweeper's tick
# and the assignment that follows.
REQUEUE_SLACK_S = 5.0
# The worker renews its lease this often: its lease lapses this long before `LEASE_S` after
# its death, at the earliest.
HEARTBEAT_S = 10.0
SETTINGS = {
    "DISPATCH_ADMIN_TOKEN": ADMIN,
    "DISPATCH_ASSIGNMENT__LEASE_MS": str(int(LEASE_S * 1000)),
    "DISPATCH_ASSIGNMENT__WAKE_TIMEOUT_MS": str(int(WAKE_S * 1000)),
    "DISPATCH_ASSIGNMENT__TICK_INTERVAL_MS": "250",
    "DISPATCH_LOG_LEVEL": "warning",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- workers --------------------------------------------------------------------------------


class WorkerProcess:
    """`dispatchd worker` around a shell agent that notes each run of a task in `runs`."""

    def __init__(self, agent_id: str, url: str, runs: Path, log: Path) -> None:
        self.agent_id = agent_id
        script = f'echo "$DISPATCH_TASK_ID" >> {shlex.quote(str(runs))}; sleep 0.2; echo done'
        command = dispatchd_command(
            "worker",
            "--url",
            url,
            "--agent-id",
            agent_id,
            "--capability",
            CAPABILITY,
            "--max-concurrent",
            "4",
            "--timeout",
            "30",
            "--grace",
            "1",
            "--",
            "sh",
            "-c",
            script,
        )
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            command,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a kill reaches its agents too
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        self.kill()


# --- requesters -----------------------------------------------------------------------------


@dataclass
class Requests:
    """What requesters were told: each key acknowledged, with its task id and whether the
    answer was a 201 (created) or a 200 (a repeat found it)."""

    acked: dict[str, str] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    retried: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def requester(urls: list[str], number: int, requests: Requests, stop: threading.Event) -> None:
    """Create tasks one after another; a request cut off by a kill is sent again, with the
    same Idempotency-Key, until it is answered (on the next replica, if there are two)."""
    headers = {"X-Agent-ID": f"requester-{number}"}
    with httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        i = 0
        while not stop.is_set():
            key = f"r{number}-{i}"
            body = {"title": f"chaos {key}", "capabilities": [CAPABILITY], "labels": [LABEL]}
            body["context"] = {"key": key}
            for turn in range(600):
                url = urls[(number + turn) % len(urls)]
                try:
                    r = client.post(
                        f"{url}/api/v1/tasks", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.HTTPError:
                    with requests.lock:
                        requests.retried += 1
                    time.sleep(0.1)
                    continue
                with requests.lock:
                    if r.status_code in (200, 201):
                        requests.acked[key] = r.json()["id"]
                        if r.status_code == 201:
                            requests.created.add(key)
                    elif r.status_code >= 500:
                        requests.retried += 1  # the store went away mid-request
                        time.sleep(0.1)
                        continue
                    else:
                        requests.errors.append(f"{key}: {r.status_code} {r.text[:200]}")
                break
            i += 1
            time.sleep(0.08)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Chaos:
    tmp: Path
    urls: list[str]
    runs: Path = field(init=False)
    workers: list[WorkerProcess] = field(default_factory=list)
    killed_workers: dict[str, float] = field(default_factory=dict)  # agent id → when
    broker_kills: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    requests: Requests = field(default_factory=Requests)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    next_worker: int = 0
    orphans: list[float] = field(default_factory=list)  # kill to back at work, each

    def __post_init__(self) -> None:
        self.runs = self.tmp / "runs.txt"
        self.runs.touch()

    def start_worker(self, url: str) -> WorkerProcess:
        worker = WorkerProcess(
            f"chaos-worker-{self.next_worker}", url, self.runs, self.tmp / "workers.log"
        )
        self.next_worker += 1
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: WorkerProcess, url: str) -> None:
        """SIGKILL a worker with its agents mid-task; a new one (a new agent) takes its
        place."""
        worker.kill()
        self.killed_workers[worker.agent_id] = time.time()
        self.workers.remove(worker)
        self.start_worker(url)

    def start_requesters(self, count: int) -> None:
        for n in range(count):
            thread = threading.Thread(
                target=requester, args=(self.urls, n, self.requests, self.stop), daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def run_count(self) -> int:
        return len(self.runs.read_text().split())

    def kill_broker(self, server: ServerProcess) -> None:
        """SIGKILL `server`, start it again on its port, and time how long until agents
        are at work again (a task started after the restart)."""
        killed = time.time()
        server.kill()
        self.broker_kills.append(killed)
        server.start()
        before = self.run_count()
        deadline = time.monotonic() + LEASE_S + 20
        while self.run_count() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        self.recoveries.append(time.time() - killed)

    def finish(self, reader: httpx.Client, limit_s: float = 60.0) -> list[dict[str, Any]]:
        """Stop the requesters, wait until every acknowledged task is finished, and check
        what the broker holds against what the requesters were told."""
        self.stop.set()
        for thread in self.threads:
            thread.join(REQUEST_TIMEOUT_S * 2)
        assert not any(t.is_alive() for t in self.threads), "requesters did not stop"
        assert not self.requests.errors, self.requests.errors[:5]
        acked = dict(self.requests.acked)
        assert len(acked) >= 50, f"only {len(acked)} tasks acknowledged"
        deadline = time.monotonic() + limit_s
        while True:
            tasks = list_tasks(reader, LABEL)
            open_ = [t for t in tasks if t["status"] not in ("completed", "failed", "cancelled")]
            if not open_ or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        by_id = {t["id"]: t for t in tasks}
        keys = Counter(t["context"]["key"] for t in tasks)
        assert len(by_id) == len(tasks), "a task is listed twice"
        assert not [k for k, n in keys.items() if n > 1], "a key made two tasks"
        lost = [k for k, task_id in acked.items() if task_id not in by_id]
        assert not lost, f"{len(lost)} acknowledged tasks lost: {lost[:10]}"
        # Every task there was asked for; one in flight at the end may be unacknowledged.
        assert len(set(keys) - set(acked)) <= len(self.threads)
        unfinished = {t["id"]: t["status"] for t in tasks if t["status"] != "completed"}
        assert not unfinished, (
            f"{len(unfinished)} tasks not completed: {list(unfinished.items())[:10]}"
        )
        return [by_id[task_id] for task_id in acked.values()]

    def check_events_and_attempts(self, reader: httpx.Client, tasks: list[dict[str, Any]]) -> None:
        late: list[str] = []
        for task in tasks:
            r = reader.get(f"/api/v1/tasks/{task['id']}/events")
            assert r.status_code == 200, r.text
            completed = [e for e in r.json()["events"] if e["type"] == "task.completed"]
            assert len(completed) == 1, f"{task['id']}: {len(completed)} task.completed events"
            r = reader.get(f"/api/v1/tasks/{task['id']}")
            assert r.status_code == 200, r.text
            attempts = r.json()["attempts"]
            assert attempts[-1]["outcome"] == "completed", attempts
            assert sum(a["outcome"] == "completed" for a in attempts) == 1, attempts
            for lost, following in itertools.pairwise(attempts):
                if lost["outcome"] != "lost" or lost["agent_id"] not in self.killed_workers:
                    continue
                # Orphaned by a killed worker: back at work within its lease (the wake
                # timeout, if the worker had not started it yet).
                # A broker killed after the lease may have lapsed (its sweeper or assigner
                # gone until it is back) delays the recovery by that outage, no more.
                lease = LEASE_S if lost["started_at"] else WAKE_S
                died = self.killed_workers[lost["agent_id"]]
                back = parse_time(following["assigned_at"])
                lapsed = died + (lease - HEARTBEAT_S if lost["started_at"] else 0.0)
                outage = self.outage_between(lapsed, back)
                self.orphans.append(back - died)
                if back - died > lease + REQUEUE_SLACK_S + outage:
                    late.append(
                        f"{task['id']}: {back - died:.1f}s (lease {lease:g}s, "
                        f"broker outage meanwhile {outage:.1f}s)"
                    )
        assert not late, f"orphaned tasks back at work later than their lease: {late[:10]}"

    def outage_between(self, start: float, end: float) -> float:
        """How long brokers killed between `start` and `end` took to have agents at work
        again (the recoveries of those kills)."""
        return sum(
            r for k, r in zip(self.broker_kills, self.recoveries, strict=True) if start <= k <= end
        )

    def report(self, what: str, tasks: list[dict[str, Any]]) -> None:
        runs = Counter(self.runs.read_text().split())
        ids = {t["id"] for t in tasks}
        more = sum(1 for task_id in ids if runs[task_id] > 1)
        never = sum(1 for task_id in ids if runs[task_id] == 0)
        assert never == 0, f"{never} completed tasks never ran"
        recoveries = ", ".join(f"{r:.1f}s" for r in self.recoveries)
        print(
            f"\n{what}: {len(tasks)} tasks acknowledged and completed once each "
            f"({len(tasks) - len(self.requests.created)} acknowledged only by a repeat's 200, "
            "their first answer cut off by a kill); "
            f"{more} ran more than once (at-least-once cost), {sum(runs.values())} runs in all; "
            f"{len(self.broker_kills)} broker kills, {len(self.killed_workers)} worker kills, "
            f"{self.requests.retried} requests sent again; "
            f"recovery after each broker kill (kill to an agent at work again): {recoveries}; "
            f"{len(self.orphans)} tasks orphaned by killed workers, back at work after "
            f"{max(self.orphans, default=0):.1f}s at the most"
        )

    def close(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.kill()


def admin_reader(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"X-Agent-ID": "operator", "Authorization": f"Bearer {ADMIN}"},
        timeout=REQUEST_TIMEOUT_S,
    )


def during(seconds: float, actions: list[tuple[float, Callable[[], None]]]) -> None:
    """Run each action at its offset (seconds) from now, then wait out `seconds`."""
    start = time.monotonic()
    for at, action in sorted(actions, key=lambda a: a[0]):
        time.sleep(max(0.0, start + at - time.monotonic()))
        action()
    time.sleep(max(0.0, start + seconds - time.monotonic()))


# --- SQLite: one broker, killed five times in a minute ----------------------------------------


def test_chaos_on_sqlite_loses_nothing_and_completes_nothing_twice(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path / "broker", env={**SETTINGS, "DISPATCH_PORT": str(port)})
    chaos = Chaos(tmp_path, [f"http://127.0.0.1:{port}"])
    try:
        server.start()
        url = server.api_url
        for _ in range(3):
            chaos.start_worker(url)
        chaos.start_requesters(3)
        actions: list[tuple[float, Callable[[], None]]] = [
            (at, lambda: chaos.kill_broker(server)) for at in (6, 16, 26, 36, 46, 54)
        ]
        actions.append((20, lambda: chaos.kill_worker(chaos.workers[0], url)))
        during(60, actions)
        assert len(chaos.broker_kills) >= 5
        with admin_reader(server.api_url) as reader:
            tasks = chaos.finish(reader, limit_s=LEASE_S + 40)
            chaos.check_events_and_attempts(reader, tasks)
        chaos.report("SQLite", tasks)
    except BaseException:
        print(server.describe()[-5000:])
        raise
    finally:
        chaos.close()
        server.kill()


# --- PostgreSQL: two replicas killed in turn --------------------------------------------------


@pytest.mark.postgres
def test_chaos_on_two_postgres_replicas_loses_nothing(
    tmp_path: Path, postgres_empty_url: str
) -> None:
    env = {**SETTINGS, "DISPATCH_DATABASE_URL": postgres_empty_url}
    ports = [free_port(), free_port()]
    replicas = [
        ServerProcess(tmp_path / f"replica-{i}", env={**env, "DISPATCH_PORT": str(port)})
        for i, port in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    chaos = Chaos(tmp_path, urls)
    try:
        replicas[0].start()  # the first one migrates the empty database
        replicas[1].start()
        for i in range(4):
            chaos.start_worker(urls[i % 2])
        chaos.start_requesters(3)
        actions: list[tuple[float, Callable[[], None]]] = [
            (6, lambda: chaos.kill_broker(replicas[0])),
            (14, lambda: chaos.kill_worker(chaos.workers[1], urls[1])),
            (20, lambda: chaos.kill_broker(replicas[1])),
            (30, lambda: chaos.kill_broker(replicas[0])),
            (36, lambda: chaos.kill_broker(replicas[1])),
        ]
        during(42, actions)
        with admin_reader(urls[0]) as reader:
            tasks = chaos.finish(reader, limit_s=LEASE_S + 40)
            chaos.check_events_and_attempts(reader, tasks)
        chaos.report("PostgreSQL, two replicas", tasks)
    except BaseException:
        for replica in replicas:
            print(replica.describe()[-3000:])
        raise
    finally:
        chaos.close()
        for replica in replicas:
            replica.kill()
