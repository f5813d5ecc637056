"""`dispatchd agent …`: the fleet, one agent, and draining."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect
from dispatchd.client.models import Agent

app = typer.Typer(help="List, show, drain and undrain agents.", no_args_is_help=True)


def availability(agent: Agent) -> Text:
    """The agent's status, and `draining` beside it when it takes no new tasks."""
    text = output.state(agent.status)
    if agent.draining:
        text.append(" ")
        text.append_text(output.state("draining"))
    return text


def load(agent: Agent) -> str:
    active = "?" if agent.active_tasks is None else str(agent.active_tasks)
    limit = "∞" if agent.max_concurrent is None else str(agent.max_concurrent)
    return f"{active}/{limit}"


def capabilities(agent: Agent) -> str:
    return ", ".join(
        name if weight == 1 else f"{name}:{weight:g}"
        for name, weight in sorted(agent.capabilities.items())
    )


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only agents in this status.")] = None,
    capability: Annotated[str | None, typer.Option()] = None,
    room: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    cursor: Annotated[str | None, typer.Option(help="Continue a listing.")] = None,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """The agents with their availability and load (admin)."""
    with connect(url, as_, token) as (client, _):
        page = client.list_agents(
            limit=limit,
            cursor=cursor,
            status=status,
            capability=capability,
            room=room,
            owner=owner,
        )
    if json_:
        output.emit_json(page)
        return
    console = output.stdout()
    if not page.items:
        console.print("no agents")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "STATUS", "LOAD", "CAPABILITIES", "ROOM", "LAST HEARD"):
        table.add_column(column, no_wrap=column != "CAPABILITIES")
    for a in page.items:
        table.add_row(
            a.id,
            availability(a),
            load(a),
            capabilities(a) or "-",
            output.dash(a.room),
            output.ago(a.last_heartbeat_at),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", style="dim")


def _detail(a: Agent) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", a.id),
        ("status", availability(a)),
        ("load", load(a)),
        ("capabilities", capabilities(a) or "-"),
        ("room", output.dash(a.room)),
        ("owner", output.dash(a.owner)),
        ("model", output.dash(a.dispatch_model)),
        ("description", output.dash(a.description)),
        ("last heard", output.ago(a.last_heartbeat_at)),
        ("registered", output.ago(a.created_at)),
    ]
    for name, value in rows:
        grid.add_row(name, value)
    return grid


@app.command()
def show(
    agent_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """One agent: capabilities, load against its limit, availability, room."""
    with connect(url, as_, token) as (client, _):
        agent = client.get_agent(agent_id)
    if json_:
        output.emit_json(agent)
    else:
        output.stdout().print(_detail(agent))


@app.command()
def drain(
    agent_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Give the agent no new tasks; what it holds runs to the end (admin)."""
    with connect(url, as_, token) as (client, _):
        agent = client.drain_agent(agent_id)
    _changed(agent, "drained", json_)


@app.command()
def undrain(
    agent_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Give the agent new tasks again (admin)."""
    with connect(url, as_, token) as (client, _):
        agent = client.undrain_agent(agent_id)
    _changed(agent, "undrained", json_)


def _changed(agent: Agent, verb: str, json_: bool) -> None:
    if json_:
        output.emit_json(agent)
        return
    line = Text.assemble((f"{verb} ", "bold"), agent.id, "  ", availability(agent))
    line.append(f"  load {load(agent)}")
    output.stdout().print(line)
