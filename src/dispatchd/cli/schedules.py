"""`dispatchd schedule …`: cron schedules that fire tasks from a template (admin)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect
from dispatchd.cli.tasks import parse_context, split_values, task_line
from dispatchd.client.models import Priority, Schedule, ScheduleDetail

app = typer.Typer(
    help="Create, list, show, pause, resume, run and remove cron schedules.",
    no_args_is_help=True,
)


def _state(schedule: Schedule) -> Text:
    return output.state("paused" if schedule.paused else "active")


def _template(
    raw: str | None,
    title: str | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """The task template: `--template` (a JSON object) with the task options over it."""
    template: dict[str, Any] = {}
    if raw is not None:
        try:
            template = json.loads(raw)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--template") from None
        if not isinstance(template, dict):
            raise typer.BadParameter("give a JSON object", param_hint="--template")
    if title is not None:
        template["title"] = title
    template.update({k: v for k, v in fields.items() if v not in (None, [], {})})
    if "title" not in template:
        raise typer.BadParameter("give the fired tasks a --title (or one in --template)")
    return template


@app.command()
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.")],
    cron: Annotated[
        str, typer.Argument(metavar="CRON", help="Five cron fields or a macro such as @daily.")
    ],
    title: Annotated[str | None, typer.Option(help="The title of the tasks fired.")] = None,
    prompt: Annotated[str | None, typer.Option()] = None,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", "-c", help="Repeatable.")
    ] = None,
    priority: Annotated[Priority | None, typer.Option()] = None,
    room: Annotated[str | None, typer.Option(help="The room of the tasks fired.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    assigned_to: Annotated[str | None, typer.Option()] = None,
    timeout: Annotated[int | None, typer.Option(min=1, help="Each task's timeout_s.")] = None,
    context: Annotated[str | None, typer.Option(help="A JSON object of context.")] = None,
    template: Annotated[
        str | None, typer.Option(help="The whole task template as a JSON object.")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA time zone; default UTC.")] = None,
    misfire: Annotated[str | None, typer.Option(help="skip, latest or all.")] = None,
    overlap: Annotated[str | None, typer.Option(help="allow, skip or cancel_previous.")] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Create a schedule that fires a task from a template on a cron expression."""
    body = _template(
        template,
        title,
        {
            "prompt": prompt,
            "capabilities": split_values(capability),
            "priority": priority.value if priority else None,
            "scope": room,
            "labels": split_values(label),
            "assigned_to": assigned_to,
            "timeout_s": timeout,
            "context": parse_context(context),
        },
    )
    with connect(url, as_, token) as (client, _):
        made = client.create_schedule(
            name,
            cron,
            body,
            timezone=timezone,
            misfire=misfire,
            overlap=overlap,
            paused=paused or None,
        )
    _changed(made, "created", json_)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    cursor: Annotated[str | None, typer.Option(help="Continue a listing.")] = None,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """The schedules with their next fire times."""
    with connect(url, as_, token) as (client, _):
        page = client.list_schedules(limit=limit, cursor=cursor)
    if json_:
        output.emit_json(page)
        return
    console = output.stdout()
    if not page.items:
        console.print("no schedules")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "CRON", "ZONE", "STATE", "NEXT", "LAST", "LAST TASK"):
        table.add_column(column, no_wrap=True)
    for s in page.items:
        table.add_row(
            s.id,
            s.name,
            s.schedule,
            s.timezone,
            _state(s),
            output.ago(s.next_fire_at) if not s.paused else "-",
            output.ago(s.last_fire_at),
            output.dash(s.last_task_id),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", style="dim")


def _detail(s: ScheduleDetail) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", s.id),
        ("name", s.name),
        ("cron", f"{s.schedule} ({s.timezone})"),
        ("state", _state(s)),
        ("next fire", f"{output.ago(s.next_fire_at)} ({output.dash(s.next_fire_at)})"),
        ("last fire", output.ago(s.last_fire_at)),
        ("last task", output.dash(s.last_task_id)),
        ("misfire", str(s.misfire)),
        ("overlap", str(s.overlap)),
        ("template", json.dumps(s.task_template, ensure_ascii=False)),
        ("created by", s.created_by),
    ]
    if s.preview:
        rows.append(("fires at", "\n".join(s.preview)))
    for name, value in rows:
        grid.add_row(name, value)
    return grid


@app.command()
def show(
    schedule_id: Annotated[str, typer.Argument(metavar="ID")],
    preview: Annotated[
        int, typer.Option(min=0, max=100, help="How many next fire times to show.")
    ] = 5,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """A schedule with its next fire times."""
    with connect(url, as_, token) as (client, _):
        found = client.get_schedule(schedule_id, preview=preview or None)
    if json_:
        output.emit_json(found)
    else:
        output.stdout().print(_detail(found))


@app.command()
def pause(
    schedule_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Stop firing until resumed."""
    with connect(url, as_, token) as (client, _):
        changed = client.pause_schedule(schedule_id)
    _changed(changed, "paused", json_)


@app.command()
def resume(
    schedule_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Fire again from the next fire time after now (what was missed is not fired)."""
    with connect(url, as_, token) as (client, _):
        changed = client.resume_schedule(schedule_id)
    _changed(changed, "resumed", json_)


@app.command()
def run(
    schedule_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Fire once now; prints the task made."""
    with connect(url, as_, token) as (client, _):
        task = client.run_schedule(schedule_id)
    if json_:
        output.emit_json(task)
    else:
        task_line(task, "fired")


@app.command()
def remove(
    schedule_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Delete a schedule; the tasks it fired stay."""
    with connect(url, as_, token) as (client, _):
        removed = client.delete_schedule(schedule_id)
    if json_:
        output.emit_json(removed)
    else:
        output.stdout().print(f"removed {removed.id}")


def _changed(schedule: Schedule, verb: str, json_: bool) -> None:
    if json_:
        output.emit_json(schedule)
        return
    line = Text.assemble((f"{verb} ", "bold"), schedule.id, "  ", schedule.name, "  ")
    line.append_text(_state(schedule))
    if not schedule.paused and schedule.next_fire_at:
        line.append(f"  next {output.ago(schedule.next_fire_at)}")
    output.stdout().print(line)
