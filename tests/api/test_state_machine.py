"""Random walks through the task API, checked against a model of SPEC §2 after every step.

Each example opens the real app on a runtime with its own SQLite store in a fresh directory,
driven through httpx's ASGI transport on a private event loop (the rules are synchronous),
registers a few workers and then makes random calls, legal and illegal, by the right caller
or a wrong one. The model predicts each answer (2xx, 403, 404 or 409) and the task
afterwards: its state, holder, attempts and event log. A refused call must change nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from dispatchd.domain.models import TaskStatus
from dispatchd.runtime import Runtime
from tests.api.conftest import ADMIN_TOKEN, app_for, make_settings

WORKERS = ("w1", "w2", "w3")
REQUESTERS = ("alice", "bob")
ADMIN = "root"
CALLERS = (*WORKERS, *REQUESTERS, "mallory", ADMIN)

HELD = {"assigned", "running", "waiting_input"}
TERMINAL = {"completed", "failed", "timed_out", "cancelled"}
CANCELLABLE = {"pending", "blocked", "review", *HELD}
RETRYABLE = {"failed", "timed_out", "cancelled"}
STATES = {s.value for s in TaskStatus}

# Defaults of the configuration the app runs with.
MAX_CONCURRENT = 3
MAX_REVIEW_CYCLES = 3
MAX_LOST_REQUEUES = 5


@dataclass
class Expected:
    """What the model believes about one task."""

    id: str
    requester: str
    review: bool
    status: str
    max_attempts: int
    updated_at: str
    assignee: str | None = None
    attempt: int = 0
    review_cycles: int = 0
    requeues: int = 0
    holders: list[str] = field(default_factory=list)
    outcomes: list[str | None] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def assign(self, agent: str) -> None:
        self.status = "assigned"
        self.assignee = agent
        self.attempt += 1
        self.holders.append(agent)
        self.outcomes.append(None)
        self.events.append("task.assigned")

    def end_attempt(self, outcome: str) -> None:
        self.outcomes[self.attempt - 1] = outcome

    def start_if_assigned(self) -> None:
        if self.status == "assigned":
            self.status = "running"
            self.events.append("task.started")


def headers(caller: str) -> dict[str, str]:
    h = {"X-Agent-ID": caller}
    if caller == ADMIN:
        h["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    return h


def with_fence(body: dict[str, Any], fence: int | None) -> dict[str, Any]:
    return {**body, "attempt": fence} if fence is not None else body


fences = st.one_of(st.none(), st.integers(1, 4))


class SyncApi:
    """The real app in-process, called from synchronous code on a private event loop."""

    def __init__(self, data_dir: Path) -> None:
        self._runner = asyncio.Runner()
        self._stack = AsyncExitStack()
        try:
            self._client = self._runner.run(self._open(data_dir))
        except BaseException:
            self._runner.close()
            raise

    async def _open(self, data_dir: Path) -> httpx.AsyncClient:
        # Push assignment is off: the model hands tasks out only by `assigned_to`, so that
        # each step's outcome is known. Push has its own tests.
        runtime = await self._stack.enter_async_context(
            Runtime.build(make_settings(data_dir), background=False)
        )
        transport = httpx.ASGITransport(app=app_for(runtime))
        client = httpx.AsyncClient(transport=transport, base_url="http://dispatchd.test")
        return await self._stack.enter_async_context(client)

    def request(self, method: str, path: str, caller: str, body: Any = None) -> httpx.Response:
        call = self._client.request(method, path, json=body, headers=headers(caller))
        return self._runner.run(call)

    def close(self) -> None:
        try:
            self._runner.run(self._stack.aclose())
        finally:
            self._runner.close()


class TaskApiMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="dispatchd-sm-")
        try:
            self.api = SyncApi(Path(self.tmp))
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.tasks: dict[str, Expected] = {}
        self.agents: set[str] = set()

    def teardown(self) -> None:
        try:
            self.api.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- plumbing -----------------------------------------------------------------------

    def call(self, method: str, path: str, caller: str, body: Any = None) -> httpx.Response:
        r = self.api.request(method, path, caller, body)
        assert r.status_code < 500, f"{method} {path} by {caller}: {r.status_code} {r.text}"
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"code", "message", "details"}, r.text
        return r

    def held_by(self, agent: str) -> list[Expected]:
        return [t for t in self.tasks.values() if t.assignee == agent and t.status in HELD]

    def pick(
        self,
        data: st.DataObject,
        right: Callable[[Expected], str | None] | None,
        fits: set[str] | None = None,
    ) -> tuple[Expected, str]:
        """A known task and a caller: often those the action wants, often any."""
        tasks: st.SearchStrategy[str] = st.sampled_from(sorted(self.tasks))
        fitting = sorted(tid for tid, t in self.tasks.items() if fits is None or t.status in fits)
        if fitting:
            tasks = st.one_of(st.sampled_from(fitting), tasks)
        task = self.tasks[data.draw(tasks, label="task")]
        wanted = right(task) if right is not None else None
        options: st.SearchStrategy[str] = st.sampled_from(CALLERS)
        if wanted is not None:
            options = st.one_of(st.just(wanted), options)
        return task, data.draw(options, label="caller")

    def holder_code(self, t: Expected, caller: str, fence: int | None, sources: set[str]) -> int:
        """`require_holder`, then the lifecycle table."""
        if caller == t.assignee:
            if fence is not None and fence != t.attempt:
                return 409  # stale attempt
            return 200 if t.status in sources else 409
        if caller in t.holders:
            return 409  # stale attempt: its attempt was taken away
        if t.assignee is not None:
            return 403
        return 409

    def ended(self, t: Expected, caller: str, fence: int | None, outcome: str) -> bool:
        """Whether the caller's attempt (`fence`, else its latest) ended with `outcome`: a
        repeat of that report is answered 200 and changes nothing."""
        mine = [n for n, h in enumerate(t.holders, 1) if h == caller and fence in (None, n)]
        return bool(mine) and t.outcomes[max(mine) - 1] == outcome

    def requester_code(self, t: Expected, caller: str, sources: set[str]) -> int:
        if caller not in (t.requester, ADMIN):
            return 403
        return 200 if t.status in sources else 409

    def act(
        self,
        t: Expected,
        action: str,
        caller: str,
        method: str,
        path: str,
        body: Any,
        code: int,
        apply: Any,
        *,
        repeat: bool = False,
    ) -> None:
        before = t.status
        r = self.call(method, path, caller, body)
        assert r.status_code == code, (
            f"{action} by {caller} of a {before} task (assignee {t.assignee}, attempt "
            f"{t.attempt}/{t.max_attempts}): expected {code}, got {r.status_code} {r.text}"
        )
        event(f"{action} of {before} -> {r.status_code}")
        ok = r.status_code < 300
        if ok:
            if not repeat:
                apply()
        elif r.json()["error"]["code"] == "invalid_transition":
            assert r.json()["error"]["details"]["current_state"] == before, r.text
        if ok and action != "comment":
            assert r.json()["status"] == t.status, (action, r.text)
        self.check(t, action, before, changed=ok and not repeat and action != "comment")

    def check(self, t: Expected, action: str, before: str, *, changed: bool) -> None:
        """The task's detail and event log are what the model expects."""
        d = self.call("GET", f"/api/v1/tasks/{t.id}", "alice").json()
        where = f"after {action} of a {before} task: {d}"
        assert d["status"] in STATES
        assert d["status"] == t.status, where
        assert d["assignee"] == t.assignee, where
        assert d["attempt"] == t.attempt == len(t.holders), where
        assert d["max_attempts"] == t.max_attempts, where
        assert (d["review_cycles"], d["requeues"]) == (t.review_cycles, t.requeues), where
        assert [a["number"] for a in d["attempts"]] == list(range(1, t.attempt + 1)), where
        assert [a["agent_id"] for a in d["attempts"]] == t.holders, where
        assert [a["outcome"] for a in d["attempts"]] == t.outcomes, where
        events = self.call("GET", f"/api/v1/tasks/{t.id}/events", "alice").json()["events"]
        assert [e["type"] for e in events] == t.events, where
        assert all(e["task_id"] == t.id for e in events)
        if changed:
            assert d["updated_at"] > t.updated_at, where
        else:
            assert d["updated_at"] == t.updated_at, f"a refused {action} changed the task"
        if before in TERMINAL and action != "retry":
            assert d["status"] == before, f"{action} moved a {before} task to {d['status']}"
        t.updated_at = d["updated_at"]

    # --- agents ---------------------------------------------------------------------------

    @initialize(n=st.integers(2, 3), review=st.booleans())
    def register_workers(self, n: int, review: bool) -> None:
        for agent in WORKERS[:n]:
            self.register(agent)
        # Every later rule finds a task to act on.
        self.create("alice", "w1", 2, review)

    @rule(agent=st.sampled_from(WORKERS))
    def register(self, agent: str) -> None:
        r = self.call("POST", "/api/v1/agents", agent, {"capabilities": ["code"]})
        assert r.status_code == (200 if agent in self.agents else 201), r.text
        self.agents.add(agent)

    @rule(agent=st.sampled_from(WORKERS))
    def deregister(self, agent: str) -> None:
        held = self.held_by(agent)
        befores = {t.id: t.status for t in held}
        r = self.call("DELETE", f"/api/v1/agents/{agent}", agent)
        if agent not in self.agents:
            assert r.status_code == 404, r.text
            return
        assert r.status_code == 200, r.text
        event(f"deregister holding {len(held)}")
        assert sorted(r.json()["requeued"]) == sorted(t.id for t in held)
        self.agents.discard(agent)
        for t in held:
            t.requeues += 1
            t.end_attempt("lost")
            if t.requeues >= MAX_LOST_REQUEUES:
                t.status = "failed"
                # The last failure with nowhere to escalate: the requester is told.
                t.events += ["task.failed", "task.escalated"]
            else:
                t.status, t.assignee = "pending", None
                t.max_attempts += 1
                t.events.append("task.requeued")
            self.check(t, "requeue", befores[t.id], changed=True)

    # --- requesters -----------------------------------------------------------------------

    @rule(
        requester=st.sampled_from(REQUESTERS),
        assigned_to=st.sampled_from((None, *WORKERS)),
        max_attempts=st.integers(1, 3),
        review=st.booleans(),
    )
    def create(
        self, requester: str, assigned_to: str | None, max_attempts: int, review: bool
    ) -> None:
        body: dict[str, Any] = {"title": "t", "max_attempts": max_attempts, "review": review}
        if assigned_to is not None:
            body["assigned_to"] = assigned_to
        takes = (
            assigned_to in self.agents
            and assigned_to is not None
            and len(self.held_by(assigned_to)) < MAX_CONCURRENT
        )
        r = self.call("POST", "/api/v1/tasks", requester, body)
        assert r.status_code == 201, r.text
        got = r.json()
        t = Expected(
            id=got["id"],
            requester=requester,
            review=review,
            status="pending",
            max_attempts=max_attempts,
            updated_at=got["created_at"],
            events=["task.created"],
        )
        if takes:
            assert assigned_to is not None
            t.assign(assigned_to)
        assert got["status"] == t.status, got
        self.tasks[t.id] = t
        self.check(t, "create", "pending", changed=False)

    # --- requester actions ----------------------------------------------------------------

    def do_cancel(self, t: Expected, caller: str) -> None:
        def apply() -> None:
            if (t.status in HELD or t.status == "review") and t.attempt:
                t.end_attempt("cancelled")
            t.status = "cancelled"
            t.events.append("task.cancelled")

        code = self.requester_code(t, caller, CANCELLABLE)
        body = {"status": "cancelled", "reason": "enough"}
        self.act(t, "cancel", caller, "PATCH", f"/api/v1/tasks/{t.id}", body, code, apply)

    def do_retry(self, t: Expected, caller: str) -> None:
        def apply() -> None:
            t.status, t.assignee = "pending", None
            t.max_attempts = max(t.max_attempts, t.attempt + 1)
            t.events.append("task.retrying")

        code = self.requester_code(t, caller, RETRYABLE)
        self.act(t, "retry", caller, "POST", f"/api/v1/tasks/{t.id}/retry", None, code, apply)

    def do_answer(self, t: Expected, caller: str) -> None:
        def apply() -> None:
            t.status = "running"
            t.events.append("task.input_received")

        code = self.requester_code(t, caller, {"waiting_input"})
        path = f"/api/v1/tasks/{t.id}/input"
        self.act(t, "input", caller, "POST", path, {"answer": "yes"}, code, apply)

    def do_review(self, t: Expected, caller: str, approve: bool) -> None:
        if caller != ADMIN and caller == t.assignee:
            code = 403  # no one reviews their own work
        else:
            code = 200 if t.status == "review" else 409

        def apply() -> None:
            if approve:
                t.status = "completed"
                t.events.append("task.approved")
                return
            t.review_cycles += 1
            t.events.append("task.rejected")
            if t.review_cycles >= MAX_REVIEW_CYCLES:
                t.status = "failed"
                t.events.append("task.escalated")
            else:
                t.status, t.assignee = "pending", None
                t.max_attempts += 1

        body = {"verdict": "approved" if approve else "rejected", "feedback": "f"}
        path = f"/api/v1/tasks/{t.id}/review"
        self.act(t, "review", caller, "POST", path, body, code, apply)

    # --- worker actions -------------------------------------------------------------------

    def do_start(self, t: Expected, caller: str, fence: int | None) -> None:
        # Starting again what it already runs (a retry after a lost answer) changes nothing.
        repeat = (
            caller == t.assignee
            and t.status in ("running", "waiting_input")
            and fence in (None, t.attempt)
        )
        code = 200 if repeat else self.holder_code(t, caller, fence, {"assigned"})
        body = with_fence({}, fence) or None
        path = f"/api/v1/tasks/{t.id}/start"
        self.act(t, "start", caller, "POST", path, body, code, t.start_if_assigned, repeat=repeat)

    def do_progress(self, t: Expected, caller: str, fence: int | None) -> None:
        def apply() -> None:
            t.start_if_assigned()  # progress on an assigned task starts it first
            t.events.append("task.progress")

        code = self.holder_code(t, caller, fence, {"assigned", "running"})
        body = with_fence({"message": "half", "percent": 50}, fence)
        path = f"/api/v1/tasks/{t.id}/progress"
        self.act(t, "progress", caller, "POST", path, body, code, apply)

    def do_complete(self, t: Expected, caller: str, fence: int | None) -> None:
        def apply() -> None:
            t.start_if_assigned()
            t.end_attempt("completed")
            if t.review:
                t.status = "review"
                t.events.append("task.review_requested")
            else:
                t.status = "completed"
                t.events.append("task.completed")

        code = self.holder_code(t, caller, fence, {"assigned", "running"})
        repeat = code == 409 and self.ended(t, caller, fence, "completed")
        body = with_fence({"result": {"n": 1}, "summary": "done"}, fence)
        path = f"/api/v1/tasks/{t.id}/complete"
        code = 200 if repeat else code
        self.act(t, "complete", caller, "POST", path, body, code, apply, repeat=repeat)

    def do_fail(self, t: Expected, caller: str, fence: int | None, retryable: bool) -> None:
        def apply() -> None:
            t.end_attempt("failed")
            if retryable and t.attempt < t.max_attempts:
                t.status, t.assignee = "pending", None
                t.events.append("task.retrying")
            else:
                t.status = "failed"
                t.events += ["task.failed", "task.escalated"]

        code = self.holder_code(t, caller, fence, HELD)
        repeat = code == 409 and self.ended(t, caller, fence, "failed")
        code = 200 if repeat else code
        body = with_fence({"error": "boom", "retryable": retryable}, fence)
        path = f"/api/v1/tasks/{t.id}/fail"
        self.act(t, "fail", caller, "POST", path, body, code, apply, repeat=repeat)

    def do_request_input(self, t: Expected, caller: str, fence: int | None) -> None:
        def apply() -> None:
            t.status = "waiting_input"
            t.events.append("task.waiting_input")

        code = self.holder_code(t, caller, fence, {"running"})
        body = with_fence({"question": "which branch?"}, fence)
        path = f"/api/v1/tasks/{t.id}/input-request"
        self.act(t, "input-request", caller, "POST", path, body, code, apply)

    # --- rules: any call, by anyone -------------------------------------------------------

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.do_cancel(*self.pick(data, lambda t: t.requester, CANCELLABLE))

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        self.do_retry(*self.pick(data, lambda t: t.requester, RETRYABLE))

    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        self.do_answer(*self.pick(data, lambda t: t.requester, {"waiting_input"}))

    @rule(data=st.data(), approve=st.booleans())
    def review(self, data: st.DataObject, approve: bool) -> None:
        self.do_review(*self.pick(data, None, {"review"}), approve)

    @rule(data=st.data(), fence=fences)
    def start(self, data: st.DataObject, fence: int | None) -> None:
        self.do_start(*self.pick(data, lambda t: t.assignee, {"assigned"}), fence)

    @rule(data=st.data(), fence=fences)
    def progress(self, data: st.DataObject, fence: int | None) -> None:
        self.do_progress(*self.pick(data, lambda t: t.assignee, {"assigned", "running"}), fence)

    @rule(data=st.data(), fence=fences)
    def complete(self, data: st.DataObject, fence: int | None) -> None:
        self.do_complete(*self.pick(data, lambda t: t.assignee, {"assigned", "running"}), fence)

    @rule(data=st.data(), fence=fences, retryable=st.booleans())
    def fail(self, data: st.DataObject, fence: int | None, retryable: bool) -> None:
        self.do_fail(*self.pick(data, lambda t: t.assignee, HELD), fence, retryable)

    @rule(data=st.data(), fence=fences)
    def request_input(self, data: st.DataObject, fence: int | None) -> None:
        self.do_request_input(*self.pick(data, lambda t: t.assignee, {"running"}), fence)

    @rule(
        data=st.data(),
        what=st.sampled_from(["context", "priority", "both"]),
        by_worker=st.booleans(),
    )
    def patch(self, data: st.DataObject, what: str, by_worker: bool) -> None:
        t, caller = self.pick(data, lambda t: t.assignee if by_worker else t.requester)
        body: dict[str, Any] = {}
        if what in ("context", "both"):
            body["context"] = {"note": data.draw(st.integers(0, 9)), "gone": None}
        if what in ("priority", "both"):
            body["priority"] = data.draw(st.sampled_from(["low", "high", "critical"]))
        # The assignee may merge context; everything else is the requester's (or an admin's).
        if caller not in (t.requester, ADMIN) and not (what == "context" and caller == t.assignee):
            code = 403
        elif "priority" in body and t.status in TERMINAL:
            code = 409
        else:
            code = 200

        def apply() -> None:
            t.events.append("task.updated")

        self.act(t, "patch", caller, "PATCH", f"/api/v1/tasks/{t.id}", body, code, apply)

    @rule(data=st.data())
    def comment(self, data: st.DataObject) -> None:
        t, caller = self.pick(data, None)

        def apply() -> None:
            t.events.append("task.commented")

        path = f"/api/v1/tasks/{t.id}/comments"
        self.act(t, "comment", caller, "POST", path, {"body": "note"}, 201, apply)

    # --- rule: the next step a well-behaved party takes -----------------------------------

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """Drives tasks deep into the lifecycle, where random calls seldom get."""
        self.next_step(data, sorted(self.tasks))

    @rule(data=st.data())
    def advance_open(self, data: st.DataObject) -> None:
        """The same, for a task someone is working on, if any."""
        working = HELD | {"review"}
        self.next_step(data, sorted(i for i, t in self.tasks.items() if t.status in working))

    def next_step(self, data: st.DataObject, ids: list[str]) -> None:
        if not ids:
            return
        t = self.tasks[data.draw(st.sampled_from(ids), label="task")]
        worker, requester = t.assignee or t.requester, t.requester
        fence = data.draw(st.sampled_from([None, t.attempt or None]), label="fence")
        steps: dict[str, list[str]] = {
            "assigned": ["start", "progress", "complete", "fail", "cancel"],
            "running": ["progress", "complete", "fail", "input-request", "input-request", "cancel"],
            "waiting_input": ["answer", "answer", "fail", "cancel"],
            "review": ["approve", "approve", "reject", "cancel"],
            "pending": ["cancel"],
            "blocked": ["cancel"],
            "completed": [],
            "failed": ["retry"],
            "timed_out": ["retry"],
            "cancelled": ["retry"],
        }
        if not steps[t.status]:
            return
        step = data.draw(st.sampled_from(steps[t.status]), label="step")
        reviewer = data.draw(st.sampled_from(["mallory", ADMIN, *WORKERS]), label="reviewer")
        match step:
            case "start":
                self.do_start(t, worker, fence)
            case "progress":
                self.do_progress(t, worker, fence)
            case "complete":
                self.do_complete(t, worker, fence)
            case "fail":
                self.do_fail(t, worker, fence, data.draw(st.booleans(), label="retryable"))
            case "input-request":
                self.do_request_input(t, worker, fence)
            case "answer":
                self.do_answer(t, requester)
            case "approve" | "reject":
                self.do_review(t, reviewer, step == "approve")
            case "cancel":
                self.do_cancel(t, requester)
            case "retry":
                self.do_retry(t, requester)

    # --- the whole board ------------------------------------------------------------------

    @invariant()
    def board_matches_the_model(self) -> None:
        r = self.call("GET", "/api/v1/tasks?limit=500", "alice")
        items = {t["id"]: t for t in r.json()["items"]}
        assert items.keys() == self.tasks.keys()
        for tid, t in self.tasks.items():
            got = items[tid]
            assert got["status"] in STATES
            assert (got["status"], got["assignee"], got["attempt"], got["updated_at"]) == (
                t.status,
                t.assignee,
                t.attempt,
                t.updated_at,
            ), got


TaskApiMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_task_api_state_machine = TaskApiMachine.TestCase


# --- found by the machine -----------------------------------------------------------------


def test_refused_patch_with_cancel_changes_nothing(tmp_path: Path) -> None:
    api = SyncApi(tmp_path)
    try:
        assert api.request("POST", "/api/v1/agents", "w1", {}).status_code == 201
        task = api.request("POST", "/api/v1/tasks", "alice", {"title": "t", "assigned_to": "w1"})
        tid = task.json()["id"]
        done = api.request("POST", f"/api/v1/tasks/{tid}/complete", "w1")
        assert done.json()["status"] == "completed"
        before = api.request("GET", f"/api/v1/tasks/{tid}", "alice").json()
        body = {"status": "cancelled", "context": {"late": True}}
        r = api.request("PATCH", f"/api/v1/tasks/{tid}", "alice", body)
        assert r.status_code == 409, r.text
        after = api.request("GET", f"/api/v1/tasks/{tid}", "alice").json()
        assert after["context"] == before["context"]
        assert after["updated_at"] == before["updated_at"]
    finally:
        api.close()
