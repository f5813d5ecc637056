"""The API fuzzed by schemathesis, as a user would point it at `/openapi.json`.

Every route, every check (server errors, responses that break their schema, undocumented
status codes, schema-valid requests refused, `Allow` on 405, ...), all phases, the stateful
one included (it follows the links schemathesis infers between routes, so it reaches real
tasks, agents, rooms, schedules and webhooks through their ids). A fixed seed makes the run
repeatable; its size is bounded so that it stays a few minutes on two cores.

What the document cannot say is handled, with reasons, by the hooks (`fuzz_hooks.py`:
opaque cursors, ids that must name existing tasks, rules across fields) and the settings
file (`schemathesis.toml`). The server allows every outbound network: which destinations a
deployment refuses (docs/security.md) is its configuration, not the document's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.server import ServerProcess, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
HOOKS_DIR = Path(__file__).parent
CONFIG = HOOKS_DIR / "schemathesis.toml"

SEED = 20261206
EXAMPLES = 3
TIMEOUT_S = 800


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    token = "dsp_admin_fuzz_" + "x" * 32
    env = {"DISPATCH_ADMIN_TOKEN": token, "DISPATCH_OUTBOUND__ALLOW_NETWORKS": "0.0.0.0/0,::/0"}
    with ServerProcess(tmp_path / "server", env=env) as server:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.api_url}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {token}",
                "--header",
                "X-Agent-ID: fuzzer",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                "--workers",
                "1",
                "--request-timeout",
                "30",
                # The machine may be shared: a slow answer is not what this run looks for.
                "--max-response-time",
                "30",
                "--continue-on-failure",
                "--generation-database",
                ":memory:",
                # A stream never ends: its parameters are those of GET /api/v1/events.
                "--exclude-path",
                "/api/v1/events/stream",
            ],
            cwd=tmp_path,
            env=clean_env(
                {
                    "NO_COLOR": "1",
                    "SCHEMATHESIS_TELEMETRY": "false",
                    "SCHEMATHESIS_HOOKS": "fuzz_hooks",
                    "PYTHONPATH": str(HOOKS_DIR),
                }
            ),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        errors = [line for line in server.describe().splitlines() if "Traceback" in line]
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert not errors, server.describe()
