"""Anything accepted can be read back (issue 14, point 2; SPEC §8 "Safe with bad input").

A property test over the input models: tasks (one by one and in batches), agents, webhooks,
rooms and schedules are created from values at the edges (times from year 1 to year 9999
with odd offsets, numbers past 64 bits, astral, right-to-left and combining characters,
strings at their length limits), then read, listed, claimed by a registered agent and
completed. No answer may be a 5xx and no background job may fail on what was accepted; a
value the store cannot keep is a 422 that names its field.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dispatchd.api.ops import create_ops_app
from dispatchd.domain.lifecycle import merge_patch
from dispatchd.runtime import Runtime
from tests.api.conftest import app_for, as_agent, make_settings
from tests.api.helpers import ADMIN, BOTH, eventually
from tests.support.receiver import Receiver

pytestmark = BOTH

EXAMPLES = 25

# --- strings --------------------------------------------------------------------------------

ODD_CHARACTERS = st.sampled_from(
    [
        "\U0001f600",  # emoji, astral plane
        "\U0001f469\u200d\U0001f4bb",  # a ZWJ sequence
        "\U00020000",  # CJK extension B
        "\U0010fffd",  # the last plane's last character
        "\u05d0\u05d1",  # Hebrew
        "\u0627\u0644",  # Arabic
        "\u202e",  # right-to-left override
        "\u200f",  # right-to-left mark
        "e\u0301",  # a combining acute
        "Z\u0336\u0337\u0338",  # stacked combining marks
        "\ufeff",  # byte order mark
        "\u2028",  # line separator
        "'\";--",
        "\\",
    ]
)
PLAIN = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
TEXT_PIECE = ODD_CHARACTERS | st.text(PLAIN, min_size=1, max_size=3)


def texts(max_len: int, min_len: int = 0) -> st.SearchStrategy[str]:
    """Unicode text; sometimes exactly at its limit, in astral characters (a limit counts
    characters, not bytes or UTF-16 units)."""
    built = st.lists(TEXT_PIECE, max_size=12).map("".join)
    at_limit = st.sampled_from(["\U0001f600", "\u05d0", "e\u0301", "x"]).map(
        lambda c: (c * max_len)[:max_len]
    )
    return (built.map(lambda s: s[:max_len]) | at_limit).filter(lambda s: len(s) >= min_len)


def tag_text(n: int) -> st.SearchStrategy[str]:
    """A tag (no whitespace, no comma) ending in `#n`, unique to its example."""
    suffix = f"#{n}"
    return texts(100 - len(suffix)).map(
        lambda s: "".join(c for c in s if not c.isspace() and c != ",") + suffix
    )


ID_BODY = st.from_regex(r"\A[A-Za-z0-9#@][A-Za-z0-9._:@#/+-]{0,100}\Z")
# An agent's id is a path segment of its own routes: no '/' (a 422 naming `id`).
AGENT_ID = st.from_regex(r"\A[A-Za-z0-9#@][A-Za-z0-9._:@#+-]{0,100}\Z")

# --- numbers and JSON -----------------------------------------------------------------------

BIG_NUMBERS = st.sampled_from(
    [
        2**63 - 1,
        2**63,
        -(2**63),
        -(2**63) - 1,
        2**64,
        10**40,
        -(10**100),
        10**1000,
        1e308,
        -1e308,
        5e-324,
        -0.0,
        0.1,
    ]
)
SCALARS = st.none() | st.booleans() | st.integers() | BIG_NUMBERS | texts(40)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(texts(12), children, max_size=4)
    ),
    max_leaves=15,
)
CONTEXTS = st.dictionaries(texts(20), JSON_VALUES, max_size=5)

# --- times ----------------------------------------------------------------------------------

OFFSETS = st.sampled_from([0, 1, -1, 345, 525, 765, 839, 840, -720, -570, -59, 59]) | st.integers(
    -14 * 60, 14 * 60
)
EDGE_TIMES = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00-12:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-12:00",
        "9999-12-31T23:59:59.999999+14:00",
        "9999-12-31T23:59:59.999999Z",
        "1969-12-31T23:59:59.999999-00:01",
        "1970-01-01T00:00:00+00:00",
        "2038-01-19T03:14:08Z",
        "2000-02-29T12:00:00+05:45",
    ]
)


def _time_text(when: datetime, offset_min: int, digits: int) -> str:
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    fraction = f".{when.microsecond:06d}"[: digits + 1] if digits else ""
    zone = "Z" if offset_min == 0 and digits % 2 else f"{sign}{hours:02d}:{minutes:02d}"
    return f"{when.replace(microsecond=0).isoformat()}{fraction}{zone}"


TIMES = EDGE_TIMES | st.builds(
    _time_text,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    OFFSETS,
    st.integers(0, 6),
)


def utc_of(text: str) -> datetime | None:
    """The UTC time `text` names, or None where UTC cannot write it (before year 1 or past
    9999): such a time must be refused."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return None


def written(value: datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# --- what one example creates ----------------------------------------------------------------


def task_bodies(n: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"title": texts(500, min_len=1), "capabilities": st.just([f"cap#{n}"])},
        optional={
            "prompt": texts(200_000) | texts(2000),
            "priority": st.sampled_from(["low", "medium", "high", "critical"]),
            "run_at": TIMES,
            "due_at": TIMES,
            "timeout_s": st.sampled_from([1, 7 * 24 * 3600]) | st.integers(1, 7 * 24 * 3600),
            "input_timeout_s": st.sampled_from([1, 30 * 24 * 3600]),
            "max_attempts": st.sampled_from([1, 100]),
            "escalate_to": tag_text(n),
            "model": texts(200, min_len=1),
            "labels": st.lists(tag_text(n), max_size=3, unique=True),
            "context": CONTEXTS,
            "idempotency_key": texts(200, min_len=1).map(lambda s: f"{s[:190]}#{n}"),
            "max_cost_usd": st.sampled_from([0.0, 1e9, 5e-324]) | st.floats(0, 1e9),
        },
    )


def scenarios(n: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "n": st.just(n),
            "tasks": st.lists(task_bodies(n), min_size=1, max_size=3),
            "batch": st.booleans(),
            "agent": st.fixed_dictionaries(
                {"id": AGENT_ID.map(lambda s: f"{s}.{n}")},
                optional={
                    "description": texts(2000),
                    "dispatch_model": texts(200, min_len=1),
                    "owner": ID_BODY,
                    "extra_tag": tag_text(n),
                    "weight": st.floats(1e-300, 1) | st.just(1.0),
                },
            ),
            "result": JSON_VALUES,
            "summary": texts(2000),
            "progress": texts(2000),
            "percent": st.sampled_from([0, 100, 5e-324, 99.99999999999999]),
            "patch": CONTEXTS,
            "cost": st.fixed_dictionaries(
                {},
                optional={
                    "usd": st.floats(0, 1e9),
                    "input_tokens": st.sampled_from([0, 10**15]) | st.integers(0, 10**15),
                    "output_tokens": st.sampled_from([0, 10**15]),
                },
            ),
            "room": st.none()
            | st.fixed_dictionaries(
                {"name": texts(200, min_len=1), "prompt": texts(20_000, min_len=1)},
                optional={"workspace": texts(1000, min_len=1), "context": CONTEXTS},
            ),
            "webhook": st.none()
            | st.fixed_dictionaries(
                {"description": texts(2000), "path": texts(100)},
                optional={
                    "types": st.sampled_from([["task.*"], ["agent"], [], ["task.completed"]])
                },
            ),
            "schedule": st.none()
            | st.fixed_dictionaries(
                {
                    "name": texts(200, min_len=1),
                    "schedule": st.sampled_from(
                        ["0 0 29 2 *", "59 23 31 12 *", "@yearly", "* * * * *", "0 9 * * 1-5"]
                    ),
                    "timezone": st.sampled_from(
                        [
                            "UTC",
                            "Pacific/Kiritimati",
                            "Etc/GMT+12",
                            "Asia/Kathmandu",
                            "Australia/Lord_Howe",
                            "America/St_Johns",
                        ]
                    ),
                    "template": task_bodies(n),
                    "catch_up_s": st.sampled_from([0, 31 * 24 * 3600]),
                    "misfire": st.sampled_from(["skip", "latest", "all"]),
                }
            ),
        }
    )


# --- checks ---------------------------------------------------------------------------------


def as_numbers(value: Any) -> Any:
    """JSON compared by value: PostgreSQL's jsonb answers 1e308 as 1000…0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [as_numbers(v) for v in value]
    return {k: as_numbers(v) for k, v in value.items()}


def no_5xx(r: httpx.Response) -> httpx.Response:
    assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r


def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    no_5xx(r)
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


def refused_for_time(r: httpx.Response, body: dict[str, Any], fields: tuple[str, ...]) -> bool:
    """Whether `body` holds a time UTC cannot write; then `r` must be a 422 naming it."""
    bad = [f for f in fields if f in body and utc_of(body[f]) is None]
    if not bad:
        return False
    assert r.status_code == 422, f"{bad}: {r.status_code} {r.text}"
    message = r.json()["error"]["message"]
    assert any(f in message for f in bad), message
    return True


def check_task(task: dict[str, Any], body: dict[str, Any], *, fired: bool = False) -> None:
    # A schedule's task is titled with its firing time after the template's title, which
    # is cut short to keep the whole within the title's limit.
    title = task["title"]
    assert title == body["title"] or (
        fired and len(title) <= 500 and title.startswith(body["title"][: 500 - 40])
    )
    assert task["prompt"] == body.get("prompt", "")
    context = dict(task["context"])
    if fired:  # and its context says which schedule fired it, when
        assert set(context) >= {"schedule_id", "fired_at"}
        del context["schedule_id"], context["fired_at"]
    assert as_numbers(context) == as_numbers(json.loads(json.dumps(body.get("context", {}))))
    assert task["labels"] == body.get("labels", [])
    for field in ("run_at", "due_at"):
        if field in body:
            utc = utc_of(body[field])
            assert utc is not None
            assert task[field] == written(utc), (field, body[field])
    for field in ("model", "owner", "escalate_to", "timeout_s", "max_attempts"):
        if field in body:
            assert task[field] == body[field], field


def encode(value: Any) -> bytes:
    # Raw UTF-8, not \u escapes: the server must take characters as they come on the wire.
    return json.dumps(value, ensure_ascii=False).encode()


class Scenario:
    """One example, played against one runtime."""

    def __init__(self, client: httpx.AsyncClient, receiver: Receiver, s: dict[str, Any]) -> None:
        self.client = client
        self.receiver = receiver
        self.s = s
        self.n = s["n"]
        self.cap = f"cap#{self.n}"
        self.agent = s["agent"]["id"]
        self.requester = as_agent(f"requester-{self.n}")
        self.runnable: dict[str, dict[str, Any]] = {}  # task id → the body it came from
        self.deferred: list[str] = []
        # A key names one task: the example's tasks each have their own.
        for i, body in enumerate(s["tasks"]):
            if "idempotency_key" in body:
                body["idempotency_key"] += f".{i}"
        # A task with an owner goes to its owner's agents only: the example's tasks are
        # all its agent's owner's.
        if "owner" in s["agent"]:
            for body in [*s["tasks"], *([s["schedule"]["template"]] if s["schedule"] else [])]:
                body["owner"] = s["agent"]["owner"]

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        return no_5xx(
            await self.client.post(
                url, content=encode(body), headers={**headers, "Content-Type": "application/json"}
            )
        )

    def keep(self, task: dict[str, Any], body: dict[str, Any]) -> None:
        check_task(task, body)
        run_at = utc_of(body["run_at"]) if "run_at" in body else None
        if run_at is not None and run_at > datetime.now(UTC):
            assert task["status"] == "blocked", task["status"]
            self.deferred.append(task["id"])
        else:
            self.runnable[task["id"]] = body

    async def create_tasks(self) -> None:
        bodies = self.s["tasks"]
        if self.s["batch"]:
            r = await self.post("/api/v1/tasks/batch", {"tasks": bodies}, self.requester)
            if any(refused_for_time(r, b, ("run_at", "due_at")) for b in bodies):
                return
            created = ok(r, 201)["items"]
            assert len(created) == len(bodies)
            for task, body in zip(created, bodies, strict=True):
                self.keep(task, body)
            return
        for body in bodies:
            r = await self.post("/api/v1/tasks", body, self.requester)
            if refused_for_time(r, body, ("run_at", "due_at")):
                continue
            self.keep(ok(r, 201), body)

    async def register(self) -> None:
        a = self.s["agent"]
        caps: dict[str, float] = {self.cap: 1.0}
        if "extra_tag" in a:
            caps[a["extra_tag"]] = a.get("weight", 1.0)
        body: dict[str, Any] = {"capabilities": caps, "max_concurrent": 10_000}
        for field in ("description", "dispatch_model", "owner"):
            if field in a:
                body[field] = a[field]
        if self.s["room"] is not None:
            body["room"] = f"room-{self.n}"
        out = ok(await self.post("/api/v1/agents", body, as_agent(self.agent)), 201)
        self.token = out["token"]
        agent = ok(await self.client.get(f"/api/v1/agents/{quote(self.agent, safe='')}"))
        assert agent["capabilities"] == caps
        for field in ("description", "dispatch_model", "owner"):
            if field in a:
                assert agent[field] == a[field], field

    async def room(self) -> None:
        room = self.s["room"]
        if room is None:
            return
        room_id = f"room-{self.n}"
        body = {"id": room_id, "name": room["name"]}
        if "workspace" in room:
            body["workspace"] = room["workspace"]
        created = ok(await self.post("/api/v1/rooms", body, ADMIN), 201)
        assert created["name"] == room["name"]
        assert created.get("workspace") == room.get("workspace")
        dispatch = {
            "prompt": room["prompt"],
            "capabilities": [self.cap],
            "context": room.get("context", {}),
        }
        r = await self.post(f"/api/v1/rooms/{room_id}/dispatch", dispatch, self.requester)
        if r.status_code == 422 and not room["prompt"].strip():
            return
        task = ok(r, 201)
        assert task["prompt"] == room["prompt"]
        self.runnable[task["id"]] = {"room": room_id}
        ok(await self.client.get(f"/api/v1/rooms/{room_id}", headers=ADMIN))
        ok(await self.client.get(f"/api/v1/rooms/{room_id}/history", headers=ADMIN))

    async def webhook(self) -> None:
        hook = self.s["webhook"]
        if hook is None:
            return
        body = {
            "url": self.receiver.url("/" + quote(hook["path"], safe="")),
            "description": hook["description"],
            "types": hook.get("types", []),
        }
        created = ok(await self.post("/api/v1/webhooks", body, ADMIN), 201)["webhook"]
        got = ok(await self.client.get(f"/api/v1/webhooks/{created['id']}", headers=ADMIN))
        assert got["description"] == hook["description"]
        assert got["url"] == body["url"]

    async def schedule(self) -> None:
        sched = self.s["schedule"]
        if sched is None:
            return
        template = {k: v for k, v in sched["template"].items() if k != "idempotency_key"}
        body = {
            "name": sched["name"],
            "schedule": sched["schedule"],
            "timezone": sched["timezone"],
            "task_template": template,
            "catch_up_s": sched["catch_up_s"],
            "misfire": sched["misfire"],
        }
        r = await self.post("/api/v1/schedules", body, ADMIN)
        if refused_for_time(r, template, ("run_at", "due_at")):
            return
        created = ok(r, 201)
        assert created["name"] == sched["name"]
        got = ok(await self.client.get(f"/api/v1/schedules/{created['id']}", headers=ADMIN))
        assert got["timezone"] == sched["timezone"]
        # Fire it now: the task it makes is the template's.
        fired = ok(await self.post(f"/api/v1/schedules/{created['id']}/run", {}, ADMIN), 201)
        check_task(fired, template, fired=True)
        self.keep(fired, {**template, "title": fired["title"], "context": fired["context"]})
        # Its next firing must not hold up the sweeper: pause it.
        ok(await self.post(f"/api/v1/schedules/{created['id']}/pause", {}, ADMIN))

    async def read_and_list(self) -> None:
        for task_id, body in self.runnable.items():
            detail = ok(await self.client.get(f"/api/v1/tasks/{task_id}"))
            if "title" in body:
                check_task(detail, body)
            ok(await self.client.get(f"/api/v1/tasks/{task_id}/events"))
            ok(await self.client.get(f"/api/v1/tasks/{task_id}/explain"))
        labels = {label for b in self.runnable.values() for label in b.get("labels", [])}
        for label in labels:
            listed = ok(await self.client.get("/api/v1/tasks", params={"label": label}))
            assert listed["items"], label
        ok(await self.client.get("/api/v1/tasks", params={"capability": self.cap}))
        ok(await self.client.get("/api/v1/agents", headers=ADMIN))
        ok(await self.client.get("/api/v1/stats", headers=ADMIN))

    async def work(self) -> None:
        worker = {**as_agent(self.agent), "Authorization": f"Bearer {self.token}"}
        claimed: dict[str, int] = {}
        for _ in range(50):
            if set(claimed) >= set(self.runnable):
                break
            r = await self.post("/api/v1/tasks/claim", {"max_tasks": 100, "wait_s": 0.2}, worker)
            for task in ok(r)["tasks"]:
                claimed[task["id"]] = task["attempt"]
        assert set(claimed) == set(self.runnable), (claimed, self.runnable)
        for task_id, attempt in claimed.items():
            progress = {"attempt": attempt, "message": self.s["progress"]}
            progress["percent"] = self.s["percent"]
            task = ok(await self.post(f"/api/v1/tasks/{task_id}/progress", progress, worker))
            assert task["progress"]["message"] == self.s["progress"]
            before = ok(await self.client.get(f"/api/v1/tasks/{task_id}"))["context"]
            patched = ok(
                await self.client.patch(
                    f"/api/v1/tasks/{task_id}",
                    content=encode({"context": self.s["patch"]}),
                    headers={**ADMIN, "Content-Type": "application/json"},
                )
            )
            assert as_numbers(patched["context"]) == as_numbers(
                merge_patch(before, json.loads(json.dumps(self.s["patch"])))
            )
            body = {
                "attempt": attempt,
                "result": self.s["result"],
                "summary": self.s["summary"],
                "cost": self.s["cost"],
            }
            done = ok(await self.post(f"/api/v1/tasks/{task_id}/complete", body, worker))
            # A reported cost over the task's budget fails it instead (docs/costs.md).
            limit = self.runnable[task_id].get("max_cost_usd")
            over = limit is not None and round(self.s["cost"].get("usd", 0.0), 9) > limit
            assert done["status"] == ("failed" if over else "completed"), done
            detail = ok(await self.client.get(f"/api/v1/tasks/{task_id}"))
            assert as_numbers(detail["result"]) == as_numbers(
                json.loads(json.dumps(self.s["result"]))
            )
        for task_id in self.deferred:
            r = await self.client.patch(
                f"/api/v1/tasks/{task_id}", json={"status": "cancelled"}, headers=ADMIN
            )
            assert ok(r)["status"] == "cancelled"


def jobs_in_error(runtime: Runtime) -> dict[str, dict[str, Any]]:
    return {
        name: status.describe()
        for name, status in runtime.jobs.all.items()
        if status.errors or status.restarts or status.down
    }


def test_values_at_the_edges_round_trip_through_the_lifecycle(
    tmp_path: Path, database_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dispatchd")
    numbers = itertools.count()
    with asyncio.Runner() as runner, Receiver() as receiver:
        runtime = Runtime.build(
            make_settings(
                tmp_path,
                database_url,
                # Room for a batch of prompts at their limit in four-byte characters.
                server={"max_body_bytes": 8 * 1024 * 1024},
                assignment={"tick_interval_ms": 50},
                webhooks={"backoff_base_ms": 40, "max_attempts": 3},
            )
        )
        runner.run(runtime.__aenter__())
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app_for(runtime)),
            base_url="http://dispatchd.test",
            headers={"X-Agent-ID": "reader"},
            timeout=30,
        )
        ops = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_ops_app(runtime)), base_url="http://ops.test"
        )
        try:

            @hsettings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=[
                    HealthCheck.too_slow,
                    HealthCheck.filter_too_much,
                    HealthCheck.data_too_large,
                    HealthCheck.large_base_example,
                ],
            )
            @given(data=st.data())
            def check(data: st.DataObject) -> None:
                scenario = Scenario(client, receiver, data.draw(scenarios(next(numbers))))
                runner.run(play(scenario))
                assert not jobs_in_error(runtime), jobs_in_error(runtime)

            async def play(scenario: Scenario) -> None:
                await scenario.webhook()
                await scenario.room()
                await scenario.create_tasks()
                await scenario.schedule()
                await scenario.register()
                await scenario.read_and_list()
                await scenario.work()

            check()

            async def settled() -> bool:
                # Every follower has read the log to its end, and no job is down.
                r = await ops.get("/health")
                return r.status_code == 200 and not jobs_in_error(runtime)

            runner.run(eventually(settled, "/health to answer 200 with every job running"))
            # Let the followers (webhooks, notifications, metrics) reach the last events.
            runner.run(asyncio.sleep(0.5))
            health = runner.run(ops.get("/health"))
            assert health.status_code == 200, health.text
            assert not jobs_in_error(runtime), jobs_in_error(runtime)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, [r.getMessage() for r in errors[:5]]
        finally:
            runner.run(client.aclose())
            runner.run(ops.aclose())
            runner.run(runtime.__aexit__(None, None, None))


# --- regressions found by the property ------------------------------------------------------


@pytest.mark.parametrize("field", ["run_at", "due_at"])
@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"])
async def test_a_time_outside_utc_is_a_422_naming_it_in_a_batch(
    client: httpx.AsyncClient, field: str, when: str
) -> None:
    bodies = [{"title": "fine"}, {"title": "t", field: when}]
    r = await client.post("/api/v1/tasks/batch", json={"tasks": bodies})
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]
    assert (await client.get("/api/v1/tasks")).json()["items"] == []
