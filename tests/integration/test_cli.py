"""The `dispatchd` command line, run as a real process."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dispatchd import __version__
from tests.integration.server import ServerProcess, clean_env, run_cli

pytestmark = pytest.mark.slow

ADMIN = "integration-admin-token-0123456789"


def test_version_through_the_console_script() -> None:
    script = Path(sys.executable).parent / "dispatchd"
    if not script.exists():
        pytest.fail(f"no console script at {script}: is the package installed (pip install -e .)?")
    result = subprocess.run(
        [str(script), "version"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__


def test_serve_prints_addresses_and_generated_token_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as server:
        token_line = server.wait_for_stdout(lambda line: line.startswith("admin token"))
        assert token_line is not None, server.describe()
        assert token_line.startswith("admin token (generated, kept in "), token_line
        token = token_line.rsplit(": ", 1)[1]

        token_file = data / "admin_token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        assert server.api_url.startswith("http://127.0.0.1:")
        assert server.ops_url.startswith("http://127.0.0.1:")
        assert server.api_url != server.ops_url
        health = httpx.get(f"{server.ops_url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # The printed token is the admin's: it opens an admin-only route.
        agents = f"{server.api_url}/api/v1/agents"
        as_admin = {"X-Agent-ID": "ops", "Authorization": f"Bearer {token}"}
        assert httpx.get(agents, headers=as_admin, timeout=10).status_code == 200
        assert httpx.get(agents, headers={"X-Agent-ID": "ops"}, timeout=10).status_code == 401
        assert server.stop() == 0, server.describe()

    with ServerProcess(data) as again:
        line = again.wait_for_stdout(lambda line: line.startswith("admin token"))
        assert line == f"admin token: in {token_file}", again.describe()
        assert again.stdout is not None and token not in again.stdout.text
        as_admin = {"X-Agent-ID": "ops", "Authorization": f"Bearer {token}"}
        r = httpx.get(f"{again.api_url}/api/v1/agents", headers=as_admin, timeout=10)
        assert r.status_code == 200
        assert again.stop() == 0, again.describe()
    assert token_file.read_text().strip() == token


def test_configured_admin_token_is_not_printed(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, env={"DISPATCH_ADMIN_TOKEN": ADMIN}) as server:
        assert server.wait_for_stdout(lambda line: line.startswith("database:")) is not None
        assert server.stop() == 0, server.describe()
        assert server.stdout is not None
        assert ADMIN not in server.stdout.text
        assert "admin token" not in server.stdout.text
    assert not (tmp_path / "admin_token").exists()


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("server:\n  port: 0\n  bogus: 1\n", "server.bogus"),
        ("nosuchsection:\n  x: 1\n", "nosuchsection"),
    ],
)
def test_unknown_config_key_exits_2_naming_it(tmp_path: Path, yaml_text: str, key: str) -> None:
    config = tmp_path / "dispatchd.yaml"
    config.write_text(yaml_text)
    result = run_cli(
        "serve", "--config", str(config), env={"DISPATCH_DATA_DIR": str(tmp_path)}, cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stderr
    assert "dispatchd listening" not in result.stdout


def test_bad_env_value_exits_2_naming_key_and_variable(tmp_path: Path) -> None:
    result = run_cli(
        "serve", env={"DISPATCH_PORT": "abc", "DISPATCH_DATA_DIR": str(tmp_path)}, cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "server.port" in result.stderr
    assert "DISPATCH_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_log_format(tmp_path: Path) -> None:
    env = {"DISPATCH_LOG_FORMAT": "json", "DISPATCH_ADMIN_TOKEN": ADMIN}
    with ServerProcess(tmp_path, env=env) as server:
        r = httpx.get(f"{server.api_url}/api/v1/tasks", headers={"X-Agent-ID": "a"}, timeout=10)
        assert r.status_code == 200
        assert server.stop() == 0, server.describe()
        assert server.stderr is not None
        lines = [line for line in server.stderr.lines if line.strip()]
    assert lines, "the server logged nothing"
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}")
    for record in records:
        assert {"ts", "level", "logger", "message"} <= record.keys(), record
    migrate = [r for r in records if r.get("action") == "migrate"]
    assert migrate and migrate[0]["level"] == "info", records


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_db_upgrade_applies_then_reports_up_to_date(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    env = {"DISPATCH_DATA_DIR": str(tmp_path / "data")}
    if engine == "postgres":
        env["DISPATCH_DATABASE_URL"] = request.getfixturevalue("postgres_empty_url")
    first = run_cli("db", "upgrade", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("applied migrations: 1"), first.stdout
    if engine == "sqlite":
        assert (tmp_path / "data" / "dispatchd.db").is_file()
    second = run_cli("db", "upgrade", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.strip() == "database is up to date"


def test_sigterm_stops_cleanly_with_exit_code_0(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, env={"DISPATCH_ADMIN_TOKEN": ADMIN}) as server:
        headers = {"X-Agent-ID": "requester"}
        r = httpx.post(
            f"{server.api_url}/api/v1/tasks", json={"title": "kept"}, headers=headers, timeout=10
        )
        assert r.status_code == 201, r.text
        assert server.stop() == 0, server.describe()
        assert server.stderr is not None
        assert "Traceback" not in server.stderr.text, server.describe()
    # A clean stop keeps the data: the next start sees the task.
    with ServerProcess(tmp_path, env={"DISPATCH_ADMIN_TOKEN": ADMIN}) as server:
        page = httpx.get(f"{server.api_url}/api/v1/tasks", headers=headers, timeout=10).json()
        assert [t["title"] for t in page["items"]] == ["kept"]
        assert server.stop() == 0, server.describe()
