"""`dispatchd task …`: create, list, show, cancel, retry and wait for tasks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from dispatchd.cli import output
from dispatchd.cli.connect import AsOption, JsonOption, TokenOption, UrlOption, connect
from dispatchd.client import Client
from dispatchd.client.models import Priority, Task, TaskDetail, TaskStatus

app = typer.Typer(
    help="Create, list, show, cancel, retry and wait for tasks.", no_args_is_help=True
)

END_STATES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)
# The longest wait of one long-poll read of the event log while following a task.
LONG_POLL_S = 30.0


def parse_context(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--context") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("give a JSON object", param_hint="--context")
    return value


def split_values(values: list[str] | None) -> list[str]:
    """Repeated options, each of which may also hold a comma-separated list."""
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


@app.command()
def create(
    title: Annotated[str, typer.Argument(metavar="TITLE", help="The task's title.")],
    prompt: Annotated[
        str | None, typer.Option(help="What to do, in full; '-' reads it from standard input.")
    ] = None,
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", "-c", help="A capability the task needs (repeatable)."),
    ] = None,
    priority: Annotated[Priority | None, typer.Option(help="Default: medium.")] = None,
    room: Annotated[
        str | None, typer.Option(help="The room the task belongs to (its scope).")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="A label (repeatable).")] = None,
    assigned_to: Annotated[str | None, typer.Option(help="The agent to give it to.")] = None,
    timeout: Annotated[
        int | None, typer.Option(min=1, help="Seconds an attempt may run before it times out.")
    ] = None,
    context: Annotated[str | None, typer.Option(help="A JSON object of context.")] = None,
    depends_on: Annotated[
        list[str] | None, typer.Option(help="A task that must complete first (repeatable).")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(min=1)] = None,
    review: Annotated[bool, typer.Option(help="Have the result reviewed.")] = False,
    reviewer: Annotated[str | None, typer.Option(help="Reviewing agent or capability.")] = None,
    model: Annotated[str | None, typer.Option(help="The model to run it with.")] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Repeats with the same key return the same task.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow the task until it ends; exit 1 unless it completed."),
    ] = False,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Create a task."""
    body = parse_context(context)
    text = sys.stdin.read() if prompt == "-" else prompt
    with connect(url, as_, token) as (client, _):
        task = client.create_task(
            title,
            prompt=text or "",
            capabilities=split_values(capability),
            priority=priority,
            scope=room,
            labels=split_values(label),
            assigned_to=assigned_to,
            timeout_s=timeout,
            context=body,
            depends_on=split_values(depends_on),
            max_attempts=max_attempts,
            review=review or None,
            reviewer=reviewer,
            model=model,
            owner=owner,
            idempotency_key=idempotency_key,
        )
        if not wait:
            if json_:
                output.emit_json(task)
            else:
                task_line(task, "created")
            return
        if not json_:
            task_line(task, "created")
        finish(follow_live(client, task.id, json_), json_)


@app.command("list")
def list_(
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="States to show (repeatable or comma-separated)."),
    ] = None,
    priority: Annotated[
        list[str] | None, typer.Option("--priority", "-p", help="Priorities to show.")
    ] = None,
    requester: Annotated[str | None, typer.Option()] = None,
    assignee: Annotated[str | None, typer.Option()] = None,
    room: Annotated[str | None, typer.Option(help="Tasks of this room (scope).")] = None,
    capability: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    label: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue a listing.")] = None,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    with connect(url, as_, token) as (client, _):
        page = client.list_tasks(
            limit=limit,
            cursor=cursor,
            status=split_values(status) or None,
            priority=split_values(priority) or None,
            requester=requester,
            assignee=assignee,
            scope=room,
            capability=capability,
            owner=owner,
            label=label,
        )
    if json_:
        output.emit_json(page)
        return
    console = output.stdout()
    if not page.items:
        console.print("no tasks")
        return
    console.print(task_table(page.items))
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", style="dim")


def task_table(tasks: list[Task]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PRIORITY", no_wrap=True)
    table.add_column("TITLE", max_width=60, overflow="ellipsis", no_wrap=True)
    table.add_column("ASSIGNEE", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True, justify="right")
    table.add_column("UPDATED", no_wrap=True)
    for t in tasks:
        table.add_row(
            t.id,
            output.state(t.status),
            output.priority(t.priority),
            t.title,
            output.dash(t.assignee),
            output.percent(t.progress),
            output.ago(t.updated_at),
        )
    return table


@app.command()
def show(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """A task with its attempts, progress and comments."""
    with connect(url, as_, token) as (client, _):
        task = client.get_task(task_id)
    if json_:
        output.emit_json(task)
        return
    output.stdout().print(detail(task))


def detail(t: TaskDetail) -> Group:
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", t.id),
        ("title", t.title),
        ("state", output.state(t.status)),
        ("priority", output.priority(t.priority)),
        ("requester", t.requester),
        ("assignee", output.dash(t.assignee)),
        ("room", output.dash(t.scope)),
        ("capabilities", ", ".join(t.capabilities) or "-"),
        ("labels", ", ".join(t.labels) or "-"),
        ("attempt", f"{t.attempt} of {t.max_attempts}"),
        ("created", f"{output.ago(t.created_at)} ({t.created_at})"),
        ("updated", output.ago(t.updated_at)),
    ]
    if t.model:
        rows.append(("model", t.model))
    if t.review_of:
        rows.append(("reviews task", t.review_of))
    if t.reviewer is not None:
        rows.append(("reviewer", t.reviewer.agent or f"capability {t.reviewer.capability}"))
    cost = _cost_text(t)
    if cost:
        rows.append(("cost", cost))
    if t.depends_on:
        rows.append(("depends on", ", ".join(t.depends_on)))
    if t.progress:
        rows.append(("progress", progress_text(t.progress)))
    if t.question:
        rows.append(("question", Text(t.question, style="magenta")))
    if t.summary:
        rows.append(("summary", t.summary))
    if t.result is not None:
        rows.append(("result", _json_text(t.result)))
    if t.error:
        rows.append(("error", Text(t.error, style="red")))
    if t.context:
        rows.append(("context", _json_text(t.context)))
    if t.prompt:
        rows.append(("prompt", t.prompt))
    for name, value in rows:
        fields.add_row(name, value)
    parts: list[Any] = [fields]
    if t.attempts:
        attempts = Table(title="attempts", title_justify="left", box=None, header_style="bold")
        for column in ("#", "AGENT", "OUTCOME", "ASSIGNED", "ENDED", "ERROR"):
            attempts.add_column(column)
        for a in t.attempts:
            attempts.add_row(
                str(a.number),
                a.agent_id,
                output.state(a.outcome) if a.outcome else Text("current", style="blue"),
                output.ago(a.assigned_at),
                output.ago(a.ended_at),
                output.dash(a.error),
            )
        parts += [Text(), attempts]
    if t.progress_log:
        progress = Table(title="progress", title_justify="left", box=None, header_style="bold")
        for column in ("WHEN", "ATTEMPT", "PERCENT", "MESSAGE"):
            progress.add_column(column)
        for p in t.progress_log:
            progress.add_row(
                output.ago(p.created_at),
                str(p.attempt),
                "" if p.percent is None else f"{p.percent:.0f}%",
                output.dash(p.message),
            )
        parts += [Text(), progress]
    if t.comments:
        comments = Table(title="comments", title_justify="left", box=None, header_style="bold")
        for column in ("WHEN", "AUTHOR", "COMMENT"):
            comments.add_column(column)
        for c in t.comments:
            comments.add_row(output.ago(c.created_at), c.author, c.body)
        parts += [Text(), comments]
    if t.reviews:
        reviews = Table(title="reviews", title_justify="left", box=None, header_style="bold")
        for column in ("WHEN", "CYCLE", "REVIEWER", "VERDICT", "FEEDBACK"):
            reviews.add_column(column)
        for r in t.reviews:
            verdict = Text(r.verdict, style="green" if r.verdict == "approved" else "red")
            reviews.add_row(
                output.ago(r.created_at), str(r.cycle), r.reviewer, verdict, output.dash(r.feedback)
            )
        parts += [Text(), reviews]
    return Group(*parts)


def _cost_text(t: Task) -> str:
    parts = []
    if t.cost.usd or t.cost.input_tokens or t.cost.output_tokens:
        parts.append(
            f"${t.cost.usd:.4f} ({t.cost.input_tokens} in, {t.cost.output_tokens} out tokens)"
        )
    if t.max_cost_usd is not None:
        parts.append(f"budget ${t.max_cost_usd:.2f}")
    return ", ".join(parts)


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 2000 else text[:2000] + " …"


def progress_text(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    parts = [output.percent(progress), progress.get("message") or ""]
    return " ".join(p for p in parts if p)


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(help="Why, kept with the task.")] = None,
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Cancel a task (its requester or an admin)."""
    with connect(url, as_, token) as (client, _):
        task = client.cancel_task(task_id, reason)
    if json_:
        output.emit_json(task)
    else:
        task_line(task, "cancelled")


@app.command()
def retry(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Put a failed, timed-out or cancelled task back in the queue."""
    with connect(url, as_, token) as (client, _):
        task = client.retry_task(task_id)
    if json_:
        output.emit_json(task)
    else:
        task_line(task, "queued again")


@app.command()
def wait(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    as_: AsOption = None,
    token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Follow a task until it ends; exit 0 when it completed, 1 when it ended otherwise."""
    with connect(url, as_, token) as (client, _):
        finish(follow_live(client, task_id, json_), json_)


def task_line(task: Task, verb: str) -> None:
    line = Text.assemble(
        (f"{verb} ", "bold"), task.id, "  ", output.state(task.status), "  ", task.title
    )
    output.stdout().print(line)


def _status_line(task: Task) -> Text:
    line = Text.assemble(output.state(task.status), "  ", task.id)
    progress = progress_text(task.progress)
    if progress:
        line.append(f"  {progress}")
    if task.question:
        line.append(f"  asks: {task.question}", style="magenta")
    if task.assignee:
        line.append(f"  ({task.assignee})", style="dim")
    return line


def follow_live(client: Client, task_id: str, json_: bool) -> TaskDetail:
    """Wait for the task to end, showing its state as it changes: a live line with a
    spinner on a terminal, one line per change on standard error otherwise, nothing
    with `--json`."""
    if json_:
        return follow(client, task_id, lambda task: None)
    err = output.stderr()
    if not err.is_terminal:
        last: list[str] = []

        def report(task: Task) -> None:
            line = _status_line(task)
            if not last or last[-1] != line.plain:  # a comment changes nothing shown
                last.append(line.plain)
                err.print(line)

        return follow(client, task_id, report)
    spinner = Spinner("dots", text=Text("waiting…"))
    with Live(spinner, console=err, transient=True, refresh_per_second=12):

        def update(task: Task) -> None:
            spinner.update(text=_status_line(task))

        return follow(client, task_id, update)


# The state an event leaves its task in: shown even when the task has moved on by the time
# it is read (a review approved at once, a start followed by a quick completion).
STATE_AFTER = {
    "task.assigned": TaskStatus.ASSIGNED,
    "task.started": TaskStatus.RUNNING,
    "task.waiting_input": TaskStatus.WAITING_INPUT,
    "task.review_requested": TaskStatus.REVIEW,
}


def follow(client: Client, task_id: str, on_change: Callable[[Task], None]) -> TaskDetail:
    """Read the task's events as they come (long-poll, no polling loop) until it ends;
    `on_change` sees each new version of it, and each state its events passed through."""
    # The log's head before the task: a change between the two reads is then seen.
    cursor = client.read_events("latest", limit=1).next_cursor
    task = client.get_task(task_id)
    on_change(task)
    while task.status not in END_STATES:
        page = client.read_events(cursor, task=task_id, wait_s=LONG_POLL_S, limit=500)
        cursor = page.next_cursor
        if not page.events:
            continue
        events = list(page.events)
        latest = client.get_task(task_id)
        # Ended since: its events not read yet (a review it went through on the way, say)
        # are read first, so that the states it passed through come before its end.
        while latest.status in END_STATES:
            page = client.read_events(cursor, task=task_id, limit=500)
            if not page.events:
                break
            events.extend(page.events)
            cursor = page.next_cursor
        shown = task.status
        for event in events:
            state = STATE_AFTER.get(event.type)
            if state is not None and state not in (shown, latest.status):
                on_change(latest.model_copy(update={"status": state}))
                shown = state
        task = latest
        on_change(task)
    return task


def finish(task: TaskDetail, json_: bool) -> None:
    if json_:
        output.emit_json(task)
    else:
        console = output.stdout()
        console.print(Text.assemble(output.state(task.status), "  ", task.id, "  ", task.title))
        if task.summary:
            console.print(task.summary)
        elif task.result is not None:
            console.print(_json_text(task.result))
        if task.error:
            console.print(Text(task.error, style="red"))
    if task.status != TaskStatus.COMPLETED:
        raise typer.Exit(int(output.Exit.TASK_NOT_COMPLETED))
