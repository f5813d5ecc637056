"""The storage contract of rooms: their rows, and what their status is derived from."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dispatchd.domain.models import AgentStatus, TaskStatus
from dispatchd.domain.rooms import Room
from dispatchd.errors import ConcurrentUpdate, Conflict, DuplicateKey, NotFound
from dispatchd.store import migrations
from dispatchd.store.base import AppendEvent, InsertAgent, InsertTask, Store, UpdateTask
from dispatchd.store.rooms import DeleteRoom, InsertRoom, RequireRoom, UpdateRoom
from dispatchd.store.rows import to_row
from dispatchd.store.sqlstore import SQLStore
from tests.contract.conftest import StoreFactory
from tests.contract.test_store import T0, all_pages, insert, make_agent, make_event, make_task
from tests.contract.test_store_engine import query

S = TaskStatus
SECOND = timedelta(seconds=1)


def make_room(room_id: str = "infra", **changes: Any) -> Room:
    room = Room(
        id=room_id, name=f"#{room_id}", workspace="~/ops/servers", created_at=T0, updated_at=T0
    )
    return room.evolve(**changes)


async def test_room_round_trips_and_pages(store: Store) -> None:
    rooms = [make_room(f"room-{i:02}") for i in range(5)]
    rooms.append(make_room("bare", workspace=None, name="Bare ✓"))
    for room in rooms:
        await store.commit([InsertRoom(room)])
    assert await store.get_room("bare") == rooms[-1]
    assert await store.get_room("room-03") == rooms[3]
    assert await store.get_room("nope") is None
    pages = await all_pages(lambda c: store.list_rooms(limit=2, cursor=c))
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [r.id for p in pages for r in p] == sorted(r.id for r in rooms)


async def test_duplicate_room_id(store: Store) -> None:
    await store.commit([InsertRoom(make_room())])
    with pytest.raises(DuplicateKey) as info:
        await store.commit([InsertRoom(make_room(name="#other")), AppendEvent(make_event("x"))])
    assert info.value.details["field"] == "id"
    assert (await store.get_room("infra")) == make_room()
    assert await store.read_events(after=0, limit=10) == []


async def test_update_room_follows_the_version(store: Store) -> None:
    room = make_room()
    await store.commit([InsertRoom(room)])
    changed = room.evolve(name="#ops", workspace=None, updated_at=T0 + SECOND, version=2)
    await store.commit([UpdateRoom(changed)])
    assert await store.get_room("infra") == changed
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateRoom(room.evolve(name="#stale", version=2))])
    with pytest.raises(ConcurrentUpdate):
        await store.commit([UpdateRoom(make_room("ghost", version=2))])
    assert await store.get_room("infra") == changed


async def test_delete_room_refuses_unfinished_work(store: Store) -> None:
    await store.commit([InsertRoom(make_room())])
    task = make_task(scope="infra", status=S.PENDING)
    await insert(store, task, make_task(scope="infra", status=S.COMPLETED))
    with pytest.raises(Conflict) as info:
        await store.commit([DeleteRoom("infra", 1), AppendEvent(make_event("room.removed"))])
    assert info.value.code == "room_busy"
    assert info.value.details["unfinished"] == 1
    assert await store.get_room("infra") is not None
    assert await store.read_events(after=0, limit=10) == []
    with pytest.raises(ConcurrentUpdate):
        await store.commit([DeleteRoom("infra", 7)])
    done = task.evolve(status=S.CANCELLED, version=2)
    await store.commit([UpdateTask(done, S.PENDING)])
    await store.commit([DeleteRoom("infra", 1)])
    assert await store.get_room("infra") is None
    with pytest.raises(ConcurrentUpdate):
        await store.commit([DeleteRoom("infra", 1)])


async def test_require_room(store: Store) -> None:
    await store.commit([InsertRoom(make_room())])
    task = make_task(scope="infra")
    await store.commit([RequireRoom("infra"), InsertTask(task)])
    assert await store.get_task(task.id) is not None
    lost = make_task(scope="nope")
    with pytest.raises(NotFound):
        await store.commit([RequireRoom("nope"), InsertTask(lost)])
    assert await store.get_task(lost.id) is None


async def test_room_activity_over_many_rooms(store: Store) -> None:
    for room_id in ("infra", "research", "quiet"):
        await store.commit([InsertRoom(make_room(room_id))])
    await store.commit(
        [
            InsertAgent(make_agent("infra-1", room="infra")),
            InsertAgent(make_agent("infra-2", room="infra", status=AgentStatus.OFFLINE)),
            InsertAgent(make_agent("research-1", room="research")),
            InsertAgent(make_agent("roomless")),
        ]
    )
    waiting = make_task(scope="infra", status=S.WAITING_INPUT, assignee="infra-1")
    failed_old = make_task(
        scope="research", status=S.FAILED, finished_at=T0, updated_at=T0 + SECOND, attempt=1
    )
    done_new = make_task(
        scope="research",
        status=S.COMPLETED,
        finished_at=T0 + SECOND,
        updated_at=T0 + 2 * SECOND,
        attempt=1,
    )
    await insert(
        store,
        waiting,
        make_task(scope="infra", status=S.PENDING),
        make_task(scope="infra", status=S.BLOCKED),
        make_task(scope="infra", status=S.FAILED, finished_at=T0, attempt=2),
        # Never worked on: says nothing of the room's agents.
        make_task(scope="infra", status=S.CANCELLED, finished_at=T0 + SECOND),
        failed_old,
        done_new,
        make_task(status=S.RUNNING, assignee="roomless"),
    )
    found = await store.room_activity(["infra", "research", "quiet", "ghost"])
    assert set(found) == {"infra", "research", "quiet", "ghost"}
    infra = found["infra"]
    assert sorted(a.id for a in infra.agents) == ["infra-1", "infra-2"]
    assert [t.id for t in infra.active] == [waiting.id]
    assert infra.pending == 2
    assert infra.last_finished is S.FAILED
    assert infra.last_task_at is not None
    research = found["research"]
    assert [a.id for a in research.agents] == ["research-1"]
    assert research.active == [] and research.pending == 0
    assert research.last_finished is S.COMPLETED
    assert research.last_task_at == T0 + 2 * SECOND
    for empty in (found["quiet"], found["ghost"]):
        assert empty.agents == [] and empty.active == [] and empty.pending == 0
        assert empty.last_task_at is None and empty.last_finished is None
    assert await store.room_activity([]) == {}


async def test_room_tasks_and_events_newest_first(store: Store) -> None:
    old = make_task(scope="infra", status=S.COMPLETED, created_at=T0)
    new = make_task(scope="infra", status=S.RUNNING, created_at=T0 + SECOND)
    other = make_task(scope="research", created_at=T0 + 2 * SECOND)
    await insert(store, old, new, other)
    assert [t.id for t in await store.room_tasks("infra", limit=10)] == [new.id, old.id]
    assert [t.id for t in await store.room_tasks("infra", limit=1)] == [new.id]
    running = await store.room_tasks("infra", limit=10, statuses=["running", "assigned"])
    assert [t.id for t in running] == [new.id]
    await store.commit(
        [
            AppendEvent(make_event("task.created", old.id)),
            AppendEvent(make_event("room.created", room="infra")),
            AppendEvent(make_event("task.created", other.id)),
            AppendEvent(make_event("room.created", room="research")),
            AppendEvent(make_event("task.started", new.id)),
            AppendEvent(make_event("agent.updated", room="infra")),
            AppendEvent(make_event("room.interrupted", room="infra", cancelled=[new.id])),
        ]
    )
    events = await store.room_events("infra", limit=10)
    assert [(e.type, e.task_id) for e in events] == [
        ("room.interrupted", None),
        ("task.started", new.id),
        ("room.created", None),
        ("task.created", old.id),
    ]
    assert [e.type for e in await store.room_events("infra", limit=2)] == [
        "room.interrupted",
        "task.started",
    ]


async def test_claims_see_only_their_rooms_tasks(store: Store) -> None:
    await store.commit([InsertAgent(make_agent("me", room="infra"))])
    plain = make_task(created_at=T0)
    mine = make_task(scope="infra", created_at=T0 + SECOND)
    theirs = make_task(scope="research", created_at=T0 + 2 * SECOND)
    named = make_task(scope="research", assigned_to="me", created_at=T0 + 3 * SECOND)
    await insert(store, plain, mine, theirs, named)
    in_infra = await store.claimable(query("me", room="infra", now=T0 + timedelta(hours=1)))
    assert {t.id for t in in_infra} == {plain.id, mine.id}
    roomless = await store.claimable(query("me", now=T0 + timedelta(hours=1)))
    assert {t.id for t in roomless} == {plain.id}
    seen: list[set[str]] = []

    def plan(view: Any) -> list[Any]:
        seen.append({t.id for t in view.candidates})
        return []

    await store.claim(query("me", room="infra", now=T0 + timedelta(hours=1)), plan)
    assert seen == [{plain.id, mine.id}]


async def test_room_events_are_those_of_its_tasks_and_its_own(store: Store) -> None:
    # A task and its first event in one commit, as creation writes them.
    first = make_task(scope="infra")
    await store.commit([InsertTask(first), AppendEvent(make_event("task.created", first.id))])
    roomless = make_task()
    elsewhere = make_task(scope="research")
    await insert(store, roomless, elsewhere)
    await store.commit(
        [
            AppendEvent(make_event("task.created", roomless.id, room="infra")),
            AppendEvent(make_event("task.created", elsewhere.id)),
            AppendEvent(make_event("room.updated", room="research")),
            AppendEvent(make_event("room.updated")),
            AppendEvent(make_event("room.updated", room="infra")),
            AppendEvent(make_event("task.progress", first.id)),
        ]
    )
    infra = await store.room_events("infra", limit=10)
    assert [(e.type, e.task_id) for e in infra] == [
        ("task.progress", first.id),
        ("room.updated", None),
        ("task.created", first.id),
    ]
    assert [e.id for e in infra] == sorted((e.id for e in infra), reverse=True)
    research = await store.room_events("research", limit=10)
    assert [(e.type, e.task_id) for e in research] == [
        ("room.updated", None),
        ("task.created", elsewhere.id),
    ]
    assert await store.room_events("ghost", limit=10) == []


async def test_room_events_kept_before_the_room_index_are_found(
    make_empty_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events appended before migration 13 carried no room: it fills it in.
    store = make_empty_store()
    assert isinstance(store, SQLStore)
    everything = migrations.pending
    monkeypatch.setattr(
        migrations, "pending", lambda d, done: [m for m in everything(d, done) if m.version < 13]
    )
    await store.open()
    try:
        await store.migrate()
        mine, theirs = make_task(scope="infra"), make_task(scope="research")
        await insert(store, mine, theirs)
        dialect = store.connector.dialect
        append = dialect.sql(
            "INSERT INTO events (type, task_id, agent_id, data, created_at) "
            "VALUES (:type, :task_id, :agent_id, :data, :created_at)"
        )
        for event in (
            make_event("task.created", mine.id),
            make_event("room.created", room="infra"),
            make_event("task.created", theirs.id),
            make_event("room.created", room="research"),
            make_event("agent.updated", room="infra"),
        ):
            await store.connector.execute(append, to_row(event, dialect.codec))
        monkeypatch.setattr(migrations, "pending", everything)
        assert 13 in await store.migrate()
        events = await store.room_events("infra", limit=10)
        assert [(e.type, e.task_id) for e in events] == [
            ("room.created", None),
            ("task.created", mine.id),
        ]
    finally:
        await store.close()


async def test_last_finished_is_the_latest_to_finish_of_those_that_ran(store: Store) -> None:
    for room_id in ("infra", "research"):
        await store.commit([InsertRoom(make_room(room_id))])
    # Made newest id first, so that finishing order and id order disagree.
    infra = [
        make_task(
            scope="infra", status=status, finished_at=T0 + n * SECOND, attempt=1, created_at=T0
        )
        for n, status in reversed(list(enumerate([S.COMPLETED, S.TIMED_OUT, S.FAILED] * 5)))
    ]
    tie_low, tie_high = sorted(
        (make_task(scope="research", status=s, attempt=3) for s in (S.CANCELLED, S.COMPLETED)),
        key=lambda t: t.id,
    )
    await insert(
        store,
        *infra,
        # Later, but never ran: says nothing of the room's agents.
        make_task(scope="infra", status=S.CANCELLED, finished_at=T0 + 99 * SECOND),
        # Running again after finishing once: unfinished.
        make_task(scope="infra", status=S.RUNNING, attempt=2),
        tie_low.evolve(finished_at=T0 + 5 * SECOND),
        tie_high.evolve(finished_at=T0 + 5 * SECOND),
        make_task(scope="research", status=S.COMPLETED, finished_at=T0, attempt=1),
        make_task(status=S.CANCELLED, finished_at=T0 + 200 * SECOND, attempt=1),
    )
    found = await store.room_activity(["infra", "research", "ghost"])
    assert found["infra"].last_finished is S.FAILED  # finished at T0 + 14 s
    # Finished at the same instant: the later id.
    assert found["research"].last_finished is tie_high.status
    assert found["ghost"].last_finished is None
    only = await store.room_activity(["research"])
    assert only["research"].last_finished is tie_high.status
