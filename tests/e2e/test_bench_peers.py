"""The peers benchmark runs: its dispatchd half, tiny sizes, against a real server.

Celery and pgqueuer are left out (they would need downloads into the benchmark's own
virtualenv); what is checked is that the script drives the HTTP API end to end and writes
figures that add up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "peers" / "peers.py"

pytestmark = pytest.mark.slow


def run_peers(results: Path, timeout: float, **options: str) -> tuple[str, dict[str, Any]]:
    """`peers.py --quick` with `options` (as `--name value`): its output and results file."""
    arguments = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *arguments, "--results-dir", str(results)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUMMARY peers:" in run.stdout
    return run.stdout, json.loads((results / "peers.quick.json").read_text())


def test_dispatchd_half_drains_and_measures_latency(tmp_path: Path) -> None:
    _, doc = run_peers(
        tmp_path,
        120,
        peers="dispatchd",
        modes="claim10+bc",  # the latency phase runs the one-per-claim agents
        tasks="50",
        create_batch="20",
        latency_tasks="10",
        warmup="2",
    )
    assert doc["params"]["tasks"] == 50
    dispatchd = doc["results"]["peers"]["dispatchd"]
    assert set(dispatchd["drain"]) == {"claim10+bc"}
    fig = dispatchd["drain"]["claim10+bc"]
    assert fig["tasks"] == 50
    assert fig["create_per_s"] > 0
    assert fig["cpu_ms_per_task"] > 0
    # the rate is the tasks over the span between the first start and the last finish
    assert fig["drain_per_s"] == pytest.approx(50 / fig["drain_s"], rel=0.01)
    latency = dispatchd["latency"]["ms"]
    assert latency["n"] == 10
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert doc["results"]["ratios"] == {}  # no peer ran beside it


def test_the_floor_drains_beside_dispatchd(tmp_path: Path) -> None:
    stdout, doc = run_peers(
        tmp_path,
        180,
        peers="dispatchd,floor",
        modes="single,claim10+bc",
        tasks="40",
        create_batch="20",
        latency_tasks="5",
        warmup="1",
    )
    floor = doc["results"]["peers"]["floor"]
    assert set(floor["drain"]) == {"single", "claim10+bc"}
    assert "latency" not in floor  # the floor measures drains only
    for fig in floor["drain"].values():
        assert fig["tasks"] == 40
        assert fig["drain_per_s"] == pytest.approx(40 / fig["drain_s"], rel=0.01)
    ratios = doc["results"]["ratios"]
    dispatchd = doc["results"]["peers"]["dispatchd"]["drain"]
    for mode in ("single", "claim10+bc"):
        expected = dispatchd[mode]["drain_per_s"] / floor["drain"][mode]["drain_per_s"]
        assert ratios[f"drain {mode} / floor"] == pytest.approx(expected, rel=0.01)
    assert "create / floor" in ratios
    assert "floor single" in stdout


def test_the_floor_writes_what_a_lifecycle_writes(tmp_path: Path) -> None:
    """The floor's rates mean something only if it makes dispatchd's writes: every task
    ends completed with its attempt closed, its events written, the counters and the
    agent's load back where they belong."""
    sys.path.insert(0, str(ROOT / "bench" / "peers"))
    try:
        import floor_app
    finally:
        sys.path.remove(str(ROOT / "bench" / "peers"))
    from starlette.testclient import TestClient

    conn = floor_app.open_db(tmp_path / "floor.db")
    agent = {"X-Agent-ID": "agent-1"}
    with TestClient(floor_app.make_app(conn)) as client:
        body = {"capabilities": ["bench"], "max_concurrent": 10}
        assert client.post("/api/v1/agents", json=body, headers=agent).status_code == 200
        specs = [{"title": f"t{i}", "capabilities": ["bench"]} for i in range(4)]
        specs.append({"title": "not hers", "capabilities": ["gpu"]})
        made = client.post("/api/v1/tasks/batch", json={"tasks": specs}, headers=agent).json()
        assert [t["status"] for t in made["items"]] == ["pending"] * 5
        got = client.post("/api/v1/tasks/claim", json={"max_tasks": 10}, headers=agent).json()
        ids = [t["id"] for t in got["tasks"]]
        assert set(ids) == {t["id"] for t in made["items"][:4]}  # not the gpu task
        assert {t["status"] for t in got["tasks"]} == {"running"}
        one = client.post(f"/api/v1/tasks/{ids[0]}/complete", json={}, headers=agent)
        assert one.json()["status"] == "completed"
        items = [{"task_id": i} for i in ids[1:]] + [{"task_id": ids[0]}]
        rest = client.post("/api/v1/tasks/batch/complete", json={"items": items}, headers=agent)
        assert [i["ok"] for i in rest.json()["items"]] == [True, True, True, False]
    statuses = dict(conn.execute("SELECT id, status FROM tasks").fetchall())
    assert sorted(statuses.values()) == ["completed"] * 4 + ["pending"]
    closed = conn.execute("SELECT count(*) FROM attempts WHERE outcome = 'completed'")
    assert closed.fetchone()[0] == 4
    events = conn.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall()
    assert dict(events) == {
        "task.created": 5,
        "task.assigned": 4,
        "task.started": 4,
        "task.completed": 4,
    }
    counts = dict(conn.execute("SELECT status, n FROM task_counts").fetchall())
    assert counts["pending"] == 1 and counts["running"] == 0 and counts["completed"] == 4
    assert conn.execute("SELECT active FROM agents").fetchone()[0] == 0
