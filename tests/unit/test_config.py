"""Configuration: YAML, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatchd.config import ENV_ALIASES, ConfigError, load_settings

SEED_NAMES = {
    "DISPATCH_PORT": ("server", "port", "9000", 9000),
    "DISPATCH_METRICS_PORT": ("server", "metrics_port", "9001", 9001),
    "DISPATCH_ADMIN_TOKEN": ("server", "admin_token", "x" * 20, "x" * 20),
    "DISPATCH_DATABASE_URL": ("database", "url", "postgresql://u@h/db", "postgresql://u@h/db"),
    "DISPATCH_HERMES_URL": ("hermes", "url", "nats://localhost:4222", "nats://localhost:4222"),
    "DISPATCH_WARREN_URL": ("warren", "url", "http://w:9090", "http://w:9090"),
    "DISPATCH_WARREN_TOKEN": ("warren", "token", "wt", "wt"),
    "DISPATCH_FORGE_URL": ("promptforge", "url", "http://pf:8083", "http://pf:8083"),
    "DISPATCH_TICK_INTERVAL_MS": ("assignment", "tick_interval_ms", "250", 250),
    "DISPATCH_OWNER_FILTER_ENABLED": ("assignment", "owner_filter_enabled", "false", False),
    "DISPATCH_LOG_LEVEL": ("logging", "level", "DEBUG", "debug"),
}


def test_defaults() -> None:
    s = load_settings(env={})
    assert (s.server.host, s.server.port, s.server.metrics_port) == ("127.0.0.1", 8600, 8601)
    assert s.server.data_dir == Path(".dispatchd")
    assert s.server.max_body_bytes == 1024 * 1024
    assert s.database_url == "sqlite:///dispatchd.db"
    assert s.assignment.default_timeout_ms == 300_000
    assert s.assignment.max_concurrent_per_agent == 3
    assert s.assignment.owner_filter_enabled is True
    assert s.auth.agent_tokens == "optional"
    assert s.hermes.url is None and s.warren.url is None and s.promptforge.url is None


@pytest.mark.parametrize("name", sorted(SEED_NAMES))
def test_every_seed_variable_overrides_its_key(name: str) -> None:
    section, key, raw, expected = SEED_NAMES[name]
    settings = load_settings(env={name: raw})
    assert getattr(getattr(settings, section), key) == expected


def test_the_seed_names_are_all_known() -> None:
    assert set(SEED_NAMES) <= set(ENV_ALIASES)


def test_yaml_file_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "d.yaml"
    file.write_text(
        "server:\n  port: 7000\n  admin_token: dispatch-admin-xxxxx\n"
        "assignment:\n  wake_timeout_ms: 5000\n  owner_filter_enabled: true\n"
        "logging:\n  level: warning\n  format: json\n"
    )
    s = load_settings(
        file, env={"DISPATCH_PORT": "7001", "DISPATCH_ASSIGNMENT__WAKE_TIMEOUT_MS": "42"}
    )
    assert s.server.port == 7001  # the environment wins
    assert s.server.admin_token == "dispatch-admin-xxxxx"
    assert s.assignment.wake_timeout_ms == 42
    assert (s.logging.level, s.logging.format) == ("warning", "json")


def test_the_seed_example_config_loads(tmp_path: Path) -> None:
    file = tmp_path / "seed.yaml"
    file.write_text(
        """
server:
  port: 8600
  metrics_port: 8601
  admin_token: "dispatch-admin-xxxxx"
database:
  url: "postgresql://u:p@localhost:5432/dispatch"
hermes:
  url: "nats://localhost:4222"
warren:
  url: "http://localhost:9090"
  token: "warren-admin-token"
promptforge:
  url: "http://localhost:8083"
assignment:
  tick_interval_ms: 5000
  wake_timeout_ms: 30000
  default_timeout_ms: 300000
  max_concurrent_per_agent: 3
  owner_filter_enabled: true
logging:
  level: "info"
  format: "json"
"""
    )
    s = load_settings(file, env={})
    assert s.warren.token == "warren-admin-token"


def test_unknown_key_in_file_names_it(tmp_path: Path) -> None:
    file = tmp_path / "d.yaml"
    file.write_text("server:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key server\.prot"):
        load_settings(file, env={})


def test_unknown_section_names_it(tmp_path: Path) -> None:
    file = tmp_path / "d.yaml"
    file.write_text("sever:\n  port: 1\n")
    with pytest.raises(ConfigError, match="sever"):
        load_settings(file, env={})


def test_bad_env_value_names_key_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"DISPATCH_PORT": "abc"})
    assert "server.port" in str(info.value) and "DISPATCH_PORT" in str(info.value)


def test_bad_values(tmp_path: Path) -> None:
    for bad, key in [
        ({"DISPATCH_PORT": "70000"}, "server.port"),
        ({"DISPATCH_LOG_LEVEL": "loud"}, "logging.level"),
        ({"DISPATCH_OWNER_FILTER_ENABLED": "maybe"}, "assignment.owner_filter_enabled"),
        ({"DISPATCH_DATABASE_URL": "mysql://x"}, "database.url"),
        ({"DISPATCH_AUTH__AGENT_TOKENS": "sometimes"}, "auth.agent_tokens"),
        ({"DISPATCH_ADMIN_TOKEN": "short"}, "server.admin_token"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_settings(env=bad)


def test_generic_env_with_unknown_key_or_section() -> None:
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(env={"DISPATCH_SERVER__PROT": "1"})
    with pytest.raises(ConfigError, match="nosuch"):
        load_settings(env={"DISPATCH_NOSUCH__KEY": "1"})


def test_worker_variables_are_not_configuration() -> None:
    s = load_settings(env={"DISPATCH_URL": "http://127.0.0.1:1", "DISPATCH_TASK_ID": "t"})
    assert s.server.port == 8600


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, env={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listy, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env={})
