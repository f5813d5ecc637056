"""The options every client command shares, and the SDK client they open with them.

The broker is found as `dispatchd mcp` finds it (`dispatchd.client.target.resolve`):
`--url` / `DISPATCH_API_URL`, `--as` / `DISPATCH_AGENT_ID` (default: the login name),
`--token` / `DISPATCH_TOKEN`, else the admin token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from dispatchd.cli.output import failures
from dispatchd.client import Client
from dispatchd.client.target import Target, resolve

# Seconds a request may take, and retries of a connection that could not be made: a
# broker that is not there is reported within a few seconds, a stuck one within this.
REQUEST_TIMEOUT_S = 10.0
RETRIES = 2

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="The broker's API URL (env DISPATCH_API_URL; default http://127.0.0.1:8600).",
        show_default=False,
    ),
]
AsOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="The agent id to act as (env DISPATCH_AGENT_ID; default your login name).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help=(
            "Bearer token (env DISPATCH_TOKEN, else DISPATCH_ADMIN_TOKEN, "
            "else ./.dispatchd/admin_token)."
        ),
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (the API's shapes) and nothing else.")
]


@contextmanager
def connect(url: str | None, as_: str | None, token: str | None) -> Iterator[tuple[Client, Target]]:
    """A client of the broker the options and environment point at. The SDK's errors
    raised inside end the command with their exit code."""
    target = resolve(url, as_, token)
    with failures(target.url):
        client = Client(
            target.url,
            agent_id=target.agent_id,
            token=target.token,
            timeout=REQUEST_TIMEOUT_S,
            retries=RETRIES,
        )
        try:
            yield client, target
        finally:
            client.close()
