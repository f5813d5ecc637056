"""`dispatchd worker -- <agent command>`: run any command-line agent as a worker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dispatchd import logs

WORKER_HELP = (
    "Run a command-line agent as a worker.\n\n"
    "Everything after -- is the agent's command; {prompt}, {id}, {title}, {model} and "
    "{feedback} in it are filled in from the task (the prompt is appended when {prompt} is "
    "absent). Each task runs the command in its own process group, with DISPATCH_URL (a local "
    "API scoped to the task), DISPATCH_TASK_ID and DISPATCH_RESULT_FILE in its environment."
    "\n\nWith --review the worker is a reviewer: it takes review tasks (those needing its "
    "capabilities, and those naming it as reviewer) and the command's output must say "
    "`VERDICT: APPROVED` or `VERDICT: REJECTED`, with the feedback after `NOTES:`."
    "\n\nExample: dispatchd worker -c code --timeout 600 -- claude -p {prompt}"
)


def worker(
    command: Annotated[
        list[str], typer.Argument(metavar="COMMAND", help="The agent's command, after `--`.")
    ],
    url: Annotated[
        str, typer.Option(envvar="DISPATCH_API_URL", help="The broker's API address.")
    ] = "http://127.0.0.1:8600",
    agent_id: Annotated[
        str | None,
        typer.Option(
            "--agent-id",
            envvar="DISPATCH_AGENT_ID",
            help="The agent's id (default: <command>@<host>; give one per worker on a host).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="DISPATCH_AGENT_TOKEN", help="The agent token, when required."),
    ] = None,
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", "-c", help="A capability to take (repeatable)."),
    ] = None,
    max_concurrent: Annotated[
        int, typer.Option("--max-concurrent", min=1, help="Agents running at once.")
    ] = 3,
    timeout: Annotated[
        float | None,
        typer.Option(min=0.1, help="Seconds before an agent is stopped (TERM, 5 s, KILL)."),
    ] = None,
    grace: Annotated[float, typer.Option(min=0, help="Seconds between TERM and KILL.")] = 5.0,
    stop_grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds running agents get to finish on SIGTERM."),
    ] = 30.0,
    output_cap: Annotated[
        int, typer.Option(min=1024, help="Bytes of each output stream kept for the result.")
    ] = 64 * 1024,
    progress_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between progress reports of the output.")
    ] = 2.0,
    adapter: Annotated[str, typer.Option(help="auto, generic or claude.")] = "auto",
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Review tasks only; the command's VERDICT:/NOTES: lines give the verdict.",
        ),
    ] = False,
    cwd: Annotated[Path | None, typer.Option(help="Working directory of the agents.")] = None,
    owner: Annotated[str | None, typer.Option(help="The agent's owner.")] = None,
    room: Annotated[str | None, typer.Option(help="The agent's room.")] = None,
    board: Annotated[
        Path | None,
        typer.Option(help="A JSON board file whose ready cards become tasks for this worker."),
    ] = None,
    board_queue: Annotated[
        list[str] | None,
        typer.Option(help="A board queue to watch for ready cards (repeatable; default Todo)."),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="DISPATCH_LOG_LEVEL")] = "info",
) -> None:
    from dispatchd.client import AsyncClient
    from dispatchd.runner.adapters import ClaudeCode, PassThrough
    from dispatchd.runner.board import BoardSync
    from dispatchd.runner.board_json import JsonFileBoard
    from dispatchd.runner.runner import Runner, default_agent_id

    if not command:
        raise typer.BadParameter("give the agent's command after --", param_hint="COMMAND")
    chosen = {"auto": None, "generic": PassThrough(), "claude": ClaudeCode()}
    if adapter not in chosen:
        raise typer.BadParameter("choose auto, generic or claude", param_hint="--adapter")
    logs.configure(log_level, "text")
    if log_level.lower() != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    capabilities = capability or []
    agent = agent_id or default_agent_id(command)
    client = AsyncClient(url, agent_id=agent, token=token)
    boards = []
    if board is not None:
        queues = {q: capabilities for q in board_queue or ["Todo"]}
        boards.append(BoardSync(client, JsonFileBoard(board), queues=queues))
    runner = Runner(
        command[:1],
        client=client,
        agent_id=agent,
        adapter=chosen[adapter],
        boards=boards,
        max_concurrent_agents=max_concurrent,
        agent_timeout=timeout,
        owner=owner,
        room=room,
        kill_grace_s=grace,
        stop_grace_s=stop_grace,
        output_cap=output_cap,
        progress_interval_s=progress_interval,
        cwd=cwd,
    )
    runner.add_route(capabilities=capabilities, args=command[1:], review=review)
    what = "reviews" if review else "tasks"
    logging.getLogger(__name__).info(
        "worker %s taking %s for %s", agent, what, capabilities or "any capability"
    )
    runner.run()
