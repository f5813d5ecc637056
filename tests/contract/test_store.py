"""The storage contract: every test runs unchanged against every engine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest

from dispatchd.domain.costs import Cost
from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.models import (
    Agent,
    AgentStatus,
    Attempt,
    AttemptOutcome,
    Comment,
    Event,
    Priority,
    ProgressEntry,
    ReviewerKind,
    Task,
    TaskKind,
    TaskStatus,
)
from dispatchd.errors import ConcurrentUpdate, DuplicateKey
from dispatchd.store import migrations
from dispatchd.store.base import (
    AgentFilter,
    AppendComment,
    AppendEvent,
    AppendProgress,
    Counts,
    DeleteAgent,
    InsertAgent,
    InsertTask,
    Page,
    PatchAttempt,
    RenewLeases,
    SaveAttempt,
    Store,
    TaskFilter,
    UpdateAgent,
    UpdateTask,
)
from dispatchd.store.readers import EventScope

S = TaskStatus
StoreFactory = Callable[[], Store]
T = TypeVar("T")
# Microseconds on purpose: both engines must keep them.
T0 = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
US = timedelta(microseconds=1)


# --- factories --------------------------------------------------------------------------


def make_task(**changes: Any) -> Task:
    now = utcnow()
    task = Task(
        id=new_id(),
        title="a task",
        prompt="do the thing",
        status=S.PENDING,
        priority=Priority.MEDIUM,
        capabilities=("python",),
        requester="requester-1",
        created_at=now,
        updated_at=now,
    )
    return task.evolve(**changes)


def make_agent(agent_id: str | None = None, **changes: Any) -> Agent:
    now = utcnow()
    agent = Agent(
        id=agent_id or f"agent-{new_id()}",
        capabilities={"python": 1.0},
        status=AgentStatus.READY,
        created_at=now,
        updated_at=now,
    )
    return agent.evolve(**changes)


def make_event(type_: str, task_id: str | None = None, **data: Any) -> Event:
    return Event(type=type_, created_at=utcnow(), task_id=task_id, data=data)


def full_task() -> Task:
    """A task with every field away from its default."""
    india = timezone(timedelta(hours=5, minutes=30))
    return Task(
        id=new_id(),
        title="Résumé ✓ 修正する 🚀",
        prompt="line one\nline two with 'single', \"double\" quotes, a \\ and a tab\t.",
        status=S.RUNNING,
        priority=Priority.CRITICAL,
        capabilities=("python", "sql-ü", "日本語"),
        requester="requester-ä",
        created_at=T0,
        updated_at=T0 + 7 * US,
        assignee="agent-ß",
        assigned_to="agent-ß",
        owner="owner-ø",
        scope="room-🏠",
        attempt=2,
        max_attempts=5,
        context={
            "inputs": {"parent": [1, 2.5, None, True, False, "x"], "empty": {}, "none": None},
            "nested": {"deep": {"list": [{"k": "v"}, [1, [2, [3]]]]}},
            "unicode": "ünïcødé ✓ 🚀",
            "big": 2**53 + 1,
            "ratio": 0.1,
        },
        result={"answer": 42, "items": ["a", "b"], "ratio": 0.125, "ok": True, "nothing": None},
        summary="done, mostly",
        error="previous attempt failed",
        depends_on=(new_id(), new_id()),
        run_at=T0 - timedelta(days=1),
        due_at=datetime(2024, 3, 1, 10, 0, 0, 999999, tzinfo=india),
        timeout_s=600,
        input_timeout_s=120,
        run_left_ms=2**40,
        review=True,
        reviewer="reviewer-cap",
        reviewer_kind=ReviewerKind.CAPABILITY,
        escalate_to="senior",
        escalated=True,
        model="model-x",
        model_routed=True,
        labels=("urgent", "béta"),
        idempotency_key="idem-ключ",
        schedule_id="sched-01",
        question="which one?",
        progress_message="halfway ½",
        progress_percent=42.5,
        requeues=1,
        review_cycles=2,
        kind=TaskKind.REVIEW,
        review_of="task-ü",
        excluded_agent="agent-ø",
        preferred_agent="agent-ß",
        dependents=2,
        not_before=T0 + 1 * US,
        lease_expires_at=T0 + timedelta(minutes=5, microseconds=3),
        deadline_at=T0 + timedelta(hours=1, microseconds=5),
        started_at=T0 + 2 * US,
        finished_at=T0 + 999999 * US,
        version=7,
        cost=Cost(1.234567891, 10**12, 7),
        attempt_cost=Cost(0.5, 3, 4),
        max_cost_usd=2.5,
        error_code="budget_exceeded",
    )


async def insert(store: Store, *tasks: Task) -> None:
    await store.commit([InsertTask(t) for t in tasks])


async def all_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[list[T]]:
    pages: list[list[T]] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"
        cursor = page.next_cursor


def nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


async def task_ids(store: Store, flt: TaskFilter) -> set[str]:
    page = await store.list_tasks(flt, limit=1000, cursor=None)
    assert page.next_cursor is None
    return {t.id for t in page.items}


# --- lifecycle of the store ---------------------------------------------------------------


async def test_migrate_applies_everything_once(make_empty_store: StoreFactory) -> None:
    store = make_empty_store()
    await store.open()
    try:
        await store.ping()
        expected = [m.version for m in migrations.load(store.dialect)]
        assert expected
        assert await store.migrate() == expected
        assert await store.migrate() == []
        task = make_task()
        await insert(store, task)
        assert await store.get_task(task.id) == task
    finally:
        await store.close()


async def test_concurrent_migrations_do_not_collide(make_empty_store: StoreFactory) -> None:
    stores = [make_empty_store(), make_empty_store()]
    for store in stores:
        await store.open()
    try:
        results = await asyncio.gather(*(store.migrate() for store in stores))
        expected = [m.version for m in migrations.load(stores[0].dialect)]
        assert sorted(results, key=len) == [[], expected]
    finally:
        for store in stores:
            await store.close()


async def test_ping_and_dialect(store: Store) -> None:
    await store.ping()
    assert store.dialect in {"sqlite", "postgres"}


# --- tasks ---------------------------------------------------------------------------------


def test_full_task_sets_every_field() -> None:
    task = full_task()
    for f in dataclasses.fields(Task):
        if f.default is not dataclasses.MISSING:
            assert getattr(task, f.name) != f.default, f.name
        if f.default_factory is not dataclasses.MISSING:
            assert getattr(task, f.name) != f.default_factory(), f.name


async def test_task_round_trips_every_field(store: Store) -> None:
    task = full_task()
    await insert(store, task)
    loaded = await store.get_task(task.id)
    assert loaded == task
    assert loaded is not None
    for f in dataclasses.fields(Task):
        value = getattr(loaded, f.name)
        if isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0), f"{f.name} is not in UTC"
    assert loaded.due_at == task.due_at
    assert type(loaded.capabilities) is tuple
    assert type(loaded.depends_on) is tuple
    assert type(loaded.labels) is tuple


@pytest.mark.parametrize(
    "result",
    ["just a string", "", 0, 3.5, True, [1, "two", None], {"k": "v"}, None],
    ids=["string", "empty-string", "zero", "float", "bool", "list", "object", "none"],
)
async def test_any_json_result_round_trips(store: Store, result: Any) -> None:
    task = make_task(result=result, context={})
    await insert(store, task)
    loaded = await store.get_task(task.id)
    assert loaded is not None
    assert loaded.result == result
    assert type(loaded.result) is type(result)
    assert loaded.context == {}


async def test_get_task_unknown_is_none(store: Store) -> None:
    assert await store.get_task(new_id()) is None


async def test_get_tasks(store: Store) -> None:
    tasks = [make_task() for _ in range(4)]
    await insert(store, *tasks)
    wanted = [tasks[2], tasks[0], tasks[3]]
    found = await store.get_tasks([t.id for t in wanted] + [new_id()])
    assert sorted(found, key=lambda t: t.id) == sorted(wanted, key=lambda t: t.id)
    assert await store.get_tasks([]) == []
    assert await store.get_tasks([new_id()]) == []


async def test_update_with_current_version_lands(store: Store) -> None:
    task = make_task()
    await insert(store, task)
    running = task.evolve(
        status=S.RUNNING, assignee="agent-1", attempt=1, version=2, updated_at=utcnow()
    )
    await store.commit([UpdateTask(running, S.PENDING)])
    assert await store.get_task(task.id) == running
    done = running.evolve(status=S.COMPLETED, result={"ok": True}, version=3)
    await store.commit([UpdateTask(done, S.RUNNING)])
    assert await store.get_task(task.id) == done


async def test_stale_update_writes_nothing_from_the_batch(store: Store) -> None:
    task, other = make_task(), make_task()
    await insert(store, task, other)
    await store.commit([UpdateTask(task.evolve(status=S.RUNNING, version=2), S.PENDING)])
    events_before = await store.read_events(after=0, limit=1000)
    counts_before = await store.counts()

    fresh = other.evolve(status=S.RUNNING, version=2)
    stale = task.evolve(status=S.CANCELLED, version=2)  # computed from version 1; row is at 2
    batch = [
        UpdateTask(fresh, S.PENDING),
        AppendEvent(make_event("task.started", other.id)),
        AppendComment(Comment(other.id, "someone", "hello", utcnow())),
        InsertTask(make_task()),
        UpdateTask(stale, S.PENDING),
    ]
    with pytest.raises(ConcurrentUpdate):
        await store.commit(batch)

    assert await store.get_task(other.id) == other
    assert (await store.get_task(task.id)) == task.evolve(status=S.RUNNING, version=2)
    assert await store.read_events(after=0, limit=1000) == events_before
    assert nonzero((await store.counts()).tasks_by_status) == nonzero(counts_before.tasks_by_status)
    detail = await store.task_detail(other.id)
    assert detail is not None
    assert detail.comments == ()
    page = await store.list_tasks(TaskFilter(), limit=100, cursor=None)
    assert {t.id for t in page.items} == {task.id, other.id}


@pytest.mark.parametrize("version", [1, 2, 4, 9], ids=["older", "same", "skips-one", "ahead"])
async def test_update_must_follow_the_stored_version(store: Store, version: int) -> None:
    task = make_task(version=2)
    await insert(store, task)
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateTask(task.evolve(status=S.RUNNING, version=version), S.PENDING)])
    assert await store.get_task(task.id) == task


async def test_update_of_missing_task_is_a_conflict(store: Store) -> None:
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateTask(make_task(version=2), S.PENDING)])


async def test_duplicate_idempotency_key(store: Store) -> None:
    first = make_task(requester="alice", idempotency_key="key-1")
    await insert(store, first)
    counts_before = await store.counts()
    duplicate = make_task(requester="alice", idempotency_key="key-1", title="again")
    with pytest.raises(DuplicateKey) as caught:
        await store.commit(
            [InsertTask(duplicate), AppendEvent(make_event("task.created", duplicate.id))]
        )
    assert caught.value.details["field"] == "idempotency_key"
    assert await store.find_by_idempotency_key("alice", "key-1") == first
    assert await store.get_task(duplicate.id) is None
    assert await store.events_for_task(duplicate.id) == []
    assert await store.read_events(after=0, limit=10) == []
    assert (await store.counts()).tasks_by_status == counts_before.tasks_by_status

    # The key is per requester, and tasks without a key never collide.
    bob = make_task(requester="bob", idempotency_key="key-1")
    await insert(store, bob, make_task(requester="alice"), make_task(requester="alice"))
    assert await store.find_by_idempotency_key("bob", "key-1") == bob
    assert await store.find_by_idempotency_key("alice", "key-2") is None
    assert await store.find_by_idempotency_key("carol", "key-1") is None


async def test_duplicate_task_id(store: Store) -> None:
    task = make_task()
    await insert(store, task)
    with pytest.raises(DuplicateKey) as caught:
        await insert(store, make_task(), task.evolve(title="same id"))
    assert caught.value.details["field"] == "id"
    assert await store.get_task(task.id) == task
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 1}


# --- events --------------------------------------------------------------------------------


async def test_events_get_increasing_ids_and_page(store: Store) -> None:
    task = make_task()
    first = await store.commit(
        [
            InsertTask(task),
            AppendEvent(make_event("task.created", task.id, title=task.title)),
            AppendEvent(make_event("task.assigned", task.id, agent="a-1")),
        ]
    )
    second = await store.commit(
        [
            AppendEvent(
                Event(
                    type="agent.registered",
                    created_at=T0,
                    agent_id="a-1",
                    data={"nested": {"list": [1, "✓"]}},
                )
            )
        ]
    )
    third = await store.commit([AppendEvent(make_event("task.started", task.id))])
    appended = first + second + third
    ids = [e.id for e in appended]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert [e.type for e in appended] == [
        "task.created",
        "task.assigned",
        "agent.registered",
        "task.started",
    ]
    assert second[0].data == {"nested": {"list": [1, "✓"]}}

    assert await store.read_events(after=0, limit=100) == appended
    paged: list[Event] = []
    after = 0
    while batch := await store.read_events(after=after, limit=3):
        assert len(batch) <= 3
        paged.extend(batch)
        after = batch[-1].id or 0
    assert paged == appended
    assert await store.read_events(after=ids[1], limit=1) == [appended[2]]
    assert await store.read_events(after=ids[-1], limit=10) == []

    assert await store.events_for_task(task.id) == [appended[0], appended[1], appended[3]]
    assert await store.events_for_task(new_id()) == []
    loaded = (await store.read_events(after=ids[1], limit=1))[0]
    assert loaded.created_at == T0
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert await store.commit([]) == []


# --- attempts, progress, comments ---------------------------------------------------------


async def test_attempts_insert_patch_and_list(store: Store) -> None:
    task = make_task()
    first = Attempt(task.id, 1, "agent-1", assigned_at=T0)
    await store.commit([InsertTask(task), SaveAttempt(first)])
    assert await store.attempts(task.id) == [first]

    started = T0 + US
    await store.commit([PatchAttempt(task.id, 1, started_at=started)])
    assert await store.attempts(task.id) == [first.evolve(started_at=started)]

    # Fields left out of a patch keep their stored value.
    ended = T0 + timedelta(seconds=3, microseconds=1)
    second = Attempt(task.id, 2, "agent-2", assigned_at=T0 + timedelta(seconds=4))
    await store.commit(
        [
            SaveAttempt(second),
            PatchAttempt(task.id, 1, ended_at=ended, outcome=AttemptOutcome.FAILED, error="boom ✗"),
        ]
    )
    done = first.evolve(
        started_at=started, ended_at=ended, outcome=AttemptOutcome.FAILED, error="boom ✗"
    )
    assert await store.attempts(task.id) == [done, second]
    assert await store.attempts(new_id()) == []

    with pytest.raises(DuplicateKey):
        await store.commit([SaveAttempt(second.evolve(agent_id="agent-3"))])
    assert await store.attempts(task.id) == [done, second]


async def test_task_detail_has_progress_and_comments_in_order(store: Store) -> None:
    task = make_task(status=S.RUNNING, assignee="agent-1", attempt=1)
    attempt = Attempt(task.id, 1, "agent-1", assigned_at=T0, started_at=T0 + US)
    await store.commit([InsertTask(task), SaveAttempt(attempt)])
    progress = [
        ProgressEntry(task.id, 1, "agent-1", f"step {i}", i * 10.5, T0 + i * US) for i in range(4)
    ]
    progress.append(ProgressEntry(task.id, 1, "agent-1", None, None, T0))
    comments = [Comment(task.id, f"author-{i}", f"body {i} ✓", T0 - i * US) for i in range(3)]
    await store.commit([AppendProgress(progress[0]), AppendComment(comments[0])])
    await store.commit([AppendComment(comments[1]), AppendProgress(progress[1])])
    await store.commit([AppendProgress(p) for p in progress[2:]] + [AppendComment(comments[2])])
    other = make_task()
    await store.commit([InsertTask(other), AppendComment(Comment(other.id, "x", "elsewhere", T0))])

    detail = await store.task_detail(task.id)
    assert detail is not None
    assert detail.task == task
    assert detail.attempts == (attempt,)
    assert detail.progress == tuple(progress)
    assert detail.comments == tuple(comments)
    assert await store.task_detail(new_id()) is None


# --- agents --------------------------------------------------------------------------------


async def test_agent_insert_update_delete(store: Store) -> None:
    agent = make_agent(
        "agent-ü",
        capabilities={"python": 0.9, "sql": 0.25, "日本語": 1.0},
        status=AgentStatus.SLEEPING,
        owner="owner-1",
        max_concurrent=4,
        room="room-1",
        wake_url="http://127.0.0.1:9999/wake",
        dispatch_model="model-y",
        description="does things ✓",
        drained=True,
        token_hash="hash-1",
        last_heartbeat_at=T0 + 5 * US,
        created_at=T0,
        updated_at=T0 + US,
        version=3,
    )
    await store.commit([InsertAgent(agent)])
    assert await store.get_agent(agent.id) == agent
    assert await store.find_agent_by_token_hash("hash-1") == agent
    assert await store.find_agent_by_token_hash("hash-2") is None
    assert await store.get_agent("nobody") is None

    with pytest.raises(DuplicateKey) as caught:
        await store.commit([InsertAgent(make_agent(agent.id))])
    assert caught.value.details["field"] == "id"

    updated = agent.evolve(
        status=AgentStatus.BUSY, drained=False, capabilities={"go": 0.5}, version=4
    )
    await store.commit([UpdateAgent(updated)])
    assert await store.get_agent(agent.id) == updated

    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateAgent(agent.evolve(status=AgentStatus.READY, version=4))])
    with pytest.raises(ConcurrentUpdate):
        await store.commit([DeleteAgent(agent.id, version=3)])
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateAgent(make_agent("ghost", version=2))])
    assert await store.get_agent(agent.id) == updated

    # An agent that still holds a task is not deleted (its tasks go first, in the commit).
    held = make_task(status=S.RUNNING, assignee=agent.id, attempt=1)
    await store.commit([InsertTask(held)])
    with pytest.raises(ConcurrentUpdate):
        await store.commit([DeleteAgent(agent.id, version=4)])
    back = held.evolve(status=S.PENDING, assignee=None, version=held.version + 1)
    await store.commit([UpdateTask(back, S.RUNNING, previous_assignee=agent.id)])
    assert await store.get_agent(agent.id) == updated

    await store.commit([DeleteAgent(agent.id, version=4)])
    assert await store.get_agent(agent.id) is None
    assert await store.find_agent_by_token_hash("hash-1") is None
    with pytest.raises(ConcurrentUpdate):
        await store.commit([DeleteAgent(agent.id, version=4)])


async def test_list_agents_by_when_they_were_last_heard_from(store: Store) -> None:
    now = utcnow()
    agents = [
        make_agent("quiet", last_heartbeat_at=now - timedelta(minutes=10)),
        make_agent("recent", last_heartbeat_at=now - timedelta(seconds=5)),
        make_agent("never"),  # no time recorded: not "heard before" anything
        make_agent(
            "quiet-off", status=AgentStatus.OFFLINE, last_heartbeat_at=now - timedelta(hours=1)
        ),
    ]
    await store.commit([InsertAgent(a) for a in agents])
    before = now - timedelta(minutes=1)
    page = await store.list_agents(AgentFilter(heard_before=before), limit=10, cursor=None)
    assert [load.agent.id for load in page.items] == ["quiet", "quiet-off"]
    present = AgentFilter(status=[AgentStatus.READY], heard_before=before)
    page = await store.list_agents(present, limit=10, cursor=None)
    assert [load.agent.id for load in page.items] == ["quiet"]
    page = await store.list_agents(AgentFilter(heard_before=now), limit=10, cursor=None)
    assert [load.agent.id for load in page.items] == ["quiet", "quiet-off", "recent"]
    # A task handed to "quiet" raises its load: it is no longer idle.
    held = make_task(status=S.PENDING)
    await store.commit([InsertTask(held)])
    given = held.evolve(status=S.ASSIGNED, assignee="quiet", attempt=1, version=held.version + 1)
    await store.commit([UpdateTask(given, S.PENDING)])
    idle = AgentFilter(heard_before=now, idle=True)
    page = await store.list_agents(idle, limit=10, cursor=None)
    assert [load.agent.id for load in page.items] == ["quiet-off", "recent"]


async def test_list_agents_filters_load_and_pages(store: Store) -> None:
    # Ids whose byte order differs from a linguistic one: pages follow byte order everywhere.
    agents = [
        make_agent(
            "agent-b",
            status=AgentStatus.READY,
            owner="o1",
            room="r1",
            capabilities={"python": 1.0, "sql": 0.5},
        ),
        make_agent(
            "agent_a", status=AgentStatus.BUSY, owner="o1", room="r2", capabilities={"python": 0.5}
        ),
        make_agent(
            "Agent-c", status=AgentStatus.SLEEPING, owner="o2", room="r1", capabilities={"sql": 1.0}
        ),
        make_agent("agentA", status=AgentStatus.READY, capabilities={"go": 1.0}),
        make_agent("agent.d", status=AgentStatus.OFFLINE, owner="o2", capabilities={"python": 0.1}),
        make_agent("zed", status=AgentStatus.DEGRADED, capabilities={}),
    ]
    held = {
        "agent_a": [S.ASSIGNED, S.RUNNING, S.WAITING_INPUT, S.COMPLETED, S.REVIEW, S.FAILED],
        "agent-b": [S.RUNNING, S.CANCELLED],
        "zed": [S.TIMED_OUT],
    }
    tasks = [
        make_task(status=status, assignee=agent_id)
        for agent_id, statuses in held.items()
        for status in statuses
    ]
    await store.commit([InsertAgent(a) for a in agents] + [InsertTask(t) for t in tasks])

    everyone = await store.list_agents(AgentFilter(), limit=100, cursor=None)
    assert everyone.next_cursor is None
    assert [load.agent.id for load in everyone.items] == sorted(a.id for a in agents)
    assert {load.agent.id: load.active for load in everyone.items} == {
        "agent_a": 3,
        "agent-b": 1,
        "Agent-c": 0,
        "agentA": 0,
        "agent.d": 0,
        "zed": 0,
    }
    by_id = {a.id: a for a in agents}
    # The load is kept on the agent row, in step with the tasks it holds.
    assert all(
        load.agent == by_id[load.agent.id].evolve(active=load.active) for load in everyone.items
    )

    async def ids(flt: AgentFilter) -> list[str]:
        page = await store.list_agents(flt, limit=100, cursor=None)
        return [load.agent.id for load in page.items]

    assert await ids(AgentFilter(status=[AgentStatus.READY, AgentStatus.BUSY])) == sorted(
        ["agent-b", "agent_a", "agentA"]
    )
    assert await ids(AgentFilter(capability="sql")) == sorted(["agent-b", "Agent-c"])
    assert await ids(AgentFilter(capability="pyth")) == []
    assert await ids(AgentFilter(owner="o2")) == sorted(["Agent-c", "agent.d"])
    assert await ids(AgentFilter(room="r1")) == sorted(["agent-b", "Agent-c"])
    assert await ids(AgentFilter(capability="python", owner="o1", room="r2")) == ["agent_a"]

    pages = await all_pages(lambda c: store.list_agents(AgentFilter(), limit=2, cursor=c))
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [load.agent.id for p in pages for load in p] == sorted(a.id for a in agents)
    pages = await all_pages(
        lambda c: store.list_agents(AgentFilter(capability="python"), limit=2, cursor=c)
    )
    assert [load.agent.id for p in pages for load in p] == sorted(["agent-b", "agent_a", "agent.d"])


async def test_active_tasks_of(store: Store) -> None:
    mine = [make_task(status=s, assignee="me") for s in (S.ASSIGNED, S.RUNNING, S.WAITING_INPUT)]
    others = [
        make_task(status=S.COMPLETED, assignee="me"),
        make_task(status=S.REVIEW, assignee="me"),
        make_task(status=S.RUNNING, assignee="you"),
        make_task(status=S.PENDING),
    ]
    await insert(store, *mine, *others)
    assert await store.active_tasks_of("me") == sorted(mine, key=lambda t: t.id)
    assert await store.active_tasks_of("nobody") == []


# --- lists ----------------------------------------------------------------------------------


async def test_list_tasks_every_filter(store: Store) -> None:
    t1 = make_task(
        status=S.PENDING,
        requester="r1",
        priority=Priority.HIGH,
        capabilities=("python",),
        labels=("x", "sql"),
        owner="o1",
        scope="s1",
    )
    t2 = make_task(
        status=S.RUNNING,
        requester="r2",
        priority=Priority.LOW,
        assignee="a1",
        capabilities=("sql", "python"),
        labels=("y",),
        owner="o2",
        scope="s2",
    )
    t3 = make_task(
        status=S.COMPLETED,
        requester="r1",
        priority=Priority.CRITICAL,
        assignee="a2",
        capabilities=("go",),
        labels=("x", "y"),
    )
    t4 = make_task(
        status=S.BLOCKED,
        requester="r3",
        priority=Priority.MEDIUM,
        capabilities=(),
        labels=(),
        owner="o1",
        scope="s2",
    )
    await insert(store, t1, t2, t3, t4)

    async def ids(**kwargs: Any) -> set[str]:
        return await task_ids(store, TaskFilter(**kwargs))

    assert await ids() == {t1.id, t2.id, t3.id, t4.id}
    assert await ids(status=[S.PENDING, S.RUNNING]) == {t1.id, t2.id}
    assert await ids(status=[S.BLOCKED]) == {t4.id}
    assert await ids(status=[S.FAILED]) == set()
    assert await ids(requester="r1") == {t1.id, t3.id}
    assert await ids(assignee="a1") == {t2.id}
    assert await ids(scope="s2") == {t2.id, t4.id}
    assert await ids(owner="o1") == {t1.id, t4.id}
    assert await ids(capability="python") == {t1.id, t2.id}
    assert await ids(capability="sql") == {t2.id}  # t1 has "sql" only as a label
    assert await ids(capability="pyth") == set()
    assert await ids(priority=[Priority.HIGH, Priority.CRITICAL]) == {t1.id, t3.id}
    assert await ids(priority=[Priority.MEDIUM]) == {t4.id}
    assert await ids(label="y") == {t2.id, t3.id}
    assert await ids(label="x") == {t1.id, t3.id}
    assert await ids(label="python") == set()
    assert await ids(requester="r1", label="x", status=[S.COMPLETED]) == {t3.id}
    assert await ids(requester="r1", capability="python", priority=[Priority.HIGH]) == {t1.id}
    assert await ids(requester="nobody") == set()


@pytest.mark.parametrize("descending", [True, False], ids=["descending", "ascending"])
async def test_list_tasks_pages_without_gaps_or_duplicates(store: Store, descending: bool) -> None:
    tasks = [make_task(status=S.PENDING if i % 3 else S.RUNNING) for i in range(23)]
    await insert(store, *tasks)

    pages = await all_pages(
        lambda c: store.list_tasks(TaskFilter(), limit=5, cursor=c, descending=descending)
    )
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [t.id for p in pages for t in p] == sorted((t.id for t in tasks), reverse=descending)

    running = sorted((t.id for t in tasks if t.status is S.RUNNING), reverse=descending)
    assert len(running) == 8
    pages = await all_pages(
        lambda c: store.list_tasks(
            TaskFilter(status=[S.RUNNING]), limit=4, cursor=c, descending=descending
        )
    )
    # A last page that is exactly full must not promise one more.
    assert [len(p) for p in pages] == [4, 4]
    assert [t.id for p in pages for t in p] == running

    whole = await store.list_tasks(TaskFilter(), limit=23, cursor=None, descending=descending)
    assert len(whole.items) == 23
    assert whole.next_cursor is None


# --- counts and leases ---------------------------------------------------------------------


async def test_counts_follow_inserts_and_transitions(store: Store) -> None:
    assert nonzero((await store.counts()).tasks_by_status) == {}
    pending = [make_task() for _ in range(3)]
    blocked = make_task(status=S.BLOCKED)
    await insert(store, *pending, blocked)
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 3, "blocked": 1}

    running = pending[0].evolve(status=S.RUNNING, version=2)
    unblocked = blocked.evolve(status=S.PENDING, version=2)
    await store.commit([UpdateTask(running, S.PENDING), UpdateTask(unblocked, S.BLOCKED)])
    assert nonzero((await store.counts()).tasks_by_status) == {"pending": 3, "running": 1}

    # A write that keeps the state (progress, say) moves nothing.
    await store.commit([UpdateTask(running.evolve(progress_percent=50.0, version=3), S.RUNNING)])
    done = running.evolve(status=S.COMPLETED, version=4)
    await store.commit([UpdateTask(done, S.RUNNING)])
    counts = await store.counts()
    assert isinstance(counts, Counts)
    assert nonzero(counts.tasks_by_status) == {"pending": 3, "completed": 1}


async def test_queue_stats_count_the_unfinished_and_read_the_recently_finished(
    store: Store,
) -> None:
    now = utcnow()
    pending_old = make_task(created_at=now - timedelta(minutes=9))
    pending_high = make_task(priority=Priority.HIGH, created_at=now - timedelta(minutes=1))
    blocked = make_task(status=S.BLOCKED)
    waiting = make_task(status=S.WAITING_INPUT, assigned_to="a1")

    def finished(status: S, minutes_ago: float) -> Task:
        at = now - timedelta(minutes=minutes_ago)
        return make_task(
            status=status, created_at=at - timedelta(seconds=3), started_at=at, finished_at=at
        )

    old = finished(S.COMPLETED, 30)
    recent = [finished(S.COMPLETED, 1), finished(S.FAILED, 2), finished(S.CANCELLED, 3)]
    await insert(store, pending_old, pending_high, blocked, waiting, old, *recent)

    stats = await store.queue_stats(now - timedelta(minutes=15), limit=10)
    assert stats.open_by_state_priority == {
        ("pending", "medium"): 1,
        ("pending", "high"): 1,
        ("blocked", "medium"): 1,
        ("waiting_input", "medium"): 1,
    }
    assert stats.oldest_pending_at == pending_old.created_at
    # Newest first, within the window only, and no more than asked for.
    assert [row[3] for row in stats.finished] == ["completed", "failed", "cancelled"]
    assert stats.finished[0][2] == recent[0].finished_at
    two = await store.queue_stats(now - timedelta(minutes=15), limit=2)
    assert [row[2] for row in two.finished] == [t.finished_at for t in recent[:2]]

    # Counted per window, whatever the sample's limit.
    windows = {"2.5m": now - timedelta(minutes=2.5), "15m": now - timedelta(minutes=15)}
    counted = await store.queue_stats(now - timedelta(minutes=15), limit=1, windows=windows)
    assert len(counted.finished) == 1
    assert counted.finished_counts == {
        "2.5m": {"completed": 1, "failed": 1},
        "15m": {"completed": 1, "failed": 1, "cancelled": 1},
    }


async def test_counts_agents_by_status(store: Store) -> None:
    await store.commit(
        [
            InsertAgent(make_agent(status=AgentStatus.READY)),
            InsertAgent(make_agent(status=AgentStatus.READY, drained=True)),
            InsertAgent(make_agent(status=AgentStatus.BUSY, drained=True)),
            InsertAgent(make_agent(status=AgentStatus.OFFLINE)),
        ]
    )
    counts = await store.counts()
    assert dict(counts.agents_by_status) == {"ready": 2, "busy": 1, "offline": 1, "draining": 2}


async def test_renew_leases_touches_only_that_agents_running_tasks(store: Store) -> None:
    old = T0
    until = T0 + timedelta(minutes=10, microseconds=42)
    mine_running = make_task(status=S.RUNNING, assignee="me", lease_expires_at=old)
    mine_assigned = make_task(status=S.ASSIGNED, assignee="me")
    # A task waiting for input has no lease: a heartbeat must not give it one.
    mine_waiting = make_task(status=S.WAITING_INPUT, assignee="me", run_left_ms=1500)
    theirs = make_task(status=S.RUNNING, assignee="them", lease_expires_at=old)
    untouched = [mine_assigned, mine_waiting, theirs]
    await insert(store, mine_running, *untouched)

    await store.commit([RenewLeases("me", until)])
    # The version moves, so that a lease sweep computed before the renewal cannot land.
    assert await store.get_task(mine_running.id) == mine_running.evolve(
        lease_expires_at=until, version=2
    )
    # An assigned task's lease is its start deadline: heartbeats do not extend it.
    for task in untouched:
        assert await store.get_task(task.id) == task


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrent_commits_all_land_with_unique_event_ids(
    store: Store, make_store: StoreFactory
) -> None:
    # A second store on the same database stands for a second server process.
    second = make_store()
    await second.open()
    try:
        seen: list[Event] = []
        writing = True

        async def follow() -> None:
            # A reader that trusts ids to follow commit order must never skip an event.
            after = 0
            while True:
                finished = not writing
                batch = await store.read_events(after=after, limit=1000)
                seen.extend(batch)
                if batch:
                    after = batch[-1].id or after
                if finished and not batch:
                    return
                await asyncio.sleep(0)

        async def one(i: int) -> list[Event]:
            task = make_task(title=f"task {i}")
            target = store if i % 2 else second
            return await target.commit(
                [InsertTask(task), AppendEvent(make_event("task.created", task.id, n=i))]
            )

        follower = asyncio.create_task(follow())
        try:
            results = await asyncio.gather(*(one(i) for i in range(50)))
        finally:
            writing = False
        await follower

        appended = [events[0] for events in results]
        ids = [e.id for e in appended]
        assert len(set(ids)) == 50
        assert sorted(e.data["n"] for e in appended) == list(range(50))
        stored = await store.read_events(after=0, limit=1000)
        assert sorted(stored, key=lambda e: e.id or 0) == stored
        assert {e.id for e in stored} == set(ids)
        assert [e.id for e in seen] == [e.id for e in stored]
        assert nonzero((await store.counts()).tasks_by_status) == {"pending": 50}
        page = await store.list_tasks(TaskFilter(), limit=100, cursor=None)
        assert len(page.items) == 50
    finally:
        await second.close()


# --- event filters --------------------------------------------------------------------------


async def test_read_events_where_filters_by_task_requester_and_room(store: Store) -> None:
    mine = make_task(requester="alice", scope="infra")
    theirs = make_task(requester="bob", scope="research")
    other = make_task(requester="bob", scope="infra")
    await insert(store, mine, theirs, other)
    before = await store.last_event_id()
    await store.commit(
        [
            AppendEvent(make_event("task.commented", mine.id)),
            AppendEvent(make_event("task.commented", theirs.id)),
            AppendEvent(make_event("room.interrupted", None, room="infra")),
            AppendEvent(make_event("agent.registered", None)),
            AppendEvent(make_event("task.commented", other.id)),
        ]
    )
    head = await store.last_event_id()

    async def where(limit: int = 100, until: int = head, **scope: str) -> list[tuple[str, Any]]:
        found = await store.read_events_where(
            EventScope(**scope), after=before, until=until, limit=limit
        )
        assert [e.id for e in found] == sorted(e.id or 0 for e in found)
        return [(e.type, e.task_id) for e in found]

    assert await where(task_id=theirs.id) == [("task.commented", theirs.id)]
    assert await where(requester="bob") == [
        ("task.commented", theirs.id),
        ("task.commented", other.id),
    ]
    assert await where(room="infra") == [
        ("task.commented", mine.id),
        ("room.interrupted", None),
        ("task.commented", other.id),
    ]
    assert await where(room="infra", requester="bob") == [("task.commented", other.id)]
    assert await where(room="infra", limit=1) == [("task.commented", mine.id)]
    # Bounded by `until`: nothing past the head the reader looked at.
    assert await where(room="infra", until=head - 1) == [
        ("task.commented", mine.id),
        ("room.interrupted", None),
    ]
    assert await where(task_id="no-such-task") == []
