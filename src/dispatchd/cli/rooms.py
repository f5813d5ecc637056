"""`dispatchd room …`: the rooms' status, dispatching into a room and interrupting it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect
from dispatchd.cli.tasks import (
    finish,
    follow_live,
    parse_context,
    progress_text,
    split_values,
    task_line,
)
from dispatchd.client.models import Priority, Room

app = typer.Typer(
    help="List rooms, show one, dispatch work into a room and interrupt it.",
    no_args_is_help=True,
)


def _current(room: Room) -> Text:
    task = room.current_task
    if task is None:
        return Text("-")
    text = Text.assemble(output.state(task.status), " ", task.id, " ", task.title)
    progress = progress_text(task.progress)
    if progress:
        text.append(f"  {progress}")
    if task.question:
        text.append(f"  asks: {task.question}", style="magenta")
    return text


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    cursor: Annotated[str | None, typer.Option(help="Continue a listing.")] = None,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """The rooms with their agents' status, current task and last activity."""
    with connect(url, as_, token) as (client, _):
        page = client.list_rooms(limit=limit, cursor=cursor)
    if json_:
        output.emit_json(page)
        return
    console = output.stdout()
    if not page.items:
        console.print("no rooms")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "STATUS", "AGENTS", "PENDING", "ACTIVE", "CURRENT TASK"):
        table.add_column(column, no_wrap=column != "CURRENT TASK")
    for r in page.items:
        table.add_row(
            r.id,
            r.name,
            output.state(r.agent_status),
            ", ".join(r.agents) or "-",
            str(r.pending),
            output.ago(r.last_activity_at),
            _current(r),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", style="dim")


@app.command()
def show(
    room_id: Annotated[str, typer.Argument(metavar="ROOM")],
    history: Annotated[
        int, typer.Option(min=0, max=200, help="Recent tasks to show (people's output).")
    ] = 10,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """A room's status: its agents, current task, queue and recent tasks."""
    with connect(url, as_, token) as (client, _):
        room = client.get_room(room_id)
        recent = client.room_history(room_id, limit=history) if history and not json_ else None
    if json_:
        output.emit_json(room)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    status = output.state(room.agent_status)
    if room.status_reason:
        status.append(f" ({room.status_reason})")
    rows: list[tuple[str, Any]] = [
        ("id", room.id),
        ("name", room.name),
        ("workspace", output.dash(room.workspace)),
        ("status", status),
        ("agents", ", ".join(room.agents) or "-"),
        ("current task", _current(room)),
        ("pending", str(room.pending)),
        ("last activity", output.ago(room.last_activity_at)),
    ]
    for name, value in rows:
        grid.add_row(name, value)
    parts: list[Any] = [grid]
    if recent is not None and recent.tasks:
        tasks = Table(title="recent tasks", title_justify="left", box=None, header_style="bold")
        for column in ("ID", "STATE", "TITLE", "ASSIGNEE", "UPDATED"):
            tasks.add_column(column, no_wrap=column != "TITLE")
        for t in recent.tasks:
            tasks.add_row(
                t.id,
                output.state(t.status),
                t.title,
                output.dash(t.assignee),
                output.ago(t.updated_at),
            )
        parts += [Text(), tasks]
    output.stdout().print(Group(*parts))


@app.command()
def dispatch(
    room_id: Annotated[str, typer.Argument(metavar="ROOM")],
    prompt: Annotated[
        str, typer.Argument(metavar="PROMPT", help="What to do; '-' reads it from standard input.")
    ],
    title: Annotated[str | None, typer.Option(help="Default: the prompt's first line.")] = None,
    priority: Annotated[Priority | None, typer.Option(help="Default: medium.")] = None,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", "-c", help="Repeatable.")
    ] = None,
    depends_on: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    context: Annotated[str | None, typer.Option(help="A JSON object of context.")] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow the task until it ends; exit 1 unless it completed."),
    ] = False,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Create a task of the room from a prompt; only the room's agents take it."""
    body = parse_context(context)
    text = sys.stdin.read() if prompt == "-" else prompt
    with connect(url, as_, token) as (client, _):
        task = client.dispatch(
            room_id,
            text,
            title=title,
            priority=priority,
            capabilities=split_values(capability),
            depends_on=split_values(depends_on),
            context=body,
        )
        if not json_:
            task_line(task, "dispatched")
        elif not wait:
            output.emit_json(task)
        if wait:
            finish(follow_live(client, task.id, json_), json_)


@app.command()
def interrupt(
    room_id: Annotated[str, typer.Argument(metavar="ROOM")],
    reason: Annotated[str | None, typer.Option(help="Told to the room's agents.")] = None,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Cancel the room's work in its agents' hands (admin)."""
    with connect(url, as_, token) as (client, _):
        cancelled = client.interrupt_room(room_id, reason)
    if json_:
        output.emit_json({"cancelled": cancelled})
    elif cancelled:
        output.stdout().print(f"interrupted {room_id}: cancelled {', '.join(cancelled)}")
    else:
        output.stdout().print(f"interrupted {room_id}: nothing was running")
