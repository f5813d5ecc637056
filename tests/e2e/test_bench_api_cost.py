"""The API-layer benchmark runs, at a tiny size, and its figures add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "api_cost.py"

pytestmark = pytest.mark.slow


def test_the_api_layer_is_measured_around_the_engine(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--calls", "70", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=ROOT / "bench",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((tmp_path / "api_cost.quick.json").read_text())
    r = doc["results"]
    assert r["calls"] == 70
    assert r["engine_us"] > 0 and r["hot_us"] > 0 and r["router_us"] > 0
    assert r["hot_layer_us"] == pytest.approx(r["hot_us"] - r["engine_us"], abs=0.11)
    assert r["router_layer_us"] == pytest.approx(r["router_us"] - r["engine_us"], abs=0.11)
    assert "hot route (as served)" in run.stdout
