"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against one
real `dispatchd serve` for the module.

Without Playwright or the browser the tests skip, with the reason, except on CI
(`CI=true`), where a missing browser fails. The overview, the board and a task's page are
photographed; with DISPATCHD_SCREENSHOTS=1 into `docs/` as the README's screenshots (so that
a plain test run leaves the working tree as it was).
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.server import ServerProcess

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("DISPATCH_CHROMIUM", "/usr/bin/chromium"))
DOCS = Path(__file__).resolve().parents[2] / "docs"
SHOTS = (
    DOCS
    if os.environ.get("DISPATCHD_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "dispatchd-screenshots"
)
ADMIN = "dashboard-test-admin-token-0123456789"
# Live updates must show within a second; the wait allows for a loaded test machine.
LIVE_MS = 5000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the dashboard tests need a browser on CI: {reason}", pytrace=False)
    pytest.skip(f"no browser for the dashboard tests: {reason}")


try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - dev dependencies missing
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("dashboard"), env={"DISPATCH_ADMIN_TOKEN": ADMIN}
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (make install-dev)")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"X-Agent-ID": "tester", "Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=server.api_url, headers=headers, timeout=10) as client:
        yield client


def _as(api: httpx.Client, agent: str) -> dict[str, str]:
    return {"X-Agent-ID": agent}


def _sign_in(page: Page, token: str = ADMIN) -> None:
    page.goto("/login")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture
def page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(base_url=server.api_url, viewport={"width": 1500, "height": 950})
    signed = context.new_page()
    _sign_in(signed)
    expect(signed).to_have_url(re.compile(r"/$"))
    yield signed
    context.close()


def _create(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"title": f"task {uuid.uuid4().hex[:8]}", **fields}
    response = api.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def _register(api: httpx.Client, agent: str, capability: str) -> None:
    response = api.post(
        "/api/v1/agents", json={"id": agent, "capabilities": [capability]}, headers=_as(api, agent)
    )
    assert response.status_code in (200, 201), response.text


def _claim(api: httpx.Client, agent: str) -> dict[str, Any]:
    response = api.post("/api/v1/tasks/claim", json={"max_tasks": 1}, headers=_as(api, agent))
    assert response.status_code == 200, response.text
    claimed: dict[str, Any] = response.json()
    return claimed


def _live(page: Page) -> None:
    """Wait until the page follows the event stream, and mark it: a reload would lose it."""
    expect(page.locator("#live-status")).to_have_text("live", timeout=LIVE_MS)
    page.evaluate("window.__sameDocument = true")


def _not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


# --- access -------------------------------------------------------------------------------


def test_every_page_redirects_to_sign_in_without_a_session(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.api_url) as client:
        for path in (
            "/",
            "/tasks",
            "/tasks/x",
            "/agents",
            "/agents/x",
            "/rooms",
            "/schedules",
            "/notifications",
            "/tasks/new",
            "/ui/events",
        ):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next="), path
        assert client.get("/login").status_code == 200
        # The dashboard is not part of the API's contract.
        paths = client.get("/openapi.json").json()["paths"]
        assert paths and all(p.startswith("/api/v1/") for p in paths)
        # A form posted without a session changes nothing either.
        assert client.post("/tasks", data={"title": "x"}).status_code == 303


def test_the_one_time_link_signs_in_once(server: ServerProcess) -> None:
    line = server.wait_for_stdout(lambda s: s.startswith("dashboard: "))
    assert line is not None, server.describe()
    link = line.removeprefix("dashboard: ")
    assert "/login?once=" in link
    with httpx.Client() as client:
        first = client.get(link)
        assert first.status_code == 303
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        again = httpx.get(link)
        assert again.status_code == 401
        assert "already used" in again.text


def test_wrong_token_is_refused_and_sets_no_session(
    browser: Browser, server: ServerProcess
) -> None:
    context = browser.new_context(base_url=server.api_url)
    try:
        page = context.new_page()
        page.goto("/tasks")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        _sign_in(page, "not-the-admin-token")
        expect(page.get_by_role("alert")).to_have_text("Wrong admin token.")
        assert context.cookies() == []
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/login"))
    finally:
        context.close()


def test_session_cookie_is_httponly_and_strict(page: Page) -> None:
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""


# --- pages and live updates ---------------------------------------------------------------


def test_overview_shows_counts_charts_and_feed(page: Page, api: httpx.Client) -> None:
    _create(api, capabilities=["nobody-has-this"])
    page.goto("/")
    expect(page.get_by_role("heading", name="Tasks by state")).to_be_visible()
    expect(page.locator("#task-counts [data-state=pending]")).not_to_have_text("0")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(2)
    expect(charts.first).to_contain_text("Queue depth")
    expect(charts.first).to_contain_text("time (UTC)")
    expect(charts.nth(1)).to_contain_text("tasks / 5 min")
    _live(page)
    created = _create(api, title="seen in the feed", capabilities=["nobody-has-this"])
    expect(page.locator("#feed")).to_contain_text(created["id"], timeout=LIVE_MS)
    _not_reloaded(page)


def test_a_task_created_through_the_api_appears_on_the_board(page: Page, api: httpx.Client) -> None:
    page.goto("/tasks")
    _live(page)
    title = f"appears live {uuid.uuid4().hex[:6]}"
    _create(api, title=title, capabilities=["nobody-has-this"], labels=["demo"])
    pending = page.locator("[data-column=pending]")
    expect(pending.get_by_text(title)).to_be_visible(timeout=LIVE_MS)
    _not_reloaded(page)
    page.screenshot(path=str(SHOTS / "dashboard-board.png"), full_page=True)


def test_cancel_from_a_task_page_moves_its_card(page: Page, api: httpx.Client) -> None:
    title = f"to cancel {uuid.uuid4().hex[:6]}"
    _create(
        api,
        title=title,
        prompt="Summarise the incident report.",
        capabilities=["nobody-has-this"],
        context={"ticket": 42},
    )
    page.goto("/tasks")
    _live(page)
    expect(page.locator("[data-column=pending]").get_by_text(title)).to_be_visible()
    # Opened in a second tab, the board stays open in the first.
    task_page = page.context.new_page()
    task_page.goto(page.locator("a.card", has_text=title).get_attribute("href") or "")
    expect(task_page.get_by_role("heading", name=title)).to_be_visible()
    task_page.screenshot(path=str(SHOTS / "dashboard-task.png"), full_page=True)
    task_page.get_by_role("button", name="Cancel", exact=True).click()
    expect(task_page.locator("#task-state")).to_have_text("cancelled")
    expect(task_page.get_by_role("button", name="Retry", exact=True)).to_be_visible()
    # The board, never reloaded, shows the card in its new column.
    expect(page.locator("[data-column=cancelled]").get_by_text(title)).to_be_visible(
        timeout=LIVE_MS
    )
    expect(page.locator("[data-column=pending]").get_by_text(title)).to_have_count(0)
    _not_reloaded(page)


def test_the_list_filters_by_url(page: Page, api: httpx.Client) -> None:
    marker = uuid.uuid4().hex[:6]
    _create(api, title=f"filtered {marker}", labels=["urgent"], capabilities=["nobody-has-this"])
    _create(api, title=f"other {marker}", capabilities=["nobody-has-this"])
    page.goto(f"/tasks?view=list&label=urgent&q={marker}")
    rows = page.locator("#task-list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(f"filtered {marker}")


def test_bulk_cancel_asks_first(page: Page, api: httpx.Client) -> None:
    marker = uuid.uuid4().hex[:6]
    ids = [
        _create(api, title=f"bulk {marker} {i}", capabilities=["nobody-has-this"])["id"]
        for i in range(3)
    ]
    page.goto(f"/tasks?view=list&q=bulk+{marker}")
    page.get_by_role("button", name="Cancel all matching").click()
    expect(page.get_by_role("heading", name="Cancel 3 tasks?")).to_be_visible()
    assert all(api.get(f"/api/v1/tasks/{i}").json()["status"] == "pending" for i in ids)
    page.get_by_role("button", name="Yes, cancel 3").click()
    expect(page.get_by_role("status")).to_contain_text("3 cancelled")
    assert all(api.get(f"/api/v1/tasks/{i}").json()["status"] == "cancelled" for i in ids)


def test_live_updates_can_be_paused(page: Page, api: httpx.Client) -> None:
    page.goto("/tasks")
    _live(page)
    page.get_by_label("Pause live updates").check()
    expect(page.locator("#live-status")).to_have_text("paused")
    title = f"while paused {uuid.uuid4().hex[:6]}"
    _create(api, title=title, capabilities=["nobody-has-this"])
    # Absence needs a wait: longer than a live update takes, and the card must not come.
    page.wait_for_timeout(1500)
    expect(page.get_by_text(title)).to_have_count(0)
    page.get_by_label("Pause live updates").uncheck()
    expect(page.locator("[data-column=pending]").get_by_text(title)).to_be_visible(timeout=LIVE_MS)
    _not_reloaded(page)


def _first_event_id(client: httpx.Client, **kwargs: Any) -> str:
    with client.stream("GET", "/ui/events", **kwargs) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("id:"):
                return line.removeprefix("id:").strip()
    raise AssertionError("the stream ended without an event")


def test_the_stream_resumes_after_last_event_id(server: ServerProcess, api: httpx.Client) -> None:
    for _ in range(3):
        _create(api, capabilities=["nobody-has-this"])
    ids = [e["id"] for e in api.get("/api/v1/events", params={"limit": 1000}).json()["events"]]
    with httpx.Client(base_url=server.api_url, timeout=10) as client:
        signed = client.post("/login", data={"token": ADMIN})
        assert signed.status_code == 303 and "dispatchd_session" in client.cookies
        # A reconnecting browser sends Last-Event-ID: the stream goes on right after it.
        assert _first_event_id(client, headers={"Last-Event-ID": ids[-3]}) == ids[-2]
        # Resuming after a pause asks with `after`; Last-Event-ID wins over it.
        assert _first_event_id(client, params={"after": ids[-2]}) == ids[-1]
        resumed = _first_event_id(
            client, params={"after": ids[0]}, headers={"Last-Event-ID": ids[-2]}
        )
        assert resumed == ids[-1]


# --- actions ------------------------------------------------------------------------------


def test_drain_from_the_agent_page_refuses_claims(page: Page, api: httpx.Client) -> None:
    _register(api, "drain-me", "drainable")
    page.goto("/agents/drain-me")
    expect(page.locator("#load")).to_contain_text("0 of")
    page.get_by_role("button", name="Drain", exact=True).click()
    expect(page.locator("#draining")).to_be_visible()
    _create(api, capabilities=["drainable"])
    claimed = _claim(api, "drain-me")
    assert claimed["tasks"] == [] and claimed["reason"] == "draining"
    page.get_by_role("button", name="Undrain", exact=True).click()
    expect(page.get_by_role("button", name="Drain", exact=True)).to_be_visible()
    assert len(_claim(api, "drain-me")["tasks"]) == 1


def test_answer_a_question(page: Page, api: httpx.Client) -> None:
    _register(api, "asker", "asking")
    task = _create(api, capabilities=["asking"])
    claimed = _claim(api, "asker")
    assert [t["id"] for t in claimed["tasks"]] == [task["id"]]
    agent = _as(api, "asker")
    assert api.post(f"/api/v1/tasks/{task['id']}/start", headers=agent).status_code == 200
    asked = api.post(
        f"/api/v1/tasks/{task['id']}/input-request",
        json={"question": "Which branch?"},
        headers=agent,
    )
    assert asked.status_code == 200, asked.text
    page.goto(f"/tasks/{task['id']}")
    expect(page.locator("#question")).to_have_text("Which branch?")
    page.get_by_label("Answer").fill("main")
    page.get_by_role("button", name="Answer", exact=True).click()
    expect(page.locator("#task-state")).not_to_have_text("waiting_input")
    events = api.get(f"/api/v1/tasks/{task['id']}/events").json()["events"]
    received = [e for e in events if e["type"] == "task.input_received"]
    assert received and "main" in str(received[-1]["data"])


def test_approve_a_review(page: Page, api: httpx.Client) -> None:
    _register(api, "doer", "reviewed-work")
    task = _create(api, capabilities=["reviewed-work"], review=True)
    assert [t["id"] for t in _claim(api, "doer")["tasks"]] == [task["id"]]
    done = api.post(
        f"/api/v1/tasks/{task['id']}/complete", json={"result": {"ok": 1}}, headers=_as(api, "doer")
    )
    assert done.status_code == 200 and done.json()["status"] == "review", done.text
    page.goto(f"/tasks/{task['id']}")
    page.locator("#approve-feedback").fill("looks right")
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator("#task-state")).to_have_text("completed")
    reviews = api.get(f"/api/v1/tasks/{task['id']}").json()["reviews"]
    assert reviews[-1]["verdict"] == "approved" and reviews[-1]["feedback"] == "looks right"


def test_pause_and_resume_a_schedule(page: Page, api: httpx.Client) -> None:
    made = api.post(
        "/api/v1/schedules",
        json={"name": "nightly", "schedule": "@daily", "task_template": {"title": "nightly"}},
    )
    assert made.status_code == 201, made.text
    schedule_id = made.json()["id"]
    page.goto("/schedules")
    row = page.locator("#schedule-list tr", has_text=schedule_id)
    expect(row).to_contain_text("@daily")
    row.get_by_role("button", name="Pause", exact=True).click()
    expect(row.get_by_role("button", name="Resume", exact=True)).to_be_visible()
    assert api.get(f"/api/v1/schedules/{schedule_id}").json()["paused"] is True
    row.get_by_role("button", name="Resume", exact=True).click()
    expect(row.get_by_role("button", name="Pause", exact=True)).to_be_visible()
    assert api.get(f"/api/v1/schedules/{schedule_id}").json()["paused"] is False


def test_rooms_show_their_current_task_and_question(page: Page, api: httpx.Client) -> None:
    assert api.post("/api/v1/rooms", json={"id": "infra"}).status_code == 201
    resident = api.post(
        "/api/v1/agents",
        json={"id": "infra-agent", "capabilities": ["ops"], "room": "infra"},
        headers=_as(api, "infra-agent"),
    )
    assert resident.status_code in (200, 201), resident.text
    task = _create(api, title="rotate the keys", scope="infra")
    assert [t["id"] for t in _claim(api, "infra-agent")["tasks"]] == [task["id"]]
    agent = _as(api, "infra-agent")
    api.post(f"/api/v1/tasks/{task['id']}/start", headers=agent)
    api.post(f"/api/v1/tasks/{task['id']}/input-request", json={"question": "Now?"}, headers=agent)
    page.goto("/rooms")
    row = page.locator("#room-list tr", has_text="infra")
    expect(row).to_contain_text("rotate the keys")
    expect(row).to_contain_text("Now?")


# --- bad input ----------------------------------------------------------------------------


def test_a_missing_title_shows_the_apis_error_beside_the_field(
    page: Page, api: httpx.Client
) -> None:
    page.goto("/tasks/new")
    page.get_by_label("Prompt").fill("no title given")
    page.get_by_role("button", name="Create task").click()
    refused = api.post("/api/v1/tasks", json={"prompt": "no title given"})
    assert refused.status_code == 422
    expect(page.locator("#error-title")).to_have_text(refused.json()["error"]["message"])
    # What was typed is kept.
    expect(page.get_by_label("Prompt")).to_have_value("no title given")


def test_a_stale_csrf_token_is_refused(page: Page, api: httpx.Client) -> None:
    page.goto("/tasks/new")
    old = page.locator("#create-task input[name=csrf]").get_attribute("value")
    page.get_by_role("button", name="Sign out").click()
    _sign_in(page)
    page.goto("/tasks/new")
    fresh = page.locator("#create-task input[name=csrf]").get_attribute("value")
    assert old and fresh and old != fresh
    page.locator("#create-task input[name=csrf]").evaluate("(e, v) => e.value = v", old)
    title = f"never created {uuid.uuid4().hex[:6]}"
    page.get_by_label("Title").fill(title)
    with page.expect_response(lambda r: r.url.endswith("/tasks")) as posted:
        page.get_by_role("button", name="Create task").click()
    assert posted.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("CSRF token")
    listed = api.get("/api/v1/tasks", params={"limit": 500}).json()["items"]
    assert title not in [t["title"] for t in listed]


def test_bad_form_input_is_answered_never_a_5xx(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.api_url, timeout=10) as client:
        assert client.post("/login", data={"token": ADMIN}).status_code == 303
        page = client.get("/tasks/new").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        token = csrf.group(1)
        posts = [
            ("/tasks", {"title": "x", "context": "[1, 2"}, 422),
            ("/tasks", {"title": "x", "context": "[1]"}, 422),
            ("/tasks", {"title": "x", "priority": "bogus"}, 422),
            ("/tasks", {"title": "x" * 501}, 422),
            ("/tasks", {"title": "x", "capabilities": "a" * 101}, 422),
            ("/tasks", {"title": "with\x00nul"}, 303),
            ("/tasks/nope/cancel", {}, 303),
            ("/tasks/nope/answer", {"answer": ""}, 303),
            ("/tasks/nope/approve", {}, 303),
            ("/agents/nope/drain", {}, 303),
            ("/agents/nope/explode", {}, 303),
            ("/schedules/nope/pause", {}, 303),
            ("/bulk", {"action": "explode"}, 303),
        ]
        for path, fields, status in posts:
            response = client.post(path, data={"csrf": token, **fields})
            assert response.status_code == status, (path, fields, response.text[:300])
        for path in (
            "/tasks?state=bogus&priority=x",
            "/tasks/nope",
            "/agents/nope",
            "/ui/events?after=zzz",
        ):
            if path.startswith("/ui/"):
                with client.stream("GET", path) as stream:
                    assert stream.status_code == 200
                continue
            response = client.get(path)
            assert response.status_code < 500, path
        assert client.get("/tasks/nope").status_code == 404
        # Without the token, nothing is done.
        assert client.post("/tasks", data={"title": "no csrf"}).status_code == 403


def test_overview_after_the_work(page: Page, api: httpx.Client) -> None:
    """Last, when the other tests have left tasks in most states: the README's picture."""
    page.goto("/")
    expect(page.locator("#task-counts [data-state=completed]")).not_to_have_text("0")
    page.screenshot(path=str(SHOTS / "dashboard-overview.png"), full_page=True)
