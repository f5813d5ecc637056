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

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "peers" / "peers.py"

pytestmark = pytest.mark.slow


def test_dispatchd_half_drains_and_measures_latency(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--peers",
            "dispatchd",
            "--modes",
            "claim10+bc",  # the latency phase runs the one-per-claim agents
            "--tasks",
            "50",
            "--create-batch",
            "20",
            "--latency-tasks",
            "10",
            "--warmup",
            "2",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUMMARY peers:" in run.stdout
    doc = json.loads((tmp_path / "peers.quick.json").read_text())
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
