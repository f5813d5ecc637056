"""The quickstart example of the README runs as a newcomer runs it: the broker, a runner
around a small agent, three tasks completed, everything stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.server import clean_env

DEMO = Path(__file__).parents[2] / "examples" / "quickstart" / "demo.py"


def test_the_quickstart_example_completes_three_tasks() -> None:
    out = subprocess.run(
        [sys.executable, str(DEMO)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line for line in lines if "completed by quickstart-runner" in line] == [
        "task 1: completed by quickstart-runner",
        "task 2: completed by quickstart-runner",
        "task 3: completed by quickstart-runner",
    ]
    assert "  result:   {'words': 8, 'longest': 'Summarise'}" in lines
    assert "  comments: ['counted 6 words']" in lines
    assert "  progress: [\"working on 'task 3'\"]" in lines
    assert lines[-1] == "runner and broker stopped"
    assert "registered quickstart-runner for words" in out.stderr
