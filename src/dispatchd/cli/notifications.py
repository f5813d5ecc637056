"""`dispatchd notifications`: what people should hear of (failures, questions, digests)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect
from dispatchd.cli.events import summary


def notifications(
    after: Annotated[str | None, typer.Option(help="The id of the last notification seen.")] = None,
    unacknowledged: Annotated[
        bool, typer.Option("--unacknowledged", help="Only those nobody acknowledged.")
    ] = False,
    ack: Annotated[
        bool, typer.Option("--ack", help="Acknowledge the notifications shown.")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            min=0, max=60, help="Seconds to wait for a notification when there is none yet."
        ),
    ] = 0.0,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Failures, timeouts, escalations and questions, and digests of completions and
    progress, oldest first: all of them with the admin token, else those of your tasks."""
    with connect(url, as_, token) as (client, _):
        page = client.list_notifications(
            after, limit=limit, unacknowledged=unacknowledged, wait_s=wait
        )
        if ack and page.items:
            client.ack_notifications(up_to=page.items[-1].id)
    if json_:
        output.emit_json(page)
        return
    console = output.stdout()
    if page.items:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("ID", "KIND", "TASK", "WHEN", "WHAT"):
            table.add_column(column, no_wrap=column != "WHAT")
        for n in page.items:
            kind = output.state(n.kind)
            if n.acknowledged_at is None:
                kind.stylize("bold")
            table.add_row(
                n.id, kind, output.dash(n.task_id), output.ago(n.created_at), _what(n.data)
            )
        console.print(table)
    else:
        console.print("no notifications")
    if page.open_digest is not None:
        d = page.open_digest
        console.print(
            f"collecting a digest until {d.closes_at} ({output.ago(d.closes_at)})", style="dim"
        )
    console.print(f"next: --after {page.next_cursor}", style="dim")


def _what(data: dict[str, Any]) -> str:
    message = data.get("message")
    return message if isinstance(message, str) and message else summary(data, 60)
