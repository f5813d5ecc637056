"""SPEC §3 and §8 across replicas: several `dispatchd serve` processes share one PostgreSQL
database. No task is assigned twice, a long-poll on one replica is woken by work created on
another (LISTEN/NOTIFY), and killing a replica loses nothing: the survivors' sweepers recover
its agents' tasks by lease and hand them to agents that are still alive.

Every agent speaks over HTTP to its own replica only, as it would across machines.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.helpers import Acks, list_tasks
from tests.integration.server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ADMIN = "replicas-admin-token-0123456789"
REQUEST_TIMEOUT_S = 30.0
POLL_S = 0.05
PRIORITIES = ("low", "medium", "high", "critical")

Start = Callable[..., list[ServerProcess]]


# --- replicas and agents ------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Start]:
    """`start(["a", "b"], **env)`: replicas on the test's database, each with its own data
    directory and ports; every one started is killed at the end."""
    servers: list[ServerProcess] = []

    def start(names: Sequence[str], **settings: str) -> list[ServerProcess]:
        env = {"DISPATCH_DATABASE_URL": postgres_url, "DISPATCH_ADMIN_TOKEN": ADMIN, **settings}
        started = [ServerProcess(tmp_path / f"replica-{name}", env=env) for name in names]
        servers.extend(started)
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(lambda server: server.start(), started))
        return started

    yield start
    for server in servers:
        server.kill()


def admin_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.api_url,
        headers={"X-Agent-ID": "operator", "Authorization": f"Bearer {ADMIN}"},
        timeout=REQUEST_TIMEOUT_S,
    )


def server_logs(servers: Sequence[ServerProcess], lines: int = 20) -> str:
    parts = []
    for server in servers:
        err = server.stderr.text.splitlines()[-lines:] if server.stderr else []
        parts.append(f"--- {server.api_url} (exit {server.returncode})\n" + "\n".join(err))
    return "\n".join(parts)


class Worker:
    """One agent, attached to one replica: every call goes to that replica."""

    def __init__(
        self, agent_id: str, server: ServerProcess, capabilities: list[str], limit: int
    ) -> None:
        self.id = agent_id
        self.server = server
        self.capabilities = capabilities
        self.limit = limit
        self.client = httpx.Client(
            base_url=server.api_url, headers={"X-Agent-ID": agent_id}, timeout=REQUEST_TIMEOUT_S
        )
        self.last_beat = 0.0

    def register(self) -> None:
        body = {"capabilities": self.capabilities, "max_concurrent": self.limit}
        r = self.client.post("/api/v1/agents", json=body)
        assert r.status_code == 201, r.text
        self.client.headers["Authorization"] = f"Bearer {r.json()['token']}"

    def heartbeat(self, every_s: float = 0.0) -> None:
        if time.monotonic() - self.last_beat < every_s:
            return
        r = self.client.post(f"/api/v1/agents/{self.id}/heartbeat", json={"status": "ready"})
        if r.status_code != 200:
            raise AssertionError(f"heartbeat of {self.id}: {r.status_code} {r.text}")
        self.last_beat = time.monotonic()

    def claim(self, wait_s: float) -> dict[str, Any]:
        body = {"max_tasks": self.limit, "wait_s": wait_s}
        r = self.client.post("/api/v1/tasks/claim", json=body)
        if r.status_code != 200:
            raise AssertionError(f"claim by {self.id}: {r.status_code} {r.text}")
        out: dict[str, Any] = r.json()
        return out

    def complete(self, task: dict[str, Any]) -> httpx.Response:
        body = {"result": {"by": self.id}, "attempt": task["attempt"]}
        return self.client.post(f"/api/v1/tasks/{task['id']}/complete", json=body)

    def close(self) -> None:
        self.client.close()


@dataclass
class Ledger:
    """What the agents saw: each claimed (task, attempt) with the agent it came to."""

    claims: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    completed: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claimed(self, agent_id: str, task: dict[str, Any]) -> None:
        with self.lock:
            self.claims[task["id"]].append((agent_id, task["attempt"]))

    def done(self, task_id: str) -> None:
        with self.lock:
            self.completed.add(task_id)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def completed_count(self) -> int:
        with self.lock:
            return len(self.completed)


def work(worker: Worker, ledger: Ledger, stop: threading.Event, wait_s: float = 1.0) -> None:
    """An agent's loop: heartbeat, long-poll claim, complete what came, until `stop`."""
    try:
        while not stop.is_set():
            worker.heartbeat(every_s=0.5)
            for task in worker.claim(wait_s)["tasks"]:
                ledger.claimed(worker.id, task)
                if task["status"] != "running":
                    ledger.error(f"{worker.id} claimed {task['id']} in status {task['status']}")
                r = worker.complete(task)
                if r.status_code == 200:
                    ledger.done(task["id"])
                else:
                    ledger.error(f"{worker.id} complete {task['id']}: {r.status_code} {r.text}")
    except Exception as exc:  # reported by the test, not lost in a thread
        ledger.error(f"{worker.id} stopped: {exc!r}")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


def detail_and_events(
    client: httpx.Client, task_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    detail = client.get(f"/api/v1/tasks/{task_id}")
    assert detail.status_code == 200, detail.text
    events = client.get(f"/api/v1/tasks/{task_id}/events")
    assert events.status_code == 200, events.text
    return detail.json(), events.json()["events"]


def agent_loads(client: httpx.Client) -> dict[str, int]:
    r = client.get("/api/v1/agents", params={"limit": 500})
    assert r.status_code == 200, r.text
    return {a["id"]: a["active_tasks"] for a in r.json()["items"]}


# --- 1. nothing assigned twice ---------------------------------------------------------------

PER_REPLICA_SINGLE = 70  # created one by one, in two runs
PER_REPLICA_BATCHES = (45, 35)  # created with POST /api/v1/tasks/batch
LABEL_ONCE = "replicas-once"


def task_body(number: int, label: str) -> dict[str, Any]:
    return {
        "title": f"replicated task {number}",
        "capabilities": ["docs"] if number % 4 == 0 else ["code"],
        "priority": PRIORITIES[number % len(PRIORITIES)],
        "labels": [label],
        "context": {"number": number},
    }


def create_tasks(
    server: ServerProcess, first: int, created: list[str], ledger: Ledger, label: str
) -> None:
    """One requester on `server`: a run one by one, a batch, another run, another batch."""
    half = PER_REPLICA_SINGLE // 2
    number = first
    headers = {"X-Agent-ID": f"requester-{first}"}
    try:
        with httpx.Client(
            base_url=server.api_url, headers=headers, timeout=REQUEST_TIMEOUT_S
        ) as client:
            for batch in PER_REPLICA_BATCHES:
                for _ in range(half):
                    r = client.post("/api/v1/tasks", json=task_body(number, label))
                    assert r.status_code == 201, r.text
                    created.append(r.json()["id"])
                    number += 1
                bodies = [task_body(number + i, label) for i in range(batch)]
                r = client.post("/api/v1/tasks/batch", json={"tasks": bodies})
                assert r.status_code == 201, r.text
                created.extend(t["id"] for t in r.json()["items"])
                number += batch
    except Exception as exc:
        ledger.error(f"requester on {server.api_url}: {exc!r}")


def test_no_task_is_assigned_twice_across_replicas(cluster: Start) -> None:
    replicas = cluster(["a", "b", "c"])
    workers = [
        Worker(
            f"agent-{name}{i}",
            server,
            ["code", "docs"] if i == 1 else ["code"],
            3 if i == 1 else 2,
        )
        for name, server in zip("abc", replicas, strict=True)
        for i in (1, 2)
    ]
    for worker in workers:
        worker.register()
    ledger = Ledger()
    stop = threading.Event()
    agents = [threading.Thread(target=work, args=(w, ledger, stop)) for w in workers]
    created: list[str] = []
    per_replica = PER_REPLICA_SINGLE + sum(PER_REPLICA_BATCHES)
    total = per_replica * len(replicas)
    requesters = [
        threading.Thread(
            target=create_tasks, args=(server, n * per_replica, created, ledger, LABEL_ONCE)
        )
        for n, server in enumerate(replicas)
    ]
    try:
        for thread in agents + requesters:
            thread.start()
        for thread in requesters:
            thread.join(120)

        def all_done() -> bool:
            if ledger.errors:
                pytest.fail(f"{ledger.errors[:5]}\n{server_logs(replicas)}")
            return ledger.completed_count() >= total

        wait_until(all_done, 120, f"{total} tasks completed")
    finally:
        stop.set()
        for thread in agents:
            thread.join(30)
        for worker in workers:
            worker.close()
    assert not any(t.is_alive() for t in agents + requesters), "threads did not stop"
    assert not ledger.errors, ledger.errors[:5]
    assert len(created) == total and len(set(created)) == total

    # As the agents saw it: every task came to exactly one agent, once.
    twice = {tid: seen for tid, seen in ledger.claims.items() if len(seen) != 1}
    assert not twice, f"tasks handed out more than once: {list(twice.items())[:5]}"
    assert set(ledger.claims) == set(created) == ledger.completed

    # As the database has it, read through every replica.
    readers = [admin_client(server) for server in replicas]

    def check(index_and_id: tuple[int, str]) -> str | None:
        index, task_id = index_and_id
        detail, events = detail_and_events(readers[index % len(readers)], task_id)
        ((agent_id, number),) = ledger.claims[task_id]
        attempts = [(a["number"], a["agent_id"], a["outcome"]) for a in detail["attempts"]]
        assigned = [(e["agent_id"], e["data"].get("attempt")) for e in events if _is(e, "assigned")]
        completed = [e for e in events if _is(e, "completed")]
        if attempts != [(number, agent_id, "completed")]:
            return f"{task_id}: attempts {attempts}, claimed by {agent_id}"
        if detail["assignee"] != agent_id or detail["result"] != {"by": agent_id}:
            return f"{task_id}: assignee {detail['assignee']}, result {detail['result']}"
        if len(assigned) != len(attempts) or assigned[0][0] != agent_id:
            return f"{task_id}: task.assigned events {assigned} for attempts {attempts}"
        if len(completed) != 1:
            return f"{task_id}: {len(completed)} task.completed events"
        return None

    try:
        listed = list_tasks(readers[1], LABEL_ONCE)
        assert sorted(t["id"] for t in listed) == sorted(created)
        assert {t["status"] for t in listed} == {"completed"}
        with ThreadPoolExecutor(6) as pool:
            problems = [p for p in pool.map(check, enumerate(created)) if p]
        assert not problems, problems[:10]
        for reader in readers:
            loads = agent_loads(reader)
            assert {w.id: loads[w.id] for w in workers} == {w.id: 0 for w in workers}
    finally:
        for reader in readers:
            reader.close()
    print(f"\n{total} tasks, each assigned once")


def _is(event: dict[str, Any], kind: str) -> bool:
    return bool(event["type"] == f"task.{kind}")


# --- 2. a long-poll on one replica is woken from another -------------------------------------

ROUNDS = 20
WAIT_S = 10.0
# Long enough for the claim to find nothing and start waiting before the task exists.
SETTLE_S = 0.3


def test_long_poll_on_one_replica_wakes_for_a_task_created_on_another(cluster: Start) -> None:
    a, b = cluster(["a", "b"])
    listener = Worker("listener-b", b, ["relay"], 1)
    listener.register()
    latencies: list[float] = []

    def timed_claim() -> tuple[dict[str, Any], float, float]:
        sent = time.monotonic()
        out = listener.claim(WAIT_S)
        return out, sent, time.monotonic()

    try:
        with (
            httpx.Client(
                base_url=a.api_url, headers={"X-Agent-ID": "requester-a"}, timeout=10
            ) as requester,
            ThreadPoolExecutor(1) as pool,
        ):
            for n in range(ROUNDS):
                pending = pool.submit(timed_claim)
                time.sleep(SETTLE_S)  # pacing only: the claim must be waiting already
                assert not pending.done(), f"round {n}: claim returned early: {pending.result()}"
                created_at = time.monotonic()
                r = requester.post(
                    "/api/v1/tasks", json={"title": f"relay {n}", "capabilities": ["relay"]}
                )
                assert r.status_code == 201, r.text
                task_id = r.json()["id"]
                out, sent, returned = pending.result(timeout=WAIT_S + 20)
                assert [t["id"] for t in out["tasks"]] == [task_id], out
                assert out["tasks"][0]["status"] == "running"
                assert returned - sent < WAIT_S, (
                    f"round {n}: the claim came back only at its wait_s deadline "
                    f"({returned - sent:.2f}s)\n{server_logs([a, b])}"
                )
                latencies.append(returned - created_at)
                done = listener.complete(out["tasks"][0])
                assert done.status_code == 200, done.text
    finally:
        listener.close()
    p50 = statistics.median(latencies)
    print(
        f"\ncross-replica create→claim over {ROUNDS} rounds: "
        f"p50 {p50 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert p50 < 1.0, latencies


# --- 3. a replica killed with running work ---------------------------------------------------

LABEL_KILL = "replicas-kill"
LEASE_MS = 2000
C_AGENTS = 2
C_LIMIT = 3
MIN_ACKS_BEFORE_KILL = 40
WRITER_PAUSE_S = 0.02
MAX_WRITES = 400


def kill_task_body(key: str, number: int) -> dict[str, Any]:
    # Every third task needs a GPU: the dying replica's agents and two survivors have one.
    return {
        "title": f"survivor {key}",
        "capabilities": ["gpu"] if number % 3 == 0 else ["code"],
        "labels": [LABEL_KILL],
        "context": {"key": key},
        "idempotency_key": key,
    }


def write(server: ServerProcess, name: str, acks: Acks, stop: threading.Event) -> None:
    """Create tasks on `server` until `stop`; every tenth request is a batch of five."""
    headers = {"X-Agent-ID": f"writer-{name}"}
    with httpx.Client(base_url=server.api_url, headers=headers, timeout=10) as client:
        for i in range(MAX_WRITES):
            if stop.is_set():
                return
            keys = [f"{name}-{i}-{j}" for j in range(5)] if i % 10 == 9 else [f"{name}-{i}"]
            bodies = [kill_task_body(key, i + j) for j, key in enumerate(keys)]
            try:
                if len(bodies) == 1:
                    r = client.post("/api/v1/tasks", json=bodies[0])
                    items = [r.json()] if r.status_code == 201 else []
                else:
                    r = client.post("/api/v1/tasks/batch", json={"tasks": bodies})
                    items = r.json()["items"] if r.status_code == 201 else []
            except httpx.HTTPError:
                with acks.lock:  # the replica died with this request in flight
                    acks.unknown.update(keys)
                return
            with acks.lock:
                if r.status_code != 201:
                    acks.errors.append(f"{name}: {r.status_code} {r.text[:300]}")
                    return
                for key, item in zip(keys, items, strict=True):
                    acks.acked[key] = item["id"]
            time.sleep(WRITER_PAUSE_S)


def hold(worker: Worker, held: dict[str, str], ledger: Ledger, stop: threading.Event) -> None:
    """An agent that starts tasks and works on them for ever, heartbeating, until `stop`."""
    try:
        while not stop.is_set():
            worker.heartbeat()
            for task in worker.claim(0.3)["tasks"]:
                with ledger.lock:
                    held[task["id"]] = worker.id
    except Exception as exc:
        if not stop.is_set():
            ledger.error(f"{worker.id} stopped: {exc!r}")
        # Otherwise its replica is gone, and the agent with it.


def test_killing_a_replica_loses_no_task(cluster: Start) -> None:
    settings = {
        "DISPATCH_ASSIGNMENT__LEASE_MS": str(LEASE_MS),
        "DISPATCH_ASSIGNMENT__WAKE_TIMEOUT_MS": str(LEASE_MS),
        "DISPATCH_ASSIGNMENT__TICK_INTERVAL_MS": "200",
        "DISPATCH_RETRY__BACKOFF_BASE_MS": "100",
        "DISPATCH_RETRY__BACKOFF_CAP_MS": "500",
    }
    replicas = cluster(["a", "b", "c"], **settings)
    a, b, c = replicas
    survivors = [
        Worker("agent-a1", a, ["code", "gpu"], 3),
        Worker("agent-a2", a, ["code"], 3),
        Worker("agent-b1", b, ["code", "gpu"], 3),
        Worker("agent-b2", b, ["code"], 3),
    ]
    doomed = [Worker(f"agent-c{i}", c, ["code", "gpu"], C_LIMIT) for i in range(1, C_AGENTS + 1)]
    for worker in survivors + doomed:
        worker.register()

    ledger = Ledger()
    acks = Acks()
    held: dict[str, str] = {}
    stop_work, stop_writers, stop_holding = threading.Event(), threading.Event(), threading.Event()
    threads = [threading.Thread(target=work, args=(w, ledger, stop_work)) for w in survivors]
    holders = [threading.Thread(target=hold, args=(w, held, ledger, stop_holding)) for w in doomed]
    writers = [
        threading.Thread(target=write, args=(server, name, acks, stop_writers))
        for name, server in zip("abc", replicas, strict=True)
    ]
    try:
        for thread in threads + holders + writers:
            thread.start()

        def c_busy() -> bool:
            if ledger.errors:
                pytest.fail(f"{ledger.errors[:5]}\n{server_logs(replicas)}")
            with ledger.lock:
                full = len(held) >= C_AGENTS * C_LIMIT
            return full and acks.count() >= MIN_ACKS_BEFORE_KILL

        wait_until(c_busy, 60, "replica c's agents to run a full load")
        # Replica c dies with its agents' work running and requests in flight.
        stop_holding.set()
        c.kill()
        stop_writers.set()
        for thread in holders + writers:
            thread.join(30)
        with ledger.lock:
            lost = dict(held)
        assert not acks.errors, acks.errors[:5]
        acked = dict(acks.acked)
        assert len(lost) >= C_AGENTS * C_LIMIT

        with admin_client(a) as client:

            def all_completed() -> bool:
                if ledger.errors:
                    pytest.fail(f"{ledger.errors[:5]}\n{server_logs(replicas)}")
                tasks = list_tasks(client, LABEL_KILL)
                return len(tasks) >= len(acked) and all(t["status"] == "completed" for t in tasks)

            wait_until(all_completed, 90, "every task to be completed by the survivors")
            tasks = list_tasks(client, LABEL_KILL)
    finally:
        stop_work.set()
        stop_holding.set()
        stop_writers.set()
        for thread in threads + holders + writers:
            thread.join(30)
        for worker in survivors + doomed:
            worker.close()
    assert not any(t.is_alive() for t in threads + holders + writers), "threads did not stop"
    assert not ledger.errors, ledger.errors[:5]

    by_key = Counter(t["context"]["key"] for t in tasks)
    twice = [key for key, n in by_key.items() if n > 1]
    assert not twice, f"created more than once: {twice[:10]}"
    by_id = {t["id"]: t for t in tasks}
    missing = [key for key, task_id in acked.items() if task_id not in by_id]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged tasks lost: {missing[:10]}"
    for key, task_id in acked.items():
        assert by_id[task_id]["context"]["key"] == key
    # Nothing appears that nobody asked for: each task was acknowledged or cut off in flight.
    assert set(by_key) <= set(acked) | acks.unknown
    assert {t["status"] for t in tasks} == {"completed"}

    # The work that died with replica c was requeued by lease and finished by a survivor.
    alive = {w.id for w in survivors}
    requeues = []
    with admin_client(a) as reader:
        for task_id, agent_id in sorted(lost.items()):
            detail, events = detail_and_events(reader, task_id)
            attempts = detail["attempts"]
            first = attempts[0]
            assert (first["agent_id"], first["outcome"]) == (agent_id, "lost"), attempts
            assert attempts[-1]["outcome"] == "completed" and attempts[-1]["agent_id"] in alive
            assert detail["assignee"] in alive
            assert all(x["outcome"] == "lost" for x in attempts[:-1]), attempts
            assigned = [e for e in events if _is(e, "assigned")]
            assert len(assigned) == len(attempts)
            assert sum(_is(e, "requeued") for e in events) == len(attempts) - 1
            requeues.append(len(attempts) - 1)
        loads = agent_loads(reader)
    print(
        f"\n{len(acked)} tasks acknowledged, {len(acks.unknown)} cut off in flight, "
        f"{len(lost)} running on the killed replica; requeues each: {requeues}"
    )
    assert {w.id: loads[w.id] for w in survivors} == {w.id: 0 for w in survivors}


# --- lost agents and colliding writers ----------------------------------------------------


def test_work_lost_with_a_replica_is_not_handed_back_to_its_silent_agents(cluster: Start) -> None:
    settings = {
        "DISPATCH_ASSIGNMENT__LEASE_MS": str(LEASE_MS),
        "DISPATCH_ASSIGNMENT__WAKE_TIMEOUT_MS": "3000",
        "DISPATCH_ASSIGNMENT__TICK_INTERVAL_MS": "200",
    }
    a, c = cluster(["a", "c"], **settings)
    doomed = Worker("agent-c1", c, ["gpu"], 1)
    survivor = Worker("agent-a1", a, ["gpu"], 1)
    ledger = Ledger()
    beating, stop = threading.Event(), threading.Event()

    def heartbeats() -> None:  # keeps the task's lease while replica c lives
        while not beating.wait(0.3):
            try:
                doomed.heartbeat()
            except Exception as exc:
                if not beating.is_set():
                    ledger.error(f"heartbeat: {exc!r}")

    beat = threading.Thread(target=heartbeats)
    # Long polls: the survivor takes work when it is pushed to it, not by re-polling.
    worker = threading.Thread(target=work, args=(survivor, ledger, stop, 4.0))
    try:
        with httpx.Client(
            base_url=a.api_url, headers={"X-Agent-ID": "requester-a"}, timeout=10
        ) as requester:

            def create(title: str) -> str:
                r = requester.post("/api/v1/tasks", json={"title": title, "capabilities": ["gpu"]})
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

            doomed.register()
            lost = create("lost with replica c")
            assert [t["id"] for t in doomed.claim(5)["tasks"]] == [lost]
            beat.start()
            # The survivor works after agent-c1 was last given a task.
            survivor.register()
            other = create("done by the survivor")
            assert [t["id"] for t in survivor.claim(5)["tasks"]] == [other]
            assert survivor.complete({"id": other, "attempt": 1}).status_code == 200

            beating.set()
            beat.join(10)
            c.kill()
            worker.start()
            with admin_client(a) as reader:

                def finished() -> bool:
                    if ledger.errors:
                        pytest.fail(str(ledger.errors[:5]))
                    detail, _ = detail_and_events(reader, lost)
                    return bool(detail["status"] == "completed")

                wait_until(finished, 30, "the lost task to be completed")
                detail, _ = detail_and_events(reader, lost)
    finally:
        beating.set()
        stop.set()
        for thread in (beat, worker):
            if thread.is_alive():
                thread.join(30)
        doomed.close()
        survivor.close()
    attempts = [(x["agent_id"], x["outcome"]) for x in detail["attempts"]]
    # Silent for a whole lease, agent-c1 is lost: the task goes to the survivor at once.
    assert attempts == [("agent-c1", "lost"), ("agent-a1", "completed")]


def test_claim_chosen_as_deadlock_victim_is_retried(cluster: Start, postgres_url: str) -> None:
    """Two replicas' batch assignments lock an agent row and task rows in opposite orders;
    a claim queued on that agent row closes the cycle and PostgreSQL may abort it. The
    claim took nothing, so it must try again rather than refuse the agent. The two other
    transactions are played here by plain sessions, slow to detect the deadlock, so that
    the claim is the victim every time."""
    (a,) = cluster(["a"])
    agent = Worker("agent-a1", a, ["code"], 2)
    agent.register()
    with httpx.Client(
        base_url=a.api_url, headers={"X-Agent-ID": "requester-a"}, timeout=10
    ) as requester:
        r = requester.post("/api/v1/tasks", json={"title": "nobody's", "capabilities": ["rare"]})
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
    take_agent = "UPDATE agents SET last_assigned_at = now() WHERE id = %s"
    take_task = "UPDATE tasks SET updated_at = updated_at WHERE id = %s"
    with (
        psycopg.connect(postgres_url, autocommit=True) as watch,
        psycopg.connect(postgres_url) as first,
        psycopg.connect(postgres_url) as second,
        ThreadPoolExecutor(3) as pool,
    ):
        for conn in (first, second):
            conn.execute("SET deadlock_timeout = '60s'")
            conn.commit()

        def waiting(count: int) -> Callable[[], bool]:
            sql = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )

            def check() -> bool:
                row = watch.execute(sql).fetchone()
                return row is not None and row[0] >= count

            return check

        first.execute(take_agent, [agent.id])
        claim = pool.submit(
            agent.client.post, "/api/v1/tasks/claim", json={"max_tasks": 1, "wait_s": 0}
        )
        wait_until(waiting(1), 10, "the claim to wait for the agent row")
        second.execute(take_task, [task_id])
        second_blocked = pool.submit(second.execute, take_agent, [agent.id])
        wait_until(waiting(2), 10, "the second transaction to queue on the agent row")
        first_blocked = pool.submit(first.execute, take_task, [task_id])
        wait_until(waiting(3), 10, "the cycle to close")
        # The claim's backend finds the cycle after deadlock_timeout (1 s by default).
        deadline = time.monotonic() + 5
        while not claim.done() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        # Then the other two resolve theirs: the first gives up, the second goes ahead.
        watch.execute("SELECT pg_cancel_backend(%s)", [first.info.backend_pid])
        with pytest.raises(psycopg.errors.QueryCanceled):
            first_blocked.result(timeout=10)
        first.rollback()
        second_blocked.result(timeout=10)
        second.rollback()
        response = claim.result(timeout=30)
    agent.close()
    assert response.status_code == 200, response.text
    assert response.json() == {"tasks": [], "reason": "no_tasks_available"}
