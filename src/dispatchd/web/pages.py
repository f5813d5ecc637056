"""The dashboard's pages: everything is read through the runtime's services, the same ones
the API routes call, and shown in the API's own shapes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from dispatchd.api.schemas.agents import AgentOut
from dispatchd.api.schemas.events import EventOut
from dispatchd.api.schemas.notifications import NotificationOut
from dispatchd.api.schemas.rooms import RoomOut
from dispatchd.api.schemas.schedules import ScheduleOut
from dispatchd.api.schemas.tasks import TaskDetailOut, TaskOut
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import AgentStatus, Priority, Task, TaskStatus
from dispatchd.domain.notifications import Notification
from dispatchd.errors import DispatchError
from dispatchd.runtime import Runtime
from dispatchd.store.base import AgentFilter, TaskFilter
from dispatchd.web import charts
from dispatchd.web.base import STATES, Viewer, page, runtime_of, viewer

router = APIRouter(include_in_schema=False)
Who = Annotated[Viewer, Depends(viewer)]

# How many tasks a list or the board shows at most (newest first).
SHOWN = 500
FILTERS = ("state", "priority", "requester", "assignee", "room", "label", "q")


@dataclass(frozen=True, slots=True)
class Filters:
    """The task filters of a list or board, as kept in the URL."""

    values: dict[str, str]

    @classmethod
    def of(cls, request: Request) -> Filters:
        return cls({k: request.query_params.get(k, "").strip()[:200] for k in FILTERS})

    @property
    def query(self) -> str:
        return urlencode({k: v for k, v in self.values.items() if v})

    def task_filter(self) -> TaskFilter:
        v = self.values
        return TaskFilter(
            status=[TaskStatus(v["state"])] if v["state"] in STATES else [],
            priority=[Priority(v["priority"])]
            if v["priority"] in {p.value for p in Priority}
            else [],
            requester=v["requester"] or None,
            assignee=v["assignee"] or None,
            scope=v["room"] or None,
            label=v["label"] or None,
        )

    def keep(self, task: Task) -> bool:
        text = self.values["q"].casefold()
        return not text or text in task.title.casefold()


async def matching(rt: Runtime, filters: Filters, limit: int = SHOWN) -> list[Task]:
    """The tasks the filters select, newest first, at most `limit`."""
    found: list[Task] = []
    cursor: str | None = None
    flt = filters.task_filter()
    while len(found) < limit:
        got = await rt.tasks.page(flt, limit=min(500, limit), cursor=cursor)
        found.extend(t for t in got.items if filters.keep(t))
        cursor = got.next_cursor
        if cursor is None:
            break
    return found[:limit]


async def _recent(rt: Runtime) -> list[Task]:
    """The tasks the charts need: those touched in the last hour, and every open one."""
    since = utcnow() - charts.WINDOW - timedelta(minutes=5)
    found: list[Task] = []
    cursor: str | None = None
    while len(found) < 5000:
        got = await rt.tasks.page(TaskFilter(), limit=500, cursor=cursor)
        found.extend(got.items)
        cursor = got.next_cursor
        if cursor is None or (got.items and got.items[-1].created_at < since):
            break
    open_states = [s for s in TaskStatus if not s.terminal]
    older = await rt.tasks.page(TaskFilter(status=open_states), limit=500, cursor=None)
    seen = {t.id for t in found}
    found.extend(t for t in older.items if t.id not in seen)
    return found


async def _events(rt: Runtime, limit: int = 30) -> list[dict[str, Any]]:
    head = max(rt.feed.latest, await rt.store.last_event_id())
    events = await rt.store.read_events(after=max(0, head - limit), limit=limit)
    return [EventOut.of(e).model_dump() for e in reversed(events)]


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    counts = await rt.store.counts()
    by_state = {s: int(counts.tasks_by_status.get(s, 0)) for s in STATES}
    agents = {s.value: int(counts.agents_by_status.get(s.value, 0)) for s in AgentStatus}
    depth, done = charts.history(await _recent(rt), utcnow())
    return page(
        request,
        "overview.html",
        who,
        by_state=by_state,
        agents=agents,
        depth_svg=charts.svg(depth),
        done_svg=charts.svg(done, bars=True),
        events=await _events(rt),
    )


@router.get("/tasks", response_class=HTMLResponse)
async def tasks(request: Request, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    filters = Filters.of(request)
    view = "list" if request.query_params.get("view") == "list" else "board"
    found = [TaskOut.of(t).model_dump() for t in await matching(rt, filters)]
    columns: dict[str, list[dict[str, Any]]] = {s: [] for s in STATES}
    for t in found:
        columns[t["status"]].append(t)
    return page(
        request,
        "tasks.html",
        who,
        view=view,
        tasks=found,
        columns=columns,
        filters=filters.values,
        query=filters.query,
        priorities=[p.value for p in Priority],
        form=request.query_params,
        field_error=None,
    )


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task(request: Request, task_id: str, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    try:
        detail = TaskDetailOut.of_detail(await rt.tasks.detail(task_id)).model_dump()
    except DispatchError as exc:
        return page(request, "missing.html", who, status_code=exc.status, message=exc.message)
    events = [EventOut.of(e).model_dump() for e in await rt.tasks.events(task_id)]
    return page(request, "task.html", who, t=detail, events=events)


@router.get("/agents", response_class=HTMLResponse)
async def agents(request: Request, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    got = await rt.agents.page(AgentFilter(), limit=500, cursor=None)
    items = [AgentOut.of(a.agent, a.active).model_dump() for a in got.items]
    return page(request, "agents.html", who, agents=items, limit=rt.directory.default_limit)


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent(request: Request, agent_id: str, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    try:
        load = await rt.agents.load(agent_id)
    except DispatchError as exc:
        return page(request, "missing.html", who, status_code=exc.status, message=exc.message)
    working = await rt.tasks.page(
        TaskFilter(assignee=agent_id, status=[s for s in TaskStatus if not s.terminal]),
        limit=100,
        cursor=None,
    )
    return page(
        request,
        "agent.html",
        who,
        a=AgentOut.of(load.agent, load.active).model_dump(),
        limit=load.agent.max_concurrent or rt.directory.default_limit,
        tasks=[TaskOut.of(t).model_dump() for t in working.items],
    )


@router.get("/rooms", response_class=HTMLResponse)
async def rooms(request: Request, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    got = await rt.rooms.page(limit=500, cursor=None)
    return page(request, "rooms.html", who, rooms=[RoomOut.of(s).model_dump() for s in got.items])


@router.get("/schedules", response_class=HTMLResponse)
async def schedules(request: Request, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    got = await rt.schedules.page(limit=500, cursor=None)
    items = [ScheduleOut.of(s).model_dump() for s in got.items]
    return page(request, "schedules.html", who, schedules=items)


@router.get("/notifications", response_class=HTMLResponse)
async def notifications(request: Request, who: Who) -> HTMLResponse:
    rt = runtime_of(request)
    # The newest SHOWN, newest first: read on by cursor to the end (notifications are few
    # and retention keeps them bounded), keeping only the last page's worth.
    kept: list[Notification] = []
    cursor = 0
    for _ in range(100):
        found = await rt.store.list_notifications(
            after=cursor, limit=500, unacknowledged_only=False, requester=None
        )
        kept = (kept + found)[-SHOWN:]
        if len(found) < 500 or found[-1].id is None:
            break
        cursor = found[-1].id
    items = [NotificationOut.of(n).model_dump() for n in reversed(kept)]
    return page(request, "notifications.html", who, notifications=items)
