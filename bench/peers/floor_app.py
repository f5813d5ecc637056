"""The floor under dispatchd's SQLite figures: the least a server of the same design must do.

A Starlette app under uvicorn (httptools, uvloop), the stack dispatchd serves on, that
answers the routes the peers benchmark's agents call (`dispatchd_peer.py`: register, batch
create, claim, complete, batch completion) with the writes dispatchd's lifecycle makes, on
dispatchd's own schema (its migrations: the same tables and indexes), and nothing else:

* batch create: each task's row (the columns a new task fills) and its `task.created`
  event, the counters; answered with each task as JSON;
* claim: the queue head read with dispatchd's own claim query (its index and capability
  test), the agent's slot and load in one checked statement, each task set running
  (version-checked), its attempt, its `task.assigned` and `task.started` events, the
  counters; answered with the tasks as JSON;
* completion (one, or a batch): each task set completed (checked against its holder and
  version), its attempt closed, its `task.completed` event, the agent's load, the counters.

Writes run on the event loop and share one commit per turn of the loop, as dispatchd's do
(`store/sqlite_commits.py`); each request is answered after the commit that holds its writes,
with the same `synchronous` setting (WAL, NORMAL). What it leaves out is what makes
dispatchd a product rather than this: authentication, validation of the bodies, the error
form, the domain's transitions and records, waiting claims, push assignment, the event
followers (metrics, notifications, webhooks), leases and deadlines, savepoints. Its rates are
therefore an upper bound for this design on this machine, not a competitor.

Run by `peers.py --peers floor` (see bench/peers/README.md); alone:
`python floor_app.py --db PATH --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from pydantic_core import from_json, to_json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatchd.domain.ids import isoformat, new_id
from dispatchd.store import migrations

LEASE = timedelta(seconds=60)

# dispatchd's claim query on SQLite (`Queries.claimable`, an agent of no room and no owner).
CLAIM = (
    "SELECT * FROM tasks INDEXED BY tasks_queue WHERE status = 'pending' AND scope IS NULL "
    "AND (not_before IS NULL OR not_before <= ?1) "
    "AND (excluded_agent IS NULL OR excluded_agent <> ?2) "
    "AND (assigned_to = ?2 OR (assigned_to IS NULL AND NOT EXISTS (SELECT 1 FROM "
    "json_each(tasks.capabilities) c WHERE c.value NOT IN (SELECT value FROM json_each(?3))))) "
    "ORDER BY priority_rank DESC, due_at IS NULL, due_at, created_at, id LIMIT ?4"
)
INSERT_TASK = (
    "INSERT INTO tasks (id, title, prompt, status, priority, priority_rank, capabilities, "
    "requester, attempt, max_attempts, context, depends_on, review, escalated, labels, "
    "requeues, review_cycles, created_at, updated_at, version) VALUES (?, ?, ?, 'pending', "
    "'medium', 1, ?, ?, 0, 3, ?, '[]', 0, 0, '[]', 0, 0, ?, ?, 1)"
)
INSERT_EVENT = (
    "INSERT INTO events (type, task_id, agent_id, data, created_at) VALUES (?, ?, ?, ?, ?)"
)
TAKE_SLOT = (
    "UPDATE agents SET active = active + ?1, last_assigned_at = ?2 "
    "WHERE id = ?3 AND status = 'ready' AND active + ?1 <= coalesce(max_concurrent, 1)"
)
START = (
    "UPDATE tasks SET status = 'running', assignee = ?, attempt = ?, lease_expires_at = ?, "
    "started_at = ?, updated_at = ?, version = ? WHERE id = ? AND version = ?"
)
INSERT_ATTEMPT = (
    "INSERT INTO attempts (task_id, number, agent_id, assigned_at, started_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
COMPLETE = (
    "UPDATE tasks SET status = 'completed', lease_expires_at = NULL, finished_at = ?1, "
    "updated_at = ?1, version = version + 1 WHERE id = ?2 AND assignee = ?3 "
    "AND status = 'running' RETURNING *"
)
CLOSE_ATTEMPT = (
    "UPDATE attempts SET ended_at = ?, outcome = 'completed' WHERE task_id = ? AND number = ?"
)
RELEASE = "UPDATE agents SET active = active - ? WHERE id = ?"
COUNT = "UPDATE task_counts SET n = n + ? WHERE status = ?"


class Commits:
    """Writes of one turn of the loop share one transaction, committed at the next turn;
    each writer is answered once that commit is done."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.waiting: list[asyncio.Future[None]] = []

    def join(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self.waiting:
            self.conn.execute("BEGIN IMMEDIATE")
            loop.call_soon(self._commit)
        done: asyncio.Future[None] = loop.create_future()
        self.waiting.append(done)
        return done

    def _commit(self) -> None:
        waiting, self.waiting = self.waiting, []
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            for done in waiting:
                done.set_exception(exc)
            return
        for done in waiting:
            done.set_result(None)


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA foreign_keys = OFF")
    for migration in migrations.load("sqlite"):
        conn.executescript(migration.sql)
    for status in ("pending", "running", "completed"):
        conn.execute("INSERT OR IGNORE INTO task_counts (status, n) VALUES (?, 0)", (status,))
    return conn


def make_app(conn: sqlite3.Connection) -> Starlette:
    commits = Commits(conn)
    caps_of: dict[str, str] = {}
    columns = [row[1] for row in conn.execute("PRAGMA table_info(tasks)")]

    def decoded(task: dict[str, Any]) -> dict[str, Any]:
        """A task row as its answer: the JSON columns decoded."""
        for name in ("capabilities", "context", "depends_on", "labels", "cost", "attempt_cost"):
            task[name] = from_json(task[name])
        return task

    def answer(doc: Any) -> Response:
        return Response(to_json(doc), media_type="application/json")

    def event(kind: str, task_id: str, agent_id: str | None, data: dict[str, Any], at: str):
        return (kind, task_id, agent_id, to_json(data).decode(), at)

    async def register(request: Request) -> Response:
        agent_id = request.headers["x-agent-id"]
        body = from_json(await request.body())
        now = isoformat(datetime.now(UTC))
        caps_of[agent_id] = to_json(body["capabilities"]).decode()
        done = commits.join()
        conn.execute(
            "INSERT OR REPLACE INTO agents (id, capabilities, status, max_concurrent, drained, "
            "created_at, updated_at, version) VALUES (?, ?, 'ready', ?, 0, ?, ?, 1)",
            (agent_id, caps_of[agent_id], body.get("max_concurrent", 1), now, now),
        )
        await done
        return answer({"id": agent_id, "status": "ready"})

    async def create_batch(request: Request) -> Response:
        requester = request.headers["x-agent-id"]
        body = from_json(await request.body())
        now = isoformat(datetime.now(UTC))
        tasks, rows, events = [], [], []
        for spec in body["tasks"]:
            task_id = new_id()
            caps = to_json(spec.get("capabilities", [])).decode()
            context = to_json(spec.get("context", {})).decode()
            rows.append((task_id, spec["title"], "", caps, requester, context, now, now))
            events.append(event("task.created", task_id, None, {"status": "pending"}, now))
            task = dict.fromkeys(columns)
            task.update(
                id=task_id,
                title=spec["title"],
                prompt="",
                status="pending",
                priority="medium",
                capabilities=spec.get("capabilities", []),
                requester=requester,
                attempt=0,
                max_attempts=3,
                context=spec.get("context", {}),
                depends_on=[],
                labels=[],
                created_at=now,
                updated_at=now,
                version=1,
            )
            tasks.append(task)
        done = commits.join()
        conn.executemany(INSERT_TASK, rows)
        conn.executemany(INSERT_EVENT, events)
        conn.execute(COUNT, (len(rows), "pending"))
        await done
        return answer({"items": tasks})

    async def claim(request: Request) -> Response:
        agent_id = request.headers["x-agent-id"]
        body = from_json(await request.body())
        at = datetime.now(UTC)
        now, lease = isoformat(at), isoformat(at + LEASE)
        done = commits.join()
        cur = conn.execute(CLAIM, (now, agent_id, caps_of[agent_id], body.get("max_tasks", 1)))
        names = [d[0] for d in cur.description]
        found = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        taken = found and conn.execute(TAKE_SLOT, (len(found), now, agent_id)).rowcount == 1
        out = []
        if taken:
            starts, attempts, events = [], [], []
            for t in found:
                number, version = t["attempt"] + 1, t["version"] + 1
                starts.append((agent_id, number, lease, now, now, version, t["id"], t["version"]))
                attempts.append((t["id"], number, agent_id, now, now))
                data = {"agent_id": agent_id, "attempt": number}
                events.append(event("task.assigned", t["id"], agent_id, data, now))
                events.append(event("task.started", t["id"], agent_id, data, now))
                t.update(
                    status="running",
                    assignee=agent_id,
                    attempt=number,
                    version=version,
                    started_at=now,
                    lease_expires_at=lease,
                    updated_at=now,
                )
                out.append(decoded(t))
            if conn.executemany(START, starts).rowcount != len(starts):
                raise RuntimeError("a task changed meanwhile")
            conn.executemany(INSERT_ATTEMPT, attempts)
            conn.executemany(INSERT_EVENT, events)
            conn.executemany(COUNT, ((-len(out), "pending"), (len(out), "running")))
        await done
        return answer({"tasks": out})

    def finish(agent_id: str, task_ids: list[str], now: str) -> list[dict[str, Any]]:
        items, events = [], []
        for task_id in task_ids:
            cur = conn.execute(COMPLETE, (now, task_id, agent_id))
            row = cur.fetchone()
            if row is None:
                items.append({"task_id": task_id, "ok": False})
                continue
            task = decoded(dict(zip([d[0] for d in cur.description], row, strict=True)))
            conn.execute(CLOSE_ATTEMPT, (now, task_id, task["attempt"]))
            data = {"attempt": task["attempt"]}
            events.append(event("task.completed", task_id, agent_id, data, now))
            items.append({"task_id": task_id, "ok": True, "task": task})
        if events:
            conn.executemany(INSERT_EVENT, events)
            conn.execute(RELEASE, (len(events), agent_id))
            conn.executemany(COUNT, ((-len(events), "running"), (len(events), "completed")))
        return items

    async def complete(request: Request) -> Response:
        agent_id = request.headers["x-agent-id"]
        await request.body()
        done = commits.join()
        items = finish(agent_id, [request.path_params["task_id"]], isoformat(datetime.now(UTC)))
        await done
        if not items[0]["ok"]:
            return Response(b'{"error":{"code":"conflict"}}', status_code=409)
        return answer(items[0]["task"])

    async def complete_batch(request: Request) -> Response:
        agent_id = request.headers["x-agent-id"]
        body = from_json(await request.body())
        done = commits.join()
        ids = [item["task_id"] for item in body["items"]]
        items = finish(agent_id, ids, isoformat(datetime.now(UTC)))
        await done
        return answer({"items": items})

    api = "/api/v1"
    return Starlette(
        routes=[
            Route(f"{api}/agents", register, methods=["POST"]),
            Route(f"{api}/tasks/batch", create_batch, methods=["POST"]),
            Route(f"{api}/tasks/claim", claim, methods=["POST"]),
            Route(f"{api}/tasks/batch/complete", complete_batch, methods=["POST"]),
            Route(f"{api}/tasks/{{task_id}}/complete", complete, methods=["POST"]),
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = make_app(open_db(args.db))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
