"""Configuration: a YAML file, then environment variables, validated in one model.

Every value can be set in the file (`server.port: 8600`) or in the environment, either by
the seed's names (`DISPATCH_PORT`) or by the generic form `DISPATCH_<SECTION>__<KEY>`
(`DISPATCH_ASSIGNMENT__WAKE_TIMEOUT_MS`). An unknown key or a bad value stops the start
with a `ConfigError` that names the key and where it came from.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    metrics_host: str | None = None
    metrics_port: int = Field(8601, ge=0, le=65535)
    admin_token: str | None = Field(None, min_length=16)
    data_dir: Path = Path(".dispatchd")
    max_body_bytes: int = Field(1024 * 1024, ge=1024)


class DatabaseConfig(Section):
    url: str | None = None
    pool_size: int = Field(10, ge=1, le=500)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite:///", "postgresql://", "postgres://")
        ):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class HermesConfig(Section):
    """NATS ("Hermes"): every event is published to `<subject_prefix>.<type>`; see
    docs/events.md."""

    # One server or a comma-separated list: nats://host:4222 (or tls://, ws://, wss://);
    # unset, nothing is published.
    url: str | None = None
    subject_prefix: str = Field("dispatch", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    # How long the server may take to confirm a published batch before the connection
    # counts as lost.
    flush_timeout_s: float = Field(5.0, gt=0, le=60)
    # Events published per batch (one confirmation, one saved cursor).
    batch_size: int = Field(500, ge=1, le=10_000)
    # Waits between reconnection attempts: doubling from `retry_base_s` up to `retry_cap_s`.
    retry_base_s: float = Field(0.5, gt=0, le=60)
    retry_cap_s: float = Field(30.0, gt=0, le=3600)
    # On PostgreSQL, how often a replica that does not publish checks whether it may.
    lease_check_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _nats(cls, value: str | None) -> str | None:
        if not value:  # an empty variable means not configured
            return None
        for server in value.split(","):
            server = server.strip()
            if not server or (
                "://" in server and not server.startswith(("nats://", "tls://", "ws://", "wss://"))
            ):
                raise ValueError(
                    "must be nats://host:port (or tls://, ws://, wss://), "
                    "several separated by commas"
                )
        return value


class WarrenConfig(Section):
    """The availability and wake service; see docs/providers.md for its HTTP contract."""

    url: str | None = None
    token: str | None = None
    # How long an answer is used before it is asked again.
    refresh_s: float = Field(5.0, gt=0, le=3600)
    # How long one call may take.
    timeout_s: float = Field(2.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if not value:  # an empty variable means not configured
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class PromptForgeConfig(Section):
    """The capability service; see docs/providers.md for its HTTP contract."""

    url: str | None = None
    refresh_s: float = Field(5.0, gt=0, le=3600)
    timeout_s: float = Field(2.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if not value:  # an empty variable means not configured
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class AssignmentConfig(Section):
    tick_interval_ms: int = Field(1000, ge=10)
    wake_timeout_ms: int = Field(30_000, ge=1)
    default_timeout_ms: int = Field(300_000, ge=1000)
    lease_ms: int = Field(60_000, ge=1000)
    # How long a task's question waits for an answer before the task fails with
    # `input_timeout`, when the task names no `input_timeout_s` (None: it waits for ever).
    input_timeout_ms: int | None = Field(None, ge=1000)
    # An agent not heard from (heartbeat, claim) for this long is marked offline.
    offline_after_ms: int = Field(180_000, ge=1000)
    max_concurrent_per_agent: int = Field(3, ge=1)
    owner_filter_enabled: bool = True


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["json", "text"] = "text"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class AuthConfig(Section):
    # optional: a token, when sent, must match its X-Agent-ID; required: it must be sent.
    agent_tokens: Literal["optional", "required"] = "optional"


class LimitsConfig(Section):
    """Per-caller rate limits (docs/security.md#rate-limits): a token bucket per
    X-Agent-ID, refilled at `requests_per_second` and holding `burst` requests. Off (0) by
    default, for the embedded setup; a shared deployment sets it. The admin and heartbeats
    are never limited."""

    requests_per_second: float = Field(0, ge=0, le=1_000_000)
    # The bucket's size; unset: one second's worth (at least 1).
    burst: int | None = Field(None, ge=1, le=1_000_000)


class OutboundConfig(Section):
    """Where webhooks and wake URLs may point (docs/security.md#outbound-requests): public
    addresses, loopback while `allow_loopback` (the embedded default; a shared server turns
    it off), and the networks listed in `allow_networks`; never link-local (cloud
    metadata) or private ranges otherwise."""

    allow_loopback: bool = True
    # CIDRs ("10.1.0.0/16", "fd00::/8"); in the environment, a comma-separated list.
    allow_networks: tuple[str, ...] = ()

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network in CIDR form: {exc}") from None
        return value


class RetryConfig(Section):
    max_attempts: int = Field(3, ge=1, le=100)
    backoff_base_ms: int = Field(1000, ge=0)
    backoff_cap_ms: int = Field(300_000, ge=0)
    max_lost_requeues: int = Field(5, ge=1)
    # The capability a task's last failure is escalated to when the task names none.
    escalate_to: str | None = Field(None, min_length=1, max_length=200)


class ReviewConfig(Section):
    max_cycles: int = Field(3, ge=1)


class RoutingConfig(Section):
    tiers: dict[str, str] = Field(default_factory=lambda: {"complex": "opus", "routine": "haiku"})
    default_model: str | None = None


class NotificationsConfig(Section):
    batch_window_s: float = Field(60, gt=0)


class WebhooksConfig(Section):
    """Webhook deliveries (docs/webhooks.md)."""

    # How long one delivery request may take.
    timeout_s: float = Field(10, gt=0, le=300)
    # Attempts per delivery before it is marked failed.
    max_attempts: int = Field(8, ge=1, le=100)
    # Wait after the n-th failed attempt: base * 2**(n-1), capped, with equal jitter.
    backoff_base_ms: int = Field(1000, ge=0)
    backoff_cap_ms: int = Field(300_000, ge=0)
    # Failed attempts in a row that open a webhook's circuit, and how long it stays open.
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(60, gt=0)
    # Deliveries in flight at once across all webhooks (each webhook sends one at a time).
    max_in_flight: int = Field(16, ge=1, le=1000)
    # Finished deliveries older than this are deleted (0 keeps them for ever).
    delivery_retention_days: float = Field(7, ge=0)


class EventsConfig(Section):
    """The event log's readers and how long it is kept."""

    # Comment lines sent on an idle SSE stream, so that proxies keep it open.
    keepalive_s: float = Field(15, gt=0, le=3600)
    # Events older than this are deleted (0 keeps them for ever); a reader whose cursor
    # falls in the deleted part gets 410 cursor_expired.
    retention_days: float = Field(30, ge=0)
    # Completed, failed, cancelled and timed-out tasks finished longer ago than this are
    # deleted with their attempts, progress and comments (0 keeps them for ever).
    finished_task_retention_days: float = Field(90, ge=0)
    # How often retention runs.
    prune_interval_s: float = Field(300, gt=0)


class BudgetsConfig(Section):
    """Daily budgets per requester (docs/costs.md): a requester whose tasks have cost this
    much today (UTC) gets 429 `budget_exceeded` on create until the next UTC midnight."""

    # Every requester's budget in USD; unset, no limit.
    requester_daily_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    # Budgets of named requesters, in place of the default (a JSON object in the
    # environment: DISPATCH_BUDGETS__REQUESTERS='{"ci-bot": 5}').
    requesters: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )

    @field_validator("requesters", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('must be a JSON object such as {"ci-bot": 5}') from None
        return value


class Settings(Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    hermes: HermesConfig = HermesConfig()
    warren: WarrenConfig = WarrenConfig()
    promptforge: PromptForgeConfig = PromptForgeConfig()
    assignment: AssignmentConfig = AssignmentConfig()
    logging: LoggingConfig = LoggingConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    outbound: OutboundConfig = OutboundConfig()
    retry: RetryConfig = RetryConfig()
    review: ReviewConfig = ReviewConfig()
    routing: RoutingConfig = RoutingConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    events: EventsConfig = EventsConfig()
    budgets: BudgetsConfig = BudgetsConfig()

    @property
    def database_url(self) -> str:
        return self.database.url or "sqlite:///dispatchd.db"


# The seed's variable names, plus the product's own.
ENV_ALIASES: Mapping[str, tuple[str, str]] = {
    "DISPATCH_HOST": ("server", "host"),
    "DISPATCH_PORT": ("server", "port"),
    "DISPATCH_METRICS_PORT": ("server", "metrics_port"),
    "DISPATCH_ADMIN_TOKEN": ("server", "admin_token"),
    "DISPATCH_DATA_DIR": ("server", "data_dir"),
    "DISPATCH_DATABASE_URL": ("database", "url"),
    "DISPATCH_HERMES_URL": ("hermes", "url"),
    "DISPATCH_WARREN_URL": ("warren", "url"),
    "DISPATCH_WARREN_TOKEN": ("warren", "token"),
    "DISPATCH_FORGE_URL": ("promptforge", "url"),
    "DISPATCH_TICK_INTERVAL_MS": ("assignment", "tick_interval_ms"),
    "DISPATCH_OWNER_FILTER_ENABLED": ("assignment", "owner_filter_enabled"),
    "DISPATCH_LOG_LEVEL": ("logging", "level"),
    "DISPATCH_LOG_FORMAT": ("logging", "format"),
    "DISPATCH_AGENT_TOKENS": ("auth", "agent_tokens"),
}

DEFAULT_CONFIG_FILE = Path("dispatchd.yaml")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and its source."""


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or `dispatchd.yaml` if present), apply the environment, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    sources: dict[tuple[str, str], str] = {}
    file = (
        path
        if path is not None
        else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    )
    if file is not None:
        raw = _read_yaml(file)
        for section, values in raw.items():
            if isinstance(values, Mapping):
                for key in values:
                    sources[(section, str(key))] = f"{file}: {section}.{key}"
    for name, value in env.items():
        target = _env_target(name)
        if target is None:
            continue
        section, key = target
        existing = raw.setdefault(section, {})
        if not isinstance(existing, dict):
            raise ConfigError(f"{file}: {section} must be a mapping")
        existing[key] = value
        sources[(section, key)] = f"environment variable {name}"
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of sections")
    return data


def _env_target(name: str) -> tuple[str, str] | None:
    if name in ENV_ALIASES:
        return ENV_ALIASES[name]
    if not name.startswith("DISPATCH_") or "__" not in name:
        # Other DISPATCH_* variables belong to workers (DISPATCH_URL, DISPATCH_TASK_ID, …).
        return None
    section, _, key = name.removeprefix("DISPATCH_").partition("__")
    if section.lower() not in Settings.model_fields:
        raise ConfigError(f"environment variable {name}: unknown section {section.lower()!r}")
    return section.lower(), key.lower()


def _describe(exc: ValidationError, sources: Mapping[tuple[str, str], str]) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc)
        source = sources.get((loc[0], loc[1])) if len(loc) >= 2 else None
        where = f" (from {source})" if source else ""
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown configuration key {key}{where}")
        else:
            lines.append(f"bad value for {key}{where}: {error['msg']}")
    return "; ".join(lines)
