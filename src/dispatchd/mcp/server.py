"""The control-plane toolset over MCP (SPEC §6): an LLM sees the rooms, dispatches work,
follows it, answers the agents' questions and interrupts rooms, through these tools alone.

The server is a client of the broker's HTTP API (the SDK's `AsyncClient`); it never
touches the store. `connect` gives the client for one tool call: over stdio, one client
with the identity `dispatchd mcp` was started with; over HTTP (`/mcp` of `dispatchd
serve`), a client carrying the calling MCP client's own token and agent id.

Every tool answers a structured result (its output schema) and, as text, a short summary
line followed by the same result as JSON, for clients that read only text. A failure of
the API becomes a tool error carrying the API's message; nothing a caller sends stops the
server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from dispatchd import __version__
from dispatchd.client import AsyncClient
from dispatchd.client.errors import ApiError, ClientError, TransportError
from dispatchd.client.models import Task
from dispatchd.mcp import views
from dispatchd.mcp.views import (
    Interrupted,
    Notifications,
    RoomHistory,
    RoomList,
    RoomStatus,
    TaskAnswer,
    TaskCheck,
    TaskListView,
)

Connect = Callable[[Context], AbstractAsyncContextManager[AsyncClient]]

# One long-poll of the broker's event log while check_task waits (the API allows 60 s).
POLL_SLICE_S = 25.0
# An empty long-poll answered this much before its wait ran out was cut short.
EARLY_S = 1.0
MAX_WAIT_S = 300.0
# Statuses a task can be in when check_task has nothing more to wait for.
FINAL = frozenset({"completed", "failed", "timed_out", "cancelled"})

INSTRUCTIONS = """\
dispatchd runs work for a fleet of AI agents, each living in a room (a workspace such as
#infra at ~/ops/servers). You orchestrate; the agents execute. Start with list_rooms.
Work is asynchronous: dispatch_task answers at once with a task id; follow it with
check_task (wait_s lets you wait for a change without polling) or get_notifications
(failures and questions arrive at once, completions and progress in batched digests).
When a room is waiting_input, its agent asked a question: relay it to the user and answer
with answer_question. interrupt_room stops a room's work."""

RoomId = Annotated[
    str, Field(min_length=1, max_length=128, description="the room's id, e.g. infra")
]
TaskId = Annotated[str, Field(min_length=1, max_length=128, description="the task's id")]
PriorityName = Literal["critical", "high", "medium", "low"]
StatusName = Literal[
    "pending",
    "blocked",
    "assigned",
    "running",
    "waiting_input",
    "review",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
]


def _api_message(exc: ApiError) -> str:
    """The API's own message, with the validation errors it names."""
    text = f"{exc.message} ({exc.status} {exc.code})"
    errors = exc.details.get("errors")
    if isinstance(errors, list) and len(errors) > 1:
        more = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body')}: {e.get('msg')}"
            for e in errors[1:5]
            if isinstance(e, dict)
        )
        text += f"; also {more}"
    return text


def reply(model: BaseModel, summary: str) -> CallToolResult:
    """The tool's result: the summary line and the JSON as text, the model as structure."""
    data = model.model_dump(mode="json")
    return CallToolResult(
        content=[
            TextContent(type="text", text=summary),
            TextContent(type="text", text=json.dumps(data, ensure_ascii=False)),
        ],
        structured_content=data,
    )


def first_line(prompt: str) -> str:
    for line in prompt.splitlines():
        if line.strip():
            return views.cut(line.strip(), 200)
    return "task"


def _status_of(task: Task) -> str:
    return str(task.status)


class ControlPlane(MCPServer[Any]):
    """An MCP server whose tools refuse arguments they do not take. (The SDK drops them
    silently: an LLM's `rooom="infra"` would dispatch an unscoped task instead of telling
    it about the typo.)"""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = next((t for t in await self.list_tools() if t.name == name), None)
        if tool is not None:
            known = set(tool.input_schema.get("properties") or {})
            unknown = sorted(set(arguments) - known)
            if unknown:
                raise ToolError(
                    f"{name} has no argument {', '.join(map(repr, unknown))}; "
                    f"its arguments are {', '.join(sorted(known)) or 'none'}"
                )
        return await super().call_tool(name, arguments, context)


def build_server(connect: Connect, *, name: str = "dispatchd") -> MCPServer[Any]:
    """The MCP server with the control-plane tools, each calling the broker through the
    client `connect` gives for the call."""
    server = ControlPlane(name, instructions=INSTRUCTIONS, version=__version__)

    @asynccontextmanager
    async def broker(ctx: Context) -> AsyncIterator[AsyncClient]:
        try:
            async with connect(ctx) as client:
                yield client
        except ApiError as exc:
            raise ToolError(_api_message(exc)) from exc
        except TransportError as exc:
            raise ToolError(f"the dispatchd broker could not be reached: {exc}") from exc
        except ClientError as exc:
            raise ToolError(str(exc)) from exc

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(
        description=(
            "List every room (an agent's workspace) with what it is doing: agent_status "
            "(idle, working, waiting_input, error), its current task with progress or the "
            "question it asks, its last activity and how many tasks are queued. Start here "
            "to answer 'what is happening across my projects?'."
        ),
        annotations=read_only,
    )
    async def list_rooms(ctx: Context) -> Annotated[CallToolResult, RoomList]:
        async with broker(ctx) as client:
            found = [room async for room in client.iter_rooms()]
        rooms = [views.room_view(r.model_dump(mode="json")) for r in found]
        summary = views.rooms_summary(rooms)
        return reply(RoomList(rooms=rooms, summary=summary), summary)

    @server.tool(
        description=(
            "The status of one room: its agents, agent_status, the current task (with its "
            "progress, or the question it waits on), last activity and queued tasks."
        ),
        annotations=read_only,
    )
    async def get_room_status(room: RoomId, ctx: Context) -> Annotated[CallToolResult, RoomStatus]:
        async with broker(ctx) as client:
            found = await client.get_room(room)
        view = views.room_view(found.model_dump(mode="json"))
        return reply(RoomStatus(room=view, summary=view.line), view.line)

    @server.tool(
        description=(
            "A room's recent history, newest first: its tasks with their outcomes (results, "
            "errors) and the room's events such as interruptions."
        ),
        annotations=read_only,
    )
    async def read_room_history(
        room: RoomId,
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=200, description="how many entries at most")] = 20,
    ) -> Annotated[CallToolResult, RoomHistory]:
        async with broker(ctx) as client:
            found = await client.room_history(room, limit=limit)
        result = views.history(room, found.model_dump(mode="json"), limit)
        return reply(result, result.summary)

    @server.tool(
        description=(
            "Dispatch work: create a task from a prompt. With `room`, the task goes to that "
            "room's agent; without, to any agent with the `capabilities`. Answers at once "
            "with the task (its id); follow it with check_task or get_notifications. "
            "`depends_on` (task ids) holds the task until they all complete; their results "
            "then reach it in context.inputs (e.g. 'when research is done, summarize')."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    async def dispatch_task(
        prompt: Annotated[str, Field(min_length=1, description="what the agent should do")],
        ctx: Context,
        room: Annotated[
            str | None, Field(max_length=128, description="the room to run it in")
        ] = None,
        title: Annotated[
            str | None,
            Field(max_length=500, description="short title; default: the prompt's first line"),
        ] = None,
        priority: PriorityName | None = None,
        depends_on: Annotated[
            list[str] | None, Field(description="task ids that must complete first")
        ] = None,
        capabilities: Annotated[
            list[str] | None, Field(description="capability tags the agent must have")
        ] = None,
    ) -> Annotated[CallToolResult, TaskAnswer]:
        async with broker(ctx) as client:
            if room is not None:
                task = await client.dispatch(
                    room,
                    prompt,
                    title=title,
                    priority=priority,
                    depends_on=depends_on or (),
                    capabilities=capabilities or (),
                )
            else:
                task = await client.create_task(
                    title or first_line(prompt),
                    prompt=prompt,
                    priority=priority,
                    depends_on=depends_on or (),
                    capabilities=capabilities or (),
                )
        view = views.task_view(task.model_dump(mode="json"))
        where = f" to {room}" if room else ""
        summary = f"dispatched{where}: {views.task_line(view, room=False)}"
        return reply(TaskAnswer(task=view, summary=summary), summary)

    @server.tool(
        description=(
            "Check a task: its status, progress, question, result or error. With wait_s, "
            "wait up to that many seconds for its status to change (it answers the moment "
            "it does), instead of calling again and again; a finished task answers at once."
        ),
        annotations=read_only,
    )
    async def check_task(
        task_id: TaskId,
        ctx: Context,
        wait_s: Annotated[
            float, Field(ge=0, le=MAX_WAIT_S, description="seconds to wait for a change (0: now)")
        ] = 0.0,
    ) -> Annotated[CallToolResult, TaskCheck]:
        started = anyio.current_time()
        async with broker(ctx) as client:
            before, after = await _wait_for_change(client, task_id, wait_s)
        waited = anyio.current_time() - started
        view = views.task_view(after.model_dump(mode="json"))
        changed = _status_of(after) != _status_of(before)
        summary = views.task_line(view)
        if wait_s > 0 and not changed and view.status not in FINAL:
            summary += f" (no change in {round(waited)}s)"
        check = TaskCheck(
            task=view,
            changed=changed,
            previous_status=_status_of(before),
            waited_s=round(waited, 3),
            summary=summary,
        )
        return reply(check, summary)

    @server.tool(
        description=(
            "Interrupt a room: cancel its active work (assigned, running or waiting for "
            "input); its agent's process is stopped. Answers the ids of the cancelled tasks."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    )
    async def interrupt_room(
        room: RoomId,
        ctx: Context,
        reason: Annotated[
            str | None, Field(max_length=2000, description="why, for the record")
        ] = None,
    ) -> Annotated[CallToolResult, Interrupted]:
        async with broker(ctx) as client:
            cancelled = await client.interrupt_room(room, reason=reason)
        ids = [str(i) for i in cancelled]
        summary = (
            f"{room}: interrupted, cancelled {', '.join(ids)}"
            if ids
            else f"{room}: nothing was running"
        )
        return reply(Interrupted(room=room, cancelled=ids, summary=summary), summary)

    @server.tool(
        description=(
            "List tasks, newest first, optionally only those with a status (one or several) "
            "or in a room."
        ),
        annotations=read_only,
    )
    async def list_tasks(
        ctx: Context,
        status: StatusName | list[StatusName] | None = None,
        room: Annotated[
            str | None, Field(max_length=128, description="only this room's tasks")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="how many tasks at most")] = 20,
    ) -> Annotated[CallToolResult, TaskListView]:
        statuses = [status] if isinstance(status, str) else status
        async with broker(ctx) as client:
            if room is not None:
                page = await client.list_tasks(limit=limit, status=statuses, scope=room)
            else:
                page = await client.list_tasks(limit=limit, status=statuses)
        tasks = [views.task_view(t.model_dump(mode="json")) for t in page.items]
        summary = "\n".join(views.task_line(t) for t in tasks) if tasks else "no tasks"
        result = TaskListView(tasks=tasks, next_cursor=page.next_cursor, summary=summary)
        return reply(result, summary)

    @server.tool(
        description=(
            "Answer the question an agent asked (its task is waiting_input): give the task_id, "
            "or the room whose task waits for input. The agent receives the answer and runs on."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    async def answer_question(
        answer: Annotated[str, Field(min_length=1, max_length=20_000, description="the reply")],
        ctx: Context,
        task_id: Annotated[
            str | None, Field(max_length=128, description="the waiting task")
        ] = None,
        room: Annotated[
            str | None, Field(max_length=128, description="the room whose task is waiting")
        ] = None,
    ) -> Annotated[CallToolResult, TaskAnswer]:
        if (task_id is None) == (room is None):
            raise ToolError("give either task_id or room (exactly one of the two arguments)")
        async with broker(ctx) as client:
            target = task_id if task_id is not None else await _waiting_task(client, str(room))
            task = await client.provide_input(target, answer)
        view = views.task_line(views.task_view(task.model_dump(mode="json")))
        summary = f"answered {target}: {view}"
        return reply(
            TaskAnswer(task=views.task_view(task.model_dump(mode="json")), summary=summary), summary
        )

    @server.tool(
        description=(
            "News for the user since the cursor `after`: failures, timeouts, escalations and "
            "questions each at once; completions and progress batched into digests (the one "
            "still gathering is `open_digest`). Pass the answer's next_cursor as `after` next "
            "time; with wait_s, wait up to that long for news when there is none."
        ),
        annotations=read_only,
    )
    async def get_notifications(
        ctx: Context,
        after: Annotated[
            str | None, Field(max_length=40, description="next_cursor of the previous call")
        ] = None,
        wait_s: Annotated[float, Field(ge=0, le=60, description="seconds to wait for news")] = 0.0,
    ) -> Annotated[CallToolResult, Notifications]:
        async with broker(ctx) as client:
            page = await client.list_notifications(after, wait_s=wait_s)
        items = [views.notification_view(n.model_dump(mode="json")) for n in page.items]
        digest = page.open_digest.model_dump(mode="json") if page.open_digest else None
        summary = views.notifications_summary(items, digest)
        result = Notifications(
            notifications=items, open_digest=digest, next_cursor=page.next_cursor, summary=summary
        )
        return reply(result, summary)

    return server


async def _waiting_task(client: AsyncClient, room: str) -> str:
    """The task of `room` waiting for input: the only one, else a tool error that says why."""
    await client.get_room(room)  # an unknown room is the API's 404, not "nothing waiting"
    page = await client.list_tasks(limit=20, status=["waiting_input"], scope=room, order="asc")
    waiting = page.items
    if not waiting:
        raise ToolError(f"room {room!r} has no task waiting for input")
    if len(waiting) > 1:
        ids = ", ".join(t.id for t in waiting)
        raise ToolError(
            f"room {room!r} has {len(waiting)} tasks waiting for input ({ids}): "
            "give the task_id to answer"
        )
    return waiting[0].id


async def _wait_for_change(client: AsyncClient, task_id: str, wait_s: float) -> tuple[Task, Task]:
    """The task now, and once its status changed or `wait_s` passed. Follows the event log
    by long-poll from before the first read, so a change between the read and the wait is
    not missed, and nothing spins while the task stays as it is."""
    cursor = (await client.read_events("latest", limit=1)).next_cursor
    before: Task = await client.get_task(task_id)
    if wait_s <= 0 or _status_of(before) in FINAL:
        return before, before
    deadline = anyio.current_time() + wait_s
    while (remaining := deadline - anyio.current_time()) > 0:
        poll = min(remaining, POLL_SLICE_S)
        polled = anyio.current_time()
        page = await client.read_events(cursor, task=task_id, wait_s=poll, limit=100)
        cursor = page.next_cursor
        if not page.events:
            if anyio.current_time() - polled < poll - EARLY_S:
                # Answered empty before its wait: the broker is stopping. Asking again
                # would only spin.
                break
            continue
        now: Task = await client.get_task(task_id)
        if _status_of(now) != _status_of(before):
            return before, now
    return before, await client.get_task(task_id)


__all__: Sequence[str] = ["Connect", "build_server"]
