"""Signing in, the dashboard's forms and its live event stream.

Every form posts with a CSRF token and goes through the same services, and the same
request schemas, as the API: the dashboard adds no rule of its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from dispatchd.api.errors import first_problem
from dispatchd.api.schemas.events import EventOut
from dispatchd.api.schemas.tasks import CommentBody, InputBody, ReviewBody, TaskCreate, TaskOut
from dispatchd.errors import DispatchError
from dispatchd.events.reader import TypeFilter
from dispatchd.web.base import (
    STATES,
    Viewer,
    back,
    form_of,
    page,
    read_form,
    runtime_of,
    safe_next,
    sessions_of,
    viewer,
)
from dispatchd.web.pages import Filters, matching
from dispatchd.web.session import COOKIE, SESSION_S

router = APIRouter(include_in_schema=False)
Who = Annotated[Viewer, Depends(viewer)]


# --- signing in ---------------------------------------------------------------------------


def _signed_in(request: Request, next_url: str | None) -> RedirectResponse:
    response = RedirectResponse(safe_next(next_url), status_code=303)
    response.set_cookie(
        COOKIE,
        sessions_of(request).issue(),
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request,
    once: Annotated[str | None, Query(max_length=200)] = None,
    next_url: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
) -> Response:
    if once is not None:
        if sessions_of(request).use_once(once):
            return _signed_in(request, next_url)
        return page(
            request,
            "login.html",
            None,
            status_code=401,
            next=next_url,
            login_error="This sign-in link was already used or has expired.",
        )
    return page(request, "login.html", None, next=next_url, login_error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    fields = read_form((await request.body()).decode("utf-8", errors="replace"))
    admin = runtime_of(request).admin.value
    if sessions_of(request).check_token(fields.get("token", ""), admin):
        return _signed_in(request, fields.get("next"))
    return page(
        request,
        "login.html",
        None,
        status_code=401,
        next=fields.get("next"),
        login_error="Wrong admin token.",
    )


@router.post("/logout")
async def logout(request: Request, who: Who) -> Response:
    await form_of(request, who)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- tasks --------------------------------------------------------------------------------


def _words(value: str) -> list[str]:
    return [w for w in value.replace(",", " ").split() if w]


def _create_body(fields: dict[str, str]) -> dict[str, Any]:
    """The API's request body from the form: empty fields are left out, as a client would."""
    body: dict[str, Any] = {}
    for name in ("title", "prompt", "priority", "assigned_to", "scope"):
        if fields.get(name, "").strip():
            body[name] = fields[name].strip() if name != "prompt" else fields[name]
    for name in ("capabilities", "labels"):
        if fields.get(name, "").strip():
            body[name] = _words(fields[name])
    if fields.get("review"):
        body["review"] = True
    if fields.get("context", "").strip():
        try:
            body["context"] = json.loads(fields["context"])
        except ValueError:
            body["context"] = fields["context"]  # refused by the schema, with its message
    return body


@router.post("/tasks", response_class=HTMLResponse)
async def create_task(request: Request, who: Who) -> Response:
    fields = await form_of(request, who)
    rt = runtime_of(request)
    try:
        spec = TaskCreate.model_validate(_create_body(fields)).spec()
        created = await rt.tasks.create(spec, who.caller)
    except ValidationError as exc:
        where, message = first_problem([dict(e) for e in exc.errors()])
        return _form_again(request, who, fields, where.split(".")[0], message)
    except DispatchError as exc:
        where = str(exc.details.get("field", "form"))
        return _form_again(request, who, fields, where, exc.message)
    return back(f"/tasks/{created.task.id}", flash="Task created")


def _form_again(
    request: Request, who: Viewer, fields: dict[str, str], where: str, message: str
) -> HTMLResponse:
    return page(
        request,
        "create.html",
        who,
        status_code=422,
        form=fields,
        field_error={"field": where, "message": message},
        priorities=["critical", "high", "medium", "low"],
    )


@router.get("/tasks/new", response_class=HTMLResponse, name="new_task")
async def new_task(request: Request, who: Who) -> HTMLResponse:
    return page(
        request,
        "create.html",
        who,
        form={},
        field_error=None,
        priorities=["critical", "high", "medium", "low"],
    )


async def _act(request: Request, who: Who, task_id: str, action: str) -> Response:
    fields = await form_of(request, who)
    rt = runtime_of(request)
    url = safe_next(fields.get("next") or f"/tasks/{task_id}")
    try:
        if action == "cancel":
            await rt.tasks.cancel(task_id, who.caller, reason="cancelled from the dashboard")
        elif action == "retry":
            await rt.tasks.retry(task_id, who.caller)
        elif action == "answer":
            body = InputBody.model_validate({"answer": fields.get("answer", "")})
            await rt.tasks.provide_input(task_id, who.caller, answer=body.answer)
        elif action == "comment":
            note = CommentBody.model_validate({"body": fields.get("body", "")})
            await rt.tasks.comment(task_id, who.caller, body=note.body)
        else:
            review = ReviewBody.model_validate(
                {"verdict": action, "feedback": fields.get("feedback") or None}
            )
            await rt.tasks.review(
                task_id,
                who.caller,
                approved=review.verdict == "approved",
                feedback=review.feedback,
            )
    except ValidationError as exc:
        return back(url, error=first_problem([dict(e) for e in exc.errors()])[1])
    except DispatchError as exc:
        return back(url, error=exc.message)
    return back(url, flash=f"Task {action}" + ("led" if action == "cancel" else "ed"))


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: str, who: Who) -> Response:
    return await _act(request, who, task_id, "cancel")


@router.post("/tasks/{task_id}/retry")
async def retry(request: Request, task_id: str, who: Who) -> Response:
    return await _act(request, who, task_id, "retry")


@router.post("/tasks/{task_id}/answer")
async def answer(request: Request, task_id: str, who: Who) -> Response:
    return await _act(request, who, task_id, "answer")


@router.post("/tasks/{task_id}/approve")
async def approve(request: Request, task_id: str, who: Who) -> Response:
    return await _act(request, who, task_id, "approved")


@router.post("/tasks/{task_id}/reject")
async def reject(request: Request, task_id: str, who: Who) -> Response:
    return await _act(request, who, task_id, "rejected")


@router.post("/tasks/{task_id}/comment")
async def comment(request: Request, task_id: str, who: Who) -> Response:
    return await _act(request, who, task_id, "comment")


@router.post("/bulk", response_class=HTMLResponse)
async def bulk(request: Request, who: Who) -> Response:
    """Cancel or retry every task the filter selects: the first post shows what would be
    done and asks; the one with `confirm` does it."""
    fields = await form_of(request, who)
    rt = runtime_of(request)
    action = fields.get("action")
    filters = Filters({k: fields.get(k, "").strip() for k in ("q", *_FILTER_FIELDS)})
    if action not in ("cancel", "retry"):
        return back(f"/tasks?{filters.query}", error="unknown action")
    found = await matching(rt, filters)
    if not fields.get("confirm"):
        return page(
            request,
            "confirm.html",
            who,
            action=action,
            tasks=[TaskOut.of(t).model_dump() for t in found],
            filters=filters.values,
            query=filters.query,
        )
    done, refused = 0, 0
    for t in found:
        try:
            if action == "cancel":
                await rt.tasks.cancel(t.id, who.caller, reason="cancelled from the dashboard")
            else:
                await rt.tasks.retry(t.id, who.caller)
            done += 1
        except DispatchError:
            refused += 1
    verb = "cancelled" if action == "cancel" else "retried"
    return back(f"/tasks?{filters.query}", flash=f"{done} {verb}, {refused} refused")


_FILTER_FIELDS = ("state", "priority", "requester", "assignee", "room", "label")
assert set(STATES)  # the filter's states are the task states


# --- agents and schedules -----------------------------------------------------------------


@router.post("/agents/{agent_id}/{action}")
async def agent_action(request: Request, agent_id: str, action: str, who: Who) -> Response:
    await form_of(request, who)
    rt = runtime_of(request)
    url = f"/agents/{agent_id}"
    if action not in ("drain", "undrain"):
        return back(url, error=f"unknown action {action!r}")
    try:
        await rt.agents.set_drained(agent_id, who.caller, drained=action == "drain")
    except DispatchError as exc:
        return back(url, error=exc.message)
    return back(url, flash="Agent drained" if action == "drain" else "Agent undrained")


@router.post("/schedules/{schedule_id}/{action}")
async def schedule_action(request: Request, schedule_id: str, action: str, who: Who) -> Response:
    await form_of(request, who)
    rt = runtime_of(request)
    if action not in ("pause", "resume"):
        return back("/schedules", error=f"unknown action {action!r}")
    try:
        if action == "pause":
            await rt.schedules.pause(schedule_id, who.caller)
        else:
            await rt.schedules.resume(schedule_id, who.caller)
    except DispatchError as exc:
        return back("/schedules", error=exc.message)
    return back("/schedules", flash=f"Schedule {action}d")


# --- live ---------------------------------------------------------------------------------


@router.get("/ui/events")
async def events(
    request: Request,
    who: Who,
    after: str | None = None,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> Response:
    """The event stream for open pages (the API's stream, signed in by the session cookie).
    A browser reconnecting sends Last-Event-ID and continues where it left off."""
    rt = runtime_of(request)
    try:
        start = await rt.events.start(last_event_id or after or "latest")
        await rt.events.check(start)
    except DispatchError:
        start = await rt.events.start("latest")
    keepalive = rt.settings.events.keepalive_s

    async def frames() -> AsyncIterator[ServerSentEvent]:
        try:
            async for batch in rt.events.follow(start, TypeFilter(), idle_s=keepalive):
                for event in batch.events:
                    body = EventOut.of(event).model_dump_json()
                    yield ServerSentEvent(data=body, id=str(event.id), event="dispatchd")
        except DispatchError as exc:
            yield ServerSentEvent(data=json.dumps(exc.as_body()), event="error")

    return EventSourceResponse(frames(), ping=keepalive)
