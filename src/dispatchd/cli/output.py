"""What the client commands print and the exit codes they end with (docs/cli.md).

People get rich tables on standard output; scripts get `--json`, the API's own shapes and
nothing else on standard output. Every failure is one line on standard error and an exit
code that says which kind of failure it was.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from dispatchd.client.errors import (
    ApiError,
    ClientError,
    Forbidden,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
)


class Exit(IntEnum):
    OK = 0
    TASK_NOT_COMPLETED = 1
    USAGE = 2
    UNAUTHENTICATED = 3
    FORBIDDEN = 4
    UNREACHABLE = 5
    SERVER_ERROR = 6
    NOT_FOUND = 7
    REFUSED = 8
    INTERRUPTED = 130


def _console(stream: Any) -> Console:
    # Piped output is read by people too (less, grep): wide lines rather than cut ones.
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def stdout() -> Console:
    return _console(sys.stdout)


def stderr() -> Console:
    return _console(sys.stderr)


def exit_code_of(error: ClientError) -> Exit:
    """The exit code of a failed call."""
    if isinstance(error, TransportError):
        return Exit.UNREACHABLE
    if isinstance(error, Unauthorized):
        return Exit.UNAUTHENTICATED
    if isinstance(error, Forbidden):
        return Exit.FORBIDDEN
    if isinstance(error, NotFound):
        return Exit.NOT_FOUND
    if isinstance(error, ServerError):
        return Exit.SERVER_ERROR
    if isinstance(error, ApiError):
        # 400, 409, 410, 413, 422, 429: the broker heard and refused.
        return Exit.REFUSED
    # An answer the client could not read: the broker misbehaved.
    return Exit.SERVER_ERROR


def one_line(text: str) -> str:
    return " ".join(text.split())


def message_of(error: ClientError, url: str) -> str:
    if isinstance(error, TransportError):
        return f"cannot reach the broker at {url}: {error}"
    if isinstance(error, ApiError):
        return f"{error.message} ({error.code}, HTTP {error.status})"
    return str(error)


def fail(message: str, code: Exit) -> NoReturn:
    """End the command: `message` as one line on standard error, and `code`."""
    sys.stdout.flush()
    print(f"dispatchd: {one_line(message)}", file=sys.stderr, flush=True)
    raise typer.Exit(int(code))


@contextmanager
def failures(url: str) -> Iterator[None]:
    """Turn the SDK's errors (and Ctrl-C) into one line on standard error and an exit
    code."""
    try:
        yield
    except ClientError as exc:
        fail(message_of(exc, url), exit_code_of(exc))
    except KeyboardInterrupt:
        fail("interrupted", Exit.INTERRUPTED)


def plain(value: Any) -> Any:
    """`value` as plain JSON data: models as the API shows them."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    """Print `value` as JSON on standard output; one line when it is a stream's item."""
    sys.stdout.write(json.dumps(plain(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


# Colours by state: waiting is yellow, moving is blue, asking is magenta, done is green,
# failed is red, gone is dim.
STATE_STYLES = {
    # tasks
    "pending": "yellow",
    "blocked": "yellow dim",
    "assigned": "cyan",
    "running": "blue bold",
    "waiting_input": "magenta bold",
    "review": "magenta",
    "completed": "green",
    "failed": "red bold",
    "timed_out": "red",
    "cancelled": "dim",
    # agents
    "ready": "green",
    "busy": "yellow",
    "sleeping": "blue",
    "degraded": "red",
    "offline": "dim",
    "draining": "yellow dim",
    # rooms
    "idle": "green",
    "working": "blue bold",
    "error": "red bold",
    # schedules
    "active": "green",
    "paused": "yellow",
}

PRIORITY_STYLES = {"critical": "red bold", "high": "yellow", "medium": "", "low": "dim"}


def state(value: Any) -> Text:
    name = str(getattr(value, "value", value))
    return Text(name, style=STATE_STYLES.get(name, ""))


def priority(value: Any) -> Text:
    name = str(getattr(value, "value", value))
    return Text(name, style=PRIORITY_STYLES.get(name, ""))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def ago(value: str | None, now: datetime | None = None) -> str:
    """`value` (RFC 3339) relative to now: `12s ago`, `in 5m`, `-` when absent."""
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    text = span(abs(seconds))
    if abs(seconds) < 1:
        return "just now"
    return f"{text} ago" if seconds > 0 else f"in {text}"


def span(seconds: float) -> str:
    """A duration in its largest fitting unit: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def percent(progress: dict[str, Any] | None) -> str:
    if not progress or progress.get("percent") is None:
        return ""
    return f"{float(progress['percent']):.0f}%"


def dash(value: Any) -> str:
    return "-" if value is None or value == "" or value == [] else str(value)
