"""What every dashboard route shares: templates, the signed-in person, forms and CSRF."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from dispatchd.domain.access import Caller
from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import TaskStatus
from dispatchd.errors import Forbidden
from dispatchd.runtime import Runtime
from dispatchd.web.session import COOKIE, Sessions

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

# The dashboard acts as the admin, under this name (the requester of the tasks it creates).
DASHBOARD_AGENT = "dashboard"
STATES = [s.value for s in TaskStatus]


def _ago(value: str | None) -> str:
    """An ISO time as '5s ago' / 'in 3m'."""
    if not value:
        return "—"
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    delta = (utcnow() - at).total_seconds()
    ahead = delta < 0
    delta = abs(delta)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if delta >= size or unit == "s":
            text = f"{int(delta // size)}{unit}"
            break
    return f"in {text}" if ahead else f"{text} ago"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


templates.env.filters["ago"] = _ago
templates.env.filters["pretty"] = _pretty


class CsrfRefused(Forbidden):
    code = "csrf_refused"


class SignInNeeded(Exception):
    """No valid session: the page redirects to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person: their session id (for CSRF) and the caller they act as."""

    sid: str
    csrf: str
    caller: Caller
    # The end of the event log before the page read anything: its event stream starts
    # there, so nothing that happens while it renders or connects is missed.
    cursor: int = 0


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.dashboard
    return sessions


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def viewer(request: Request) -> Viewer:
    sessions = sessions_of(request)
    sid = sessions.session_id(request.cookies.get(COOKIE))
    if sid is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInNeeded(target)
    return Viewer(
        sid,
        sessions.csrf(sid),
        Caller(DASHBOARD_AGENT, is_admin=True, authenticated=True),
        cursor=runtime_of(request).feed.latest,
    )


def csrf_refused(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, CsrfRefused)
    return page(request, "refused.html", None, status_code=403, message=exc.message)


def redirect_to_sign_in(request: Request, exc: Exception) -> RedirectResponse:
    assert isinstance(exc, SignInNeeded)
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)


async def form_of(request: Request, who: Viewer) -> dict[str, str]:
    """The posted form (urlencoded), after its CSRF token is checked: a token of another
    session, or none, is refused before anything is done."""
    raw = (await request.body()).decode("utf-8", errors="replace")
    fields = read_form(raw)
    if not sessions_of(request).csrf_ok(who.sid, fields.get("csrf")):
        raise CsrfRefused(
            "the form's CSRF token is missing or stale: reload the page and try again"
        )
    return fields


def read_form(raw: str) -> dict[str, str]:
    """An urlencoded form; NUL characters are dropped (no store can keep them)."""
    pairs = parse_qs(raw, keep_blank_values=True).items()
    return {k.replace("\x00", ""): v[-1].replace("\x00", "") for k, v in pairs}


def page(
    request: Request, name: str, who: Viewer | None, status_code: int = 200, **ctx: Any
) -> HTMLResponse:
    ctx.setdefault("cursor", who.cursor if who else 0)
    ctx.setdefault("flash", request.query_params.get("flash"))
    ctx.setdefault("error", request.query_params.get("error"))
    return templates.TemplateResponse(
        request,
        name,
        {"who": who, "csrf": who.csrf if who else "", "states": STATES, **ctx},
        status_code=status_code,
    )


def back(url: str, *, flash: str | None = None, error: str | None = None) -> RedirectResponse:
    """After a POST, back to a page (303, so that a reload does not post again)."""
    sep = "&" if "?" in url else "?"
    if flash:
        url += f"{sep}flash={quote(flash)}"
    elif error:
        url += f"{sep}error={quote(error)}"
    return RedirectResponse(url, status_code=303)


def safe_next(value: str | None) -> str:
    """Only a path on this server (never `//host` or a scheme) is followed after sign-in."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
