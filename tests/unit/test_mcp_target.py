"""Where `dispatchd mcp` looks for the broker and its credentials (SPEC §6)."""

from __future__ import annotations

from pathlib import Path

from dispatchd.mcp.stdio import Target, resolve


def test_defaults(tmp_path: Path) -> None:
    assert resolve(env={}, cwd=tmp_path) == Target("http://127.0.0.1:8600", "mcp", None)


def test_options_win_over_the_environment(tmp_path: Path) -> None:
    env = {
        "DISPATCH_API_URL": "http://env:1",
        "DISPATCH_AGENT_ID": "env-agent",
        "DISPATCH_TOKEN": "env-token",
        "DISPATCH_ADMIN_TOKEN": "env-admin",
    }
    assert resolve("http://opt:2", "opt-agent", "opt-token", env=env, cwd=tmp_path) == Target(
        "http://opt:2", "opt-agent", "opt-token"
    )
    assert resolve(env=env, cwd=tmp_path) == Target("http://env:1", "env-agent", "env-token")


def test_the_admin_token_comes_after_the_agent_token(tmp_path: Path) -> None:
    (tmp_path / ".dispatchd").mkdir()
    (tmp_path / ".dispatchd" / "admin_token").write_text("from-the-file\n")
    assert resolve(env={"DISPATCH_ADMIN_TOKEN": "from-env"}, cwd=tmp_path).token == "from-env"
    assert resolve(env={}, cwd=tmp_path).token == "from-the-file"
    assert resolve(env={"DISPATCH_TOKEN": "agent"}, cwd=tmp_path).token == "agent"


def test_no_token_file_no_token(tmp_path: Path) -> None:
    (tmp_path / ".dispatchd").mkdir()
    assert resolve(env={}, cwd=tmp_path).token is None
