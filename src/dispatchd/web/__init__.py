"""The dashboard (SPEC §6): server-rendered pages at `/` on the API port, made live by the
event stream. Its routes are left out of the OpenAPI document; `/api/v1` is untouched."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from dispatchd.web import actions, pages
from dispatchd.web.base import HERE, CsrfRefused, SignInNeeded, csrf_refused, redirect_to_sign_in
from dispatchd.web.session import Sessions

__all__ = ["Sessions", "install"]


def install(app: FastAPI) -> Sessions:
    """Mount the dashboard on `app`; the sessions it returns make one-time sign-in links."""
    sessions = Sessions()
    app.state.dashboard = sessions
    app.add_exception_handler(SignInNeeded, redirect_to_sign_in)
    app.add_exception_handler(CsrfRefused, csrf_refused)
    # The actions first: `/tasks/new` is a page of its own, not the task "new".
    app.include_router(actions.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return sessions
