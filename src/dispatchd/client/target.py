"""Where a command-line client finds the broker and who it is to it (SPEC §6).

`dispatchd mcp` and the client commands of the CLI read the same settings, in the same
order, through `resolve`: the option given, else the environment, else a default. The
token is the agent's (`DISPATCH_TOKEN`), else the admin token (`DISPATCH_ADMIN_TOKEN`,
else the `./.dispatchd/admin_token` file a broker started here generated).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_URL", "Target", "login_name", "resolve"]

DEFAULT_URL = "http://127.0.0.1:8600"
TOKEN_FILE = Path(".dispatchd") / "admin_token"


@dataclass(frozen=True)
class Target:
    """Where the broker is and who the client is to it."""

    url: str
    agent_id: str
    token: str | None


def login_name() -> str:
    """The user's login name; `cli` when the system cannot say (a container without one)."""
    try:
        return getpass.getuser() or "cli"
    except (KeyError, OSError):
        return "cli"


def resolve(
    url: str | None = None,
    agent_id: str | None = None,
    token: str | None = None,
    *,
    default_agent_id: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Target:
    """Options first, then `DISPATCH_API_URL` / `DISPATCH_AGENT_ID` / `DISPATCH_TOKEN`,
    then the admin token (`DISPATCH_ADMIN_TOKEN`, else `./.dispatchd/admin_token` when
    that file exists). The agent id defaults to `default_agent_id`, else the login name."""
    env = os.environ if env is None else env
    here = Path.cwd() if cwd is None else cwd
    token = token or env.get("DISPATCH_TOKEN") or env.get("DISPATCH_ADMIN_TOKEN") or None
    if token is None:
        stored = here / TOKEN_FILE
        try:
            token = stored.read_text(encoding="utf-8").strip() or None
        except OSError:  # absent, or not ours to read: no token
            token = None
    return Target(
        url=url or env.get("DISPATCH_API_URL") or DEFAULT_URL,
        agent_id=agent_id or env.get("DISPATCH_AGENT_ID") or default_agent_id or login_name(),
        token=token,
    )
