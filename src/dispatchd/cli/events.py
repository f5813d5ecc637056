"""`dispatchd events watch`: the event log, one line per event as it happens."""

from __future__ import annotations

import json
import random
import time
from typing import Annotated, Any, TypedDict

import typer
from rich.text import Text

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect
from dispatchd.client import Client, TransportError
from dispatchd.client.models import Event

app = typer.Typer(help="Follow the event log.", no_args_is_help=True)


class Filters(TypedDict):
    types: str | None
    task: str | None
    room: str | None
    requester: str | None


# Waits between reconnections grow to this many seconds.
BACKOFF_CAP_S = 5.0

TYPE_STYLES = {
    "completed": "green",
    "approved": "green",
    "failed": "red bold",
    "timed_out": "red",
    "rejected": "red",
    "escalated": "red",
    "cancelled": "dim",
    "interrupted": "yellow",
    "waiting_input": "magenta bold",
    "review_requested": "magenta",
    "progress": "blue",
    "started": "blue",
    "assigned": "cyan",
    "created": "yellow",
    "drained": "yellow",
}


def summary(data: dict[str, Any], width: int = 80) -> str:
    """The event's data as `key=value` pairs, each value cut to `width` characters."""
    parts = []
    for key, value in data.items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text = output.one_line(text)
        if len(text) > width:
            text = text[: width - 1] + "…"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def line(event: Event) -> Text:
    when = output.parse_time(event.created_at)
    clock = when.strftime("%H:%M:%S") if when else event.created_at
    style = TYPE_STYLES.get(event.type.rsplit(".", 1)[-1], "")
    text = Text.assemble(
        (clock, "dim"), "  ", (f"{event.type:<22}", style), " ", event.task_id or "-"
    )
    if event.agent_id:
        text.append(f"  {event.agent_id}", style="cyan")
    detail = summary(event.data)
    if detail:
        text.append(f"  {detail}")
    return text


@app.command()
def watch(
    types: Annotated[
        str | None,
        typer.Option(
            "--types",
            "-t",
            help="Names (task.completed), globs (task.*) or families (agent), comma-separated.",
        ),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(help="Start after this event id (a cursor) instead of at the end of the log."),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only the events of this task.")] = None,
    room: Annotated[
        str | None, typer.Option(help="Only the events of this room and its tasks.")
    ] = None,
    requester: Annotated[
        str | None, typer.Option(help="Only the events of the tasks this requester created.")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Start at the oldest event kept.")
    ] = False,
    reconnect_for: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds to keep reconnecting after the broker is lost before giving up."
        ),
    ] = 300.0,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Print each event as it happens (one JSON object per line with --json). A lost
    connection is resumed where it left off."""
    with connect(url, as_, token) as (client, target):
        # The log's head is read first: a broker that is not there fails the command at
        # once, and a reconnection before the first event resumes from here.
        head = client.read_events("latest", limit=1).next_cursor
        cursor: str | None = None if from_start else (after or head)
        filters = Filters(types=types, task=task, room=room, requester=requester)
        _follow(client, target.url, cursor, filters, reconnect_for, json_)


def _follow(
    client: Client,
    url: str,
    cursor: str | None,
    filters: Filters,
    reconnect_for: float,
    json_: bool,
) -> None:
    console = output.stdout()
    err = output.stderr()
    lost_since: float | None = None
    retry = 0
    while True:
        try:
            for event in client.stream_events(cursor, **filters):
                if lost_since is not None:
                    err.print("reconnected", style="green")
                    lost_since, retry = None, 0
                cursor = event.id
                if json_:
                    output.emit_json(event)
                else:
                    console.print(line(event))
                    console.file.flush()
        except TransportError:
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
                where = f"after {cursor}" if cursor else "from the start"
                err.print(f"connection to {url} lost; reconnecting ({where})", style="yellow")
            if now - lost_since >= reconnect_for:
                raise
            time.sleep(random.uniform(0.5, min(BACKOFF_CAP_S, 0.5 * 2**retry)))
            retry += 1
