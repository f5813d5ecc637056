"""The write transactions of the store, each written once as a body (see `connector`).

A body yields its statements and receives their results; it does no I/O, so it runs the
same on both databases. Every update names the version it was computed from and a row
that moved on fails the whole transaction (`ConcurrentUpdate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, assert_never

from dispatchd.domain.ids import utcnow
from dispatchd.domain.models import Agent, Event, Task, TaskStatus
from dispatchd.errors import AgentUnavailable, ConcurrentUpdate, Conflict, NotFound
from dispatchd.store.base import (
    RETENTION_CURSOR,
    AddCost,
    AdvanceCursor,
    AppendComment,
    AppendEvent,
    AppendProgress,
    AppendReview,
    ClaimPlan,
    ClaimQuery,
    ClaimView,
    DeleteAgent,
    InsertAgent,
    InsertFire,
    InsertNotification,
    InsertSchedule,
    InsertTask,
    Op,
    PatchAttempt,
    Pruned,
    RenewLeases,
    SaveAttempt,
    SaveCursor,
    SaveDigest,
    TakeSlot,
    TouchTask,
    UpdateAgent,
    UpdateSchedule,
    UpdateTask,
)
from dispatchd.store.connector import (
    Body,
    Query,
    all_rows,
    checked,
    execute,
    insert_ids,
    many,
    one,
    send,
    together,
)
from dispatchd.store.queries import Queries
from dispatchd.store.rooms import DeleteRoom, InsertRoom, RequireRoom, UpdateRoom
from dispatchd.store.rows import (
    OPEN_DIGEST,
    changed_columns,
    counter_deltas,
    digest_params,
    from_row,
    to_new_row,
    to_row,
)

# The writes of task and attempt rows, which a commit groups (`_apply_stretch`).
RowWrite = InsertTask | UpdateTask | SaveAttempt | PatchAttempt
# An event's columns as `append_events` binds them, one array each.
EVENT_FIELDS = ("type", "task_id", "agent_id", "data", "created_at")


def commit(q: Queries, ops: Sequence[Op]) -> Body[list[Event]]:
    """Apply `ops`; the appended events with their ids.

    A run of task inserts (a batch's tasks) or of attempt inserts goes to the database as
    one statement run for every row (`many`). The events go last: on PostgreSQL in one
    statement that takes the event-order lock (`append_events`), which is then held only
    for the commit; on SQLite (one writer) as plain inserts.
    """
    codec = q.dialect.codec
    counts: dict[str, int] = defaultdict(int)
    # The agents' loads move first, in a fixed order: a commit holds the agent rows it
    # writes before any task or attempt row, as a claim (which locks its agent first)
    # does. Otherwise a commit holding an attempt's key could wait for an agent row that
    # a claim holds while that claim waits for the key (a deadlock, found by PostgreSQL
    # only after a second).
    # (An agent this commit registers has no row yet: its load moves last.)
    registered = {op.agent.id for op in ops if isinstance(op, InsertAgent)}
    first = {a: d for a, d in _load_deltas(ops).items() if d and a not in registered}
    # A slot checked before any write of the commit moves its agent's load (a claim's)
    # goes with the load, in one statement on the agent's row.
    leading = _leading_slots(ops)
    merged: set[int] = set()
    for agent_id in sorted(first):
        slot = leading.get(agent_id)
        if slot is None:
            yield send(q.add_load, {"id": agent_id, "delta": first[agent_id]})
        else:
            merged.add(id(slot))
            yield _slot_check(q, slot, planned=0, delta=first[agent_id])
    # The loads of the ops applied so far, less what was written above: what a slot check
    # adds to the agent's load as stored to get its load at that point of the plan.
    loads: dict[str, int] = defaultdict(int, {a: -d for a, d in first.items()})
    to_append: list[Event] = []
    stretch: list[RowWrite] = []
    for op in ops:
        if isinstance(op, AppendEvent):
            to_append.append(op.event)
        elif id(op) in merged:
            continue  # checked with its agent's load, above
        elif isinstance(op, InsertTask | UpdateTask | SaveAttempt | PatchAttempt):
            stretch.append(op)
        else:
            if stretch:
                yield from _apply_stretch(q, stretch, counts, loads)
                stretch = []
            yield from _apply(q, op, counts, loads)
    if stretch:
        yield from _apply_stretch(q, stretch, counts, loads)
    for agent_id in sorted(registered):
        if loads[agent_id]:
            yield send(q.add_load, {"id": agent_id, "delta": loads[agent_id]})
    # The counters before the events: the event-order lock is the last one a commit takes
    # (`prune` takes them in the same order), and on PostgreSQL the events' insert is the
    # body's last query, which the commit goes with.
    yield from bump_counts(q, counts)
    events: list[Event] = []
    if to_append:
        rows = [to_row(e, codec) for e in to_append]
        if q.append_events:
            columns = {c: [r[c] for r in rows] for c in EVENT_FIELDS}
            found = yield one(q.append_events, columns, last=True)
            ids = list(found["ids"]) if found else []
        elif len(rows) == 1:
            row = yield one(q.insert_event, rows[0], last=True)
            ids = [int(row["id"])]
        else:
            ids = yield insert_ids(q.insert_events, rows)
        events = [e.evolve(id=i) for e, i in zip(to_append, ids, strict=True)]
    return events


def bump_counts(q: Queries, counts: Mapping[str, int]) -> Body[None]:
    """Move the tasks-by-state counters by `counts`, in one statement, in a fixed order."""
    changed = sorted(status for status, delta in counts.items() if delta)
    if changed:
        params: dict[str, Any] = {}
        for i, status in enumerate(changed):
            params[f"status_{i}"] = status
            params[f"delta_{i}"] = counts[status]
        yield send(q.bump_counts(len(changed)), params)


def _apply_stretch(
    q: Queries, stretch: Sequence[RowWrite], counts: dict[str, int], loads: dict[str, int]
) -> Body[None]:
    """Task and attempt writes with nothing between them that reads what they write (a
    slot check, a room's lock): the tasks' rows first, then the attempts', each kind in
    one statement run per shape of row (a claim's ten tasks: one run of updates and one
    of attempts, not twenty statements). Writes of one row keep their order."""
    codec = q.dialect.codec
    inserts = [op.task for op in stretch if isinstance(op, InsertTask)]
    if inserts:
        yield from _insert_tasks(q, inserts, counts, loads)
    updates = [op for op in stretch if isinstance(op, UpdateTask)]
    if updates:
        yield from _update_tasks(q, updates, counts, loads)
    attempts = [to_row(op.attempt, codec) for op in stretch if isinstance(op, SaveAttempt)]
    if attempts:
        yield many(q.insert_attempt, attempts)
    patches = [to_row(op, codec) for op in stretch if isinstance(op, PatchAttempt)]
    if patches:
        yield many(q.patch_attempt, patches)


def _update_tasks(
    q: Queries, updates: Sequence[UpdateTask], counts: dict[str, int], loads: dict[str, int]
) -> Body[None]:
    """Version-checked updates, a run of rows of one shape at a time; a task written twice
    here is written in order (its second update starts the next run)."""
    codec = q.dialect.codec
    run: list[dict[str, Any]] = []
    sql = ""
    ids: set[str] = set()
    for op in updates:
        task, before = op.task, op.before
        if before is None:
            statement, params = q.update_task, to_row(task, codec)
        else:
            params = changed_columns(task, before, codec)
            statement = q.update_task_columns(list(params))
        if run and (statement != sql or task.id in ids):
            yield _checked_run(sql, run)
            run, ids = [], set()
        run.append(params)
        sql = statement
        ids.add(task.id)
        for status, delta in counter_deltas(op.previous.value, task.status.value):
            counts[status] += delta
        _count_load(loads, op.previous, op.previous_assignee, task)
    if run:
        yield _checked_run(sql, run)


def _checked_run(sql: str, rows: list[dict[str, Any]]) -> Query:
    """Updates of tasks at the versions they were read at: each must find its row."""
    if len(rows) == 1:
        task_id = rows[0]["id"]
        return checked(
            sql, rows[0], ConcurrentUpdate(f"task {task_id} changed meanwhile", task_id=task_id)
        )
    names = ", ".join(row["id"] for row in rows)
    return many(sql, rows, ConcurrentUpdate(f"one of tasks {names} changed meanwhile"))


def _insert_tasks(
    q: Queries, tasks: Sequence[Task], counts: dict[str, int], loads: dict[str, int]
) -> Body[None]:
    codec = q.dialect.codec
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for task in tasks:
        row = to_new_row(task, codec)
        shapes.setdefault(tuple(row), []).append(row)
    for columns, rows in shapes.items():
        yield many(q.insert_task_columns(columns), rows)
    deps = [{"parent": p, "child": task.id} for task in tasks for p in task.depends_on]
    if deps:
        yield many(q.insert_dep, deps)
    for task in tasks:
        counts[task.status.value] += 1
        _count_load(loads, None, None, task)


def _apply(q: Queries, op: Op, counts: dict[str, int], loads: dict[str, int]) -> Body[None]:
    codec = q.dialect.codec
    match op:
        case InsertTask() | UpdateTask() | SaveAttempt() | PatchAttempt():
            yield from _apply_stretch(q, [op], counts, loads)
        case TouchTask(task_id, version):
            params = {"id": task_id, "version": version}
            yield checked(
                q.touch_task,
                params,
                ConcurrentUpdate(f"task {task_id} changed meanwhile", task_id=task_id),
            )
        case TakeSlot(agent_id):
            yield _slot_check(q, op, planned=loads[agent_id])
        case AppendProgress(entry):
            yield send(q.insert_progress, to_row(entry, codec))
        case AppendReview(review):
            yield send(q.insert_review, to_row(review, codec))
        case AddCost(charge):
            cost = charge.cost
            params = {
                "requester": charge.requester,
                "day": charge.day.isoformat(),
                "agent": charge.agent,
                "usd": cost.usd,
                "input_tokens": cost.input_tokens,
                "output_tokens": cost.output_tokens,
            }
            yield send(q.add_cost, params)
        case AppendComment(comment):
            yield send(q.insert_comment, to_row(comment, codec))
        case InsertAgent(agent):
            yield send(q.insert_agent, to_row(agent, codec))
        case UpdateAgent(agent):
            moved = ConcurrentUpdate(f"agent {agent.id} changed meanwhile", agent_id=agent.id)
            yield checked(q.update_agent, to_row(agent, codec), moved)
        case DeleteAgent(agent_id, version):
            yield one(q.lock_agent, {"id": agent_id})
            moved = ConcurrentUpdate(f"agent {agent_id} changed meanwhile", agent_id=agent_id)
            yield checked(q.delete_agent, {"id": agent_id, "version": version}, moved)
        case RenewLeases(agent_id, until):
            yield send(q.renew_leases, {"agent_id": agent_id, "until": codec.dump_time(until)})
        case SaveCursor(name, last_event_id, at):
            params = {"name": name, "last": last_event_id, "at": codec.dump_time(at)}
            yield send(q.save_cursor, params)
        case AdvanceCursor(name, expected, last, at):
            params = {"name": name, "last": last, "at": codec.dump_time(at)}
            moved = ConcurrentUpdate(f"cursor {name} moved meanwhile", cursor=name)
            if expected is None:
                yield checked(q.cursor_insert, params, moved)
            else:
                # On PostgreSQL this waits for a concurrent writer of the same cursor, then
                # finds it moved.
                yield checked(q.cursor_update, {**params, "expected": expected}, moved)
        case InsertNotification(notification):
            yield send(q.insert_notification, to_row(notification, codec))
        case SaveDigest(digest, at):
            if digest is None:
                yield send(q.drop_digest, {"name": OPEN_DIGEST})
            else:
                yield send(q.save_digest, digest_params(digest, at, codec))
        case InsertRoom(room):
            yield send(q.insert_room, to_row(room, codec))
        case UpdateRoom(room):
            moved = ConcurrentUpdate(f"room {room.id} changed meanwhile", room=room.id)
            yield checked(q.update_room, to_row(room, codec), moved)
        case DeleteRoom(room_id, version):
            yield from _delete_room(q, room_id, version)
        case RequireRoom(room_id):
            if (yield one(q.require_room, {"id": room_id})) is None:
                raise NotFound(f"no room {room_id}", room=room_id)
        case InsertSchedule(schedule):
            yield send(q.insert_schedule, to_row(schedule, codec))
        case UpdateSchedule(schedule):
            moved = ConcurrentUpdate(f"schedule {schedule.id} changed meanwhile")
            yield checked(q.update_schedule, to_row(schedule, codec), moved)
        case InsertFire(fire):
            yield send(q.insert_fire, to_row(fire, codec))
        case AppendEvent():
            raise AssertionError("events are appended by commit, after the other writes")
        case _:
            assert_never(op)


def _delete_room(q: Queries, room_id: str, version: int) -> Body[None]:
    # The row first: a dispatch into the room (RequireRoom) committing meanwhile holds it,
    # and its task is then visible to the count below.
    row = yield one(q.lock_room, {"id": room_id})
    if row is None or int(row["version"]) != version:
        raise ConcurrentUpdate(f"room {room_id} changed meanwhile", room=room_id)
    unfinished = int((yield one(q.room_unfinished, {"id": room_id}))["n"])
    if unfinished:
        raise Conflict(
            f"room {room_id} has {unfinished} unfinished task(s); interrupt or cancel them first",
            code="room_busy",
            room=room_id,
            unfinished=unfinished,
        )
    yield send(q.delete_room, {"id": room_id, "version": version})


def _slot_check(q: Queries, slot: TakeSlot, *, planned: int, delta: int | None = None) -> Query:
    """The slot's check: room on the agent for `slot.count` more tasks, beside the stored
    load and the `planned` load changes of the commit's writes before it; with `delta`,
    the agent's load moved by it in the same statement."""
    codec = q.dialect.codec
    params = {
        "id": slot.agent_id,
        "limit": slot.limit,
        "at": codec.dump_time(slot.at),
        "check": codec.dump_bool(slot.check_status),
        "count": slot.count,
    }
    unavailable = AgentUnavailable(
        f"agent {slot.agent_id} cannot take a task now", agent_id=slot.agent_id
    )
    if delta is None:
        return checked(q.take_slot, {**params, "planned": planned}, unavailable)
    return checked(q.take_slot_and_load, {**params, "delta": delta}, unavailable)


def _leading_slots(ops: Sequence[Op]) -> dict[str, TakeSlot]:
    """The agents whose only slot check comes before any write that moves their load, with
    nothing but writes of tasks and their records before it: a write of an agent's row (a
    claim bringing an offline agent back) must land before the check reads its status."""
    slots: dict[str, TakeSlot] = {}
    moved: set[str] = set()
    twice: set[str] = set()
    for op in ops:
        if isinstance(op, TakeSlot):
            if op.agent_id in slots or op.agent_id in moved:
                twice.add(op.agent_id)
            else:
                slots[op.agent_id] = op
        elif isinstance(op, InsertTask | UpdateTask):
            moved.update(a for a, d in _load_deltas([op]).items() if d)
        elif not isinstance(op, _TASK_SIDE):
            break  # later slots are checked where they stand
    return {a: slot for a, slot in slots.items() if a not in twice}


# Writes that leave every agent's row as it is.
_TASK_SIDE = (
    TouchTask,
    SaveAttempt,
    PatchAttempt,
    AppendEvent,
    AppendProgress,
    AppendReview,
    AppendComment,
    AddCost,
)


def _load_deltas(ops: Sequence[Op]) -> dict[str, int]:
    """How `ops` change agents' loads in all (see `_count_load`)."""
    loads: dict[str, int] = defaultdict(int)
    for op in ops:
        if isinstance(op, InsertTask):
            _count_load(loads, None, None, op.task)
        elif isinstance(op, UpdateTask):
            _count_load(loads, op.previous, op.previous_assignee, op.task)
    return loads


def _count_load(
    loads: dict[str, int], previous: TaskStatus | None, previous_assignee: str | None, task: Task
) -> None:
    """How a task's write changes agents' loads: -1 for the agent it leaves, +1 for the one
    it goes to; nothing while it stays held by the same agent."""
    was = previous_assignee if previous is not None and previous.active else None
    now = task.assignee if task.status.active else None
    if was != now:
        if was is not None:
            loads[was] -= 1
        if now is not None:
            loads[now] += 1


def claim(q: Queries, query: ClaimQuery, plan: ClaimPlan) -> Body[list[Event]]:
    """Lock the agent and what it may take, let `plan` turn that into writes, apply them.

    On PostgreSQL the agent row is locked first (claims and pushes to one agent queue
    there) and rows another claim holds are skipped; on SQLite the writer thread is the
    only writer, so nothing read here can change before the commit.
    """
    codec = q.dialect.codec
    # The agent, what was assigned to it and what it may take, read in one go (one round
    # trip on PostgreSQL); the agent's row is locked first, as by every writer of it.
    sql, params = q.claimable(query, lock=True)
    reads = [
        one(q.lock_agent, {"id": query.agent_id}),
        all_rows(q.assigned, {"agent_id": query.agent_id, "limit": query.limit}),
        *([send(q.plan_queue)] if q.plan_queue else []),
        all_rows(sql, params),
    ]
    row, assigned_rows, *_, candidate_rows = yield together(*reads)
    agent = from_row(Agent, row, codec) if row else None
    assigned: list[Task] = []
    candidates: list[Task] = []
    if agent is not None:
        assigned = [from_row(Task, r, codec) for r in assigned_rows]
        candidates = [from_row(Task, r, codec) for r in candidate_rows]
    ops = plan(ClaimView(agent, assigned, candidates))
    return (yield from commit(q, ops)) if ops else []


def prune(
    q: Queries, events_before: datetime | None, tasks_before: datetime | None, limit: int
) -> Body[Pruned]:
    codec = q.dialect.codec
    events = tasks = notifications = 0
    # The tasks and their counters first: a commit takes the counters before the
    # event-order lock, and so does this.
    params: dict[str, Any]
    if tasks_before is not None:
        params = {"before": codec.dump_time(tasks_before), "limit": limit}
        found = yield all_rows(q.finished_tasks, params)
        ids = q.dialect.dump_list([r["id"] for r in found])
        for sql in q.drop_task_rows if found else ():
            yield send(sql, {"ids": ids})
        by_status: dict[str, int] = defaultdict(int)
        for row in found:
            by_status[row["status"]] -= 1
        yield from bump_counts(q, by_status)
        tasks = len(found)
    if events_before is not None:
        params = {"before": codec.dump_time(events_before), "limit": limit}
        notifications = yield execute(q.prune_notifications, params)
        # Under the event-order lock: no commit appends while the prefix is cut.
        if q.lock_event_order:
            yield send(q.lock_event_order)
        rows = yield all_rows(q.oldest_events, {"limit": limit})
        # A prefix of the log only (it stops at the first newer event), so that every
        # reader's cursor past it stays whole.
        through = None
        for row in rows:
            if codec.load_time(row["created_at"]) >= events_before:
                break
            through = int(row["id"])
        if through is not None:
            events = yield execute(q.drop_events, {"through": through})
            params = {"name": RETENTION_CURSOR, "last": through, "at": codec.dump_time(utcnow())}
            yield send(q.save_cursor, params)
    return Pruned(events=events, tasks=tasks, notifications=notifications)
