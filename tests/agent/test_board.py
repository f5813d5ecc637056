"""Board sources: the JSON file board on its own, and BoardSync against a real broker.

The sync's tasks are worked by an SDK agent that claims them by a capability tag unique
to the test, and completes or fails them; the board is a real file the tests also edit
by hand, as a person would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatchd.client import AsyncClient
from dispatchd.client.models import Task, TaskStatus
from dispatchd.runner.board import BoardError, BoardSync, Card, CardNotFound, idempotency_key
from dispatchd.runner.board_json import JsonFileBoard
from tests.agent.conftest import ADMIN_TOKEN, LiveServer
from tests.api.helpers import eventually
from tests.integration.server import ServerProcess

# --- a broker whose retries come quickly ------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shared live server, with a short retry backoff so that a retried task is
    claimable again at once."""
    env = {
        "DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "DISPATCH_RETRY__BACKOFF_BASE_MS": "10",
        "DISPATCH_RETRY__BACKOFF_CAP_MS": "20",
    }
    with ServerProcess(tmp_path_factory.mktemp("server"), env=env) as server:
        yield LiveServer(server.api_url, ADMIN_TOKEN, server)


# --- helpers ------------------------------------------------------------------------------


def card(card_id: str, name: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": card_id,
        "name": name,
        "description": f"do {name}",
        "labels": [],
        "assignees": [],
        "comments": [],
        "tasks": [],
    }
    base.update(fields)
    return base


def write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) if not isinstance(data, str) else data)


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def queue_of(path: Path, card_id: str) -> str:
    for queue, cards in read(path)["queues"].items():
        if any(str(c["id"]) == card_id for c in cards):
            return str(queue)
    raise AssertionError(f"card {card_id} is on no queue")


def raw_card(path: Path, card_id: str) -> dict[str, Any]:
    for cards in read(path)["queues"].values():
        for c in cards:
            if str(c["id"]) == card_id:
                return dict(c)
    raise AssertionError(f"card {card_id} is on no queue")


@pytest.fixture
def board_file(tmp_path: Path) -> Path:
    path = tmp_path / "board.json"
    write(path, {"queues": {"Todo": [], "In Progress": [], "Done": []}})
    return path


@pytest.fixture
async def client(live_server: LiveServer, unique: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(live_server.url, agent_id=f"board-{unique}", retries=1) as c:
        yield c


class Agent:
    """An SDK agent that takes the board's tasks by the test's tag."""

    def __init__(self, client: AsyncClient, tag: str) -> None:
        self.client = client
        self.tag = tag

    async def take(self) -> Task:
        claim = await self.client.claim(1, wait_s=10, capabilities=[self.tag])
        assert len(claim.tasks) == 1, claim
        return claim.tasks[0]


@pytest.fixture
async def agent(live_server: LiveServer, unique: str) -> AsyncIterator[Agent]:
    tag = f"board-{unique}"
    async with AsyncClient(live_server.url, agent_id=f"agent-{unique}") as c:
        await c.register_agent(capabilities=[tag], max_concurrent=10)
        yield Agent(c, tag)


MakeSync = Callable[..., BoardSync]


@pytest.fixture
def make_sync(client: AsyncClient, agent: Agent) -> MakeSync:
    def make(path: Path, **kwargs: Any) -> BoardSync:
        kwargs.setdefault("queues", {"Todo": [agent.tag]})
        return BoardSync(client, JsonFileBoard(path), **kwargs)

    return make


async def board_tasks(client: AsyncClient, tag: str) -> list[Task]:
    return [t async for t in client.iter_tasks(requester=client.agent_id, capability=tag)]


# --- the JSON file board alone ----------------------------------------------------------


async def test_reads_the_seed_format(board_file: Path) -> None:
    write(
        board_file,
        {
            "queues": {
                "Todo": [
                    card("1", "Fix crash", labels=["bug", {"name": "ui", "color": "red"}]),
                    card(
                        "2",
                        "Write docs",
                        comments=["plain", {"text": "as an object"}],
                        assignees=["ana"],
                    ),
                ],
                "Backlog": [{"id": 7, "name": "Numbered"}],
            }
        },
    )
    board = JsonFileBoard(board_file)

    cards = await board.ready_cards(["Todo", "Missing", "Backlog"])

    assert cards == [
        Card("1", "Fix crash", "do Fix crash", ("bug", "ui"), (), (), "Todo"),
        Card("2", "Write docs", "do Write docs", (), ("ana",), ("plain", "as an object"), "Todo"),
        Card("7", "Numbered", "", (), (), (), "Backlog"),
    ]
    assert await board.get_card("7") == cards[2]
    assert await board.get_card("nope") is None
    assert await board.list_queues() == {"Todo": 2, "Backlog": 1}
    assert board.name == str(board_file)


async def test_moves_and_comments_keep_what_the_sync_does_not_know(board_file: Path) -> None:
    extra = {"estimate": 3, "tasks": [{"name": "step", "done": False}], "x": {"y": [1, 2]}}
    write(
        board_file,
        {
            "version": 2,
            "queues": {"Todo": [card("1", "One", **extra), card("2", "Two")], "Done": []},
            "owners": ["ana"],
        },
    )
    os.chmod(board_file, 0o640)
    board = JsonFileBoard(board_file)

    await board.add_comment("1", "first")
    await board.move_card("1", "Failed")  # not on the board yet: created
    await board.move_card("1", "Failed")  # already there: nothing changes

    data = read(board_file)
    assert data["version"] == 2 and data["owners"] == ["ana"]
    assert list(data["queues"]) == ["Todo", "Done", "Failed"]
    assert [c["id"] for c in data["queues"]["Todo"]] == ["2"]
    moved = data["queues"]["Failed"][0]
    assert moved == {**card("1", "One", **extra), "comments": ["first"]}
    assert os.stat(board_file).st_mode & 0o777 == 0o640
    assert [p.name for p in board_file.parent.iterdir()] == ["board.json"]  # no temp left
    with pytest.raises(CardNotFound, match="no card with id 'gone'"):
        await board.move_card("gone", "Done")


async def test_a_write_replaces_the_file_rather_than_rewriting_it(board_file: Path) -> None:
    board = JsonFileBoard(board_file)
    write(board_file, {"queues": {"Todo": [card("1", "One")]}})
    before = os.stat(board_file).st_ino
    # A reader holding the old file keeps seeing a whole, consistent board.
    with board_file.open() as old:
        await board.move_card("1", "Done")
        assert json.load(old)["queues"] == {"Todo": [card("1", "One")]}
    assert os.stat(board_file).st_ino != before
    assert read(board_file)["queues"] == {"Todo": [], "Done": [card("1", "One")]}


async def test_an_edit_made_during_a_write_is_kept(board_file: Path) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "One")]}})

    class Interrupted(JsonFileBoard):
        """A person saves the file between the board's read and its replace."""

        edits = 0

        def _replace(self, data: dict[str, Any], stamp: tuple[int, int, int]) -> bool:
            if self.edits == 0:
                self.edits += 1
                person = read(board_file)
                person["queues"]["Todo"].append(card("2", "Added by hand"))
                write(board_file, person)
            return super()._replace(data, stamp)

    board = Interrupted(board_file)
    await board.move_card("1", "In Progress")

    assert board.edits == 1
    queues = read(board_file)["queues"]
    assert queues == {"Todo": [card("2", "Added by hand")], "In Progress": [card("1", "One")]}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"queues": {"Todo": [', "is not valid JSON: Expecting value (line 1, column 22)"),
        ("[]", "the top level must be an object"),
        ('{"lists": {}}', "'queues' must be an object"),
        ('{"queues": {"Todo": {}}}', "queue 'Todo' must be a list of cards"),
        ('{"queues": {"Todo": ["x"]}}', "queue 'Todo', card 1: a card must be an object"),
        ('{"queues": {"Todo": [{"name": "a"}]}}', "card 1: 'id' must be a string or a number"),
        ('{"queues": {"Todo": [{"id": ""}]}}', "card 1: 'id' is empty"),
        (
            '{"queues": {"A": [{"id": 1}], "B": [{"id": "1"}]}}',
            "queue 'B', card 1: id '1' is used twice (also in queue 'A')",
        ),
        ('{"queues": {"T": [{"id": "1", "name": 5}]}}', "card 1 ('1'): 'name' must be a string"),
        ('{"queues": {"T": [{"id": "1", "labels": "x"}]}}', "'labels' must be a list"),
    ],
)
async def test_a_malformed_board_is_refused_with_what_is_wrong(
    board_file: Path, content: str, problem: str
) -> None:
    write(board_file, content)
    with pytest.raises(BoardError) as caught:
        await JsonFileBoard(board_file).ready_cards(["Todo"])
    assert str(caught.value).startswith(f"{board_file}: ")
    assert problem in str(caught.value)
    # No json internals chained to it.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


async def test_a_missing_or_unreadable_file_is_a_board_error(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="the board file does not exist"):
        await JsonFileBoard(tmp_path / "none.json").ready_cards(["Todo"])
    (tmp_path / "bin.json").write_bytes(b'{"queues": "\xff"}')
    with pytest.raises(BoardError, match=r"not UTF-8 text \(bad byte at offset 12\)"):
        await JsonFileBoard(tmp_path / "bin.json").list_queues()


def test_idempotency_keys_fit_a_header() -> None:
    assert idempotency_key("/tmp/board.json", "1") == "board:/tmp/board.json:1"
    for source in ("/" + "x" * 300, "/tmp/tâches.json"):
        key = idempotency_key(source, "1")
        assert key.startswith("board:sha256:") and len(key) <= 200 and key.isascii()
        assert key == idempotency_key(source, "1") != idempotency_key(source, "2")


def test_watched_queues_cannot_be_targets(client: AsyncClient, board_file: Path) -> None:
    with pytest.raises(ValueError, match="cannot also be a target"):
        BoardSync(client, JsonFileBoard(board_file), queues={"Done": ["x"]})
    with pytest.raises(ValueError, match="at least one"):
        BoardSync(client, JsonFileBoard(board_file), queues={})


# --- the sync against a real broker ----------------------------------------------------


async def test_ready_cards_become_tasks_once(
    board_file: Path, make_sync: MakeSync, client: AsyncClient, agent: Agent
) -> None:
    write(
        board_file,
        {
            "queues": {
                "Todo": [
                    card("1", "Fix crash", labels=["bug", "has space", "a,b", {"name": "ui"}]),
                    card("2", "Write docs"),
                ],
                "Backlog": [card("3", "Later")],
                "In Progress": [],
            }
        },
    )
    sync = make_sync(board_file, priority="high", owner="team-a")

    first = await sync.sync_once()
    second = await sync.sync_once()

    assert sorted(first.imported) == ["1", "2"] and first.finished == {}
    assert second.imported == {} and second.finished == {}
    tasks = {t.id: t for t in await board_tasks(client, agent.tag)}
    assert sorted(tasks) == sorted(first.imported.values())
    fix = tasks[first.imported["1"]]
    assert (fix.title, fix.prompt, fix.capabilities) == ("Fix crash", "do Fix crash", [agent.tag])
    assert (fix.priority, fix.owner, fix.labels) == ("high", "team-a", ["bug", "ui"])
    assert fix.context == {"board": {"source": str(board_file), "card_id": "1", "queue": "Todo"}}
    for card_id, task_id in first.imported.items():
        assert queue_of(board_file, card_id) == "In Progress"
        assert raw_card(board_file, card_id)["comments"] == [
            f"dispatchd: created task {task_id} (capabilities: {agent.tag})"
        ]
    assert queue_of(board_file, "3") == "Backlog"


@pytest.mark.parametrize("crash_in", ["add_comment", "move_card"])
async def test_a_crash_between_create_and_move_makes_no_second_task(
    board_file: Path, make_sync: MakeSync, client: AsyncClient, agent: Agent, crash_in: str
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "Fix crash")]}})

    class Crashing(JsonFileBoard):
        async def add_comment(self, card_id: str, text: str) -> None:
            if crash_in == "add_comment":
                raise RuntimeError("the sync died")
            await super().add_comment(card_id, text)

        async def move_card(self, card_id: str, queue: str) -> None:
            if crash_in == "move_card":
                raise RuntimeError("the sync died")
            await super().move_card(card_id, queue)

    with pytest.raises(RuntimeError, match="died"):
        await BoardSync(client, Crashing(board_file), queues={"Todo": [agent.tag]}).sync_once()
    assert queue_of(board_file, "1") == "Todo"
    assert len(await board_tasks(client, agent.tag)) == 1

    report = await make_sync(board_file).sync_once()  # the restarted sync

    (task,) = await board_tasks(client, agent.tag)
    assert report.imported == {"1": task.id}
    assert queue_of(board_file, "1") == "In Progress"
    assert raw_card(board_file, "1")["comments"] == [
        f"dispatchd: created task {task.id} (capabilities: {agent.tag})"
    ]


async def test_a_completed_task_moves_its_card_to_done_with_the_result(
    board_file: Path, make_sync: MakeSync, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "Fix crash")]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]
    held = await agent.take()
    assert held.id == task_id

    assert (await sync.sync_once()).finished == {}  # running: nothing to write back
    assert queue_of(board_file, "1") == "In Progress"
    await agent.client.complete_task(
        task_id, {"files": ["crash.py"], "log": "x" * 10_000}, "Fixed the null check"
    )
    report = await sync.sync_once()

    assert report.finished == {"1": "Done"}
    assert queue_of(board_file, "1") == "Done"
    comment = raw_card(board_file, "1")["comments"][-1]
    assert comment.startswith(f"dispatchd: task {task_id} completed\n\nFixed the null check\n\n")
    assert '"files": [\n    "crash.py"\n  ]' in comment
    assert len(comment) <= 4000
    assert comment.endswith(f"… (trimmed; full text on task {task_id})")


async def test_a_final_failure_moves_its_card_to_failed_with_the_error(
    board_file: Path, make_sync: MakeSync, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "Fix crash")]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]
    await agent.take()
    await agent.client.fail_task(task_id, "the compiler exploded", retryable=False)

    assert (await sync.sync_once()).finished == {"1": "Failed"}
    assert queue_of(board_file, "1") == "Failed"
    assert raw_card(board_file, "1")["comments"][-1] == (
        f"dispatchd: task {task_id} failed: the compiler exploded"
    )


async def test_a_retrying_task_keeps_its_card_in_progress_until_final(
    board_file: Path, make_sync: MakeSync, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "Flaky")]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]

    for attempt in (1, 2):
        held = await agent.take()
        assert (held.id, held.attempt) == (task_id, attempt)
        failed = await agent.client.fail_task(task_id, f"flake {attempt}")
        assert failed.status == TaskStatus.PENDING  # to be retried
        assert (await sync.sync_once()).finished == {}
        assert queue_of(board_file, "1") == "In Progress"

    await agent.take()
    await agent.client.fail_task(task_id, "flake 3")  # the last of 3 attempts

    assert (await sync.sync_once()).finished == {"1": "Failed"}
    assert raw_card(board_file, "1")["comments"][-1] == (
        f"dispatchd: task {task_id} failed: flake 3"
    )


async def test_a_cancelled_task_fails_its_card_with_the_reason(
    board_file: Path, make_sync: MakeSync, client: AsyncClient, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "Unwanted")]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]
    await agent.take()
    await agent.client.fail_task(task_id, "flake")  # retried: the task keeps this error
    await client.cancel_task(task_id, "not needed any more")

    assert (await sync.sync_once()).finished == {"1": "Failed"}
    assert raw_card(board_file, "1")["comments"][-1] == (
        f"dispatchd: task {task_id} was cancelled: not needed any more"
    )


@contextlib.asynccontextmanager
async def running(sync: BoardSync) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sync.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def in_queue(path: Path, card_id: str, queue: str) -> Callable[[], bool]:
    def probe() -> bool:
        return queue_of(path, card_id) == queue

    return probe


async def test_the_running_sync_writes_back_from_events_between_polls(
    board_file: Path, make_sync: MakeSync, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "Fix crash")]}})
    # Polls this far apart leave the event log as the only way to hear of the end soon.
    sync = make_sync(board_file, poll_interval_s=600)
    async with running(sync):
        held = await agent.take()  # claimable once the first poll imported it
        await eventually(in_queue(board_file, "1", "In Progress"), "the import")
        await agent.client.complete_task(held.id, "done", "all good")
        await eventually(in_queue(board_file, "1", "Done"), "the write-back")
    assert raw_card(board_file, "1")["comments"][-1] == (
        f"dispatchd: task {held.id} completed\n\nall good\n\ndone"
    )


async def test_a_restarted_sync_still_writes_back(
    board_file: Path, make_sync: MakeSync, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "One"), card("2", "Two"), card("3", "3")]}})
    imported = (await make_sync(board_file).sync_once()).imported
    held = {t.id: t for t in [await agent.take() for _ in range(3)]}
    assert set(held) == set(imported.values())
    # Two end while no sync runs.
    await agent.client.complete_task(imported["1"], "r1")
    await agent.client.fail_task(imported["2"], "e2", retryable=False)

    async with running(make_sync(board_file, poll_interval_s=600)):
        await eventually(in_queue(board_file, "1", "Done"), "card 1 done")
        await eventually(in_queue(board_file, "2", "Failed"), "card 2 failed")
        # The third ends after the new sync's only poll: it knows the task from the board.
        await agent.client.complete_task(imported["3"], "r3")
        await eventually(in_queue(board_file, "3", "Done"), "card 3 done")


async def test_a_card_added_by_hand_between_polls_is_taken_and_edits_are_kept(
    board_file: Path, make_sync: MakeSync, client: AsyncClient, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "One")], "Done": [card("0", "Old")]}})
    sync = make_sync(board_file)
    await sync.sync_once()

    person = read(board_file)
    person["queues"]["Todo"].append(card("2", "Two", priority_hint="soon"))
    person["queues"]["Done"][0]["name"] = "Old, renamed"
    person["queues"]["In Progress"][0]["comments"].append("a person's note")
    person["notes"] = "kept"
    write(board_file, person)
    report = await sync.sync_once()

    assert list(report.imported) == ["2"]
    assert len(await board_tasks(client, agent.tag)) == 2
    after = read(board_file)
    assert after["notes"] == "kept"
    assert after["queues"]["Done"] == [{**card("0", "Old"), "name": "Old, renamed"}]
    progress = {c["id"]: c for c in after["queues"]["In Progress"]}
    assert progress["1"]["comments"][-1] == "a person's note"
    assert progress["2"]["priority_hint"] == "soon"


async def test_a_malformed_board_is_reported_and_the_sync_recovers(
    board_file: Path,
    make_sync: MakeSync,
    client: AsyncClient,
    agent: Agent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = {"queues": {"Todo": [card("1", "One")]}}
    broken = json.dumps(good)[:-3]
    write(board_file, broken)
    sync = make_sync(board_file, poll_interval_s=0.05)
    with pytest.raises(BoardError, match="is not valid JSON"):
        await sync.sync_once()

    caplog.set_level(logging.ERROR, logger="dispatchd.runner.board")
    async with running(sync) as loop:

        def reported() -> bool:
            return any("is not valid JSON" in r.getMessage() for r in caplog.records)

        await eventually(reported, "the error in the log")
        write(board_file, good)
        await eventually(in_queue(board_file, "1", "In Progress"), "the import")
        assert not loop.done()
    with pytest.raises(json.JSONDecodeError) as parse:
        json.loads(broken)
    where = f"{parse.value.msg} (line {parse.value.lineno}, column {parse.value.colno})"
    (record,) = {r.getMessage(): r for r in caplog.records}.values()
    assert record.getMessage() == (
        f"board sync of {board_file}: {board_file}: the board file is not valid JSON: {where}"
    )
    assert record.exc_info is None  # a message, not a traceback
    assert len(await board_tasks(client, agent.tag)) == 1


async def test_unknown_card_fields_survive_the_round_trip(
    board_file: Path, make_sync: MakeSync, agent: Agent
) -> None:
    extra = {"estimate": 5, "tasks": [{"name": "a", "done": True}], "meta": {"links": [1]}}
    write(board_file, {"queues": {"Todo": [card("1", "One", **extra)]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]
    await agent.take()
    await agent.client.complete_task(task_id, "ok")
    await sync.sync_once()

    final = raw_card(board_file, "1")
    assert queue_of(board_file, "1") == "Done"
    assert {k: final[k] for k in extra} == extra
    assert len(final["comments"]) == 2


async def test_a_failed_card_put_back_by_hand_is_retried(
    board_file: Path, make_sync: MakeSync, client: AsyncClient, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "One")]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]
    await agent.take()
    await agent.client.fail_task(task_id, "no disk", retryable=False)
    await sync.sync_once()

    person = read(board_file)
    person["queues"]["Todo"] = person["queues"].pop("Failed")
    write(board_file, person)
    assert (await sync.sync_once()).imported == {"1": task_id}

    assert queue_of(board_file, "1") == "In Progress"
    assert raw_card(board_file, "1")["comments"][-1] == f"dispatchd: retrying task {task_id}"
    held = await agent.take()
    assert held.id == task_id
    await agent.client.complete_task(task_id, "fine now")
    assert (await sync.sync_once()).finished == {"1": "Done"}
    assert len(await board_tasks(client, agent.tag)) == 1


async def test_a_completed_card_put_back_by_hand_returns_to_done(
    board_file: Path, make_sync: MakeSync, client: AsyncClient, agent: Agent
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "One")]}})
    sync = make_sync(board_file)
    task_id = (await sync.sync_once()).imported["1"]
    await agent.take()
    await agent.client.complete_task(task_id, "the answer")
    await sync.sync_once()

    person = read(board_file)
    person["queues"]["Todo"] = person["queues"].pop("Done")
    write(board_file, person)
    report = await sync.sync_once()

    assert (report.imported, report.finished) == ({"1": task_id}, {"1": "Done"})
    assert raw_card(board_file, "1")["comments"][-2:] == [
        f"dispatchd: created task {task_id} (already completed)",
        f"dispatchd: task {task_id} completed\n\nthe answer",
    ]
    assert len(await board_tasks(client, agent.tag)) == 1


async def test_a_card_the_broker_refuses_goes_to_failed_with_the_reason(
    board_file: Path, client: AsyncClient
) -> None:
    write(board_file, {"queues": {"Todo": [card("1", "One")]}})
    sync = BoardSync(client, JsonFileBoard(board_file), queues={"Todo": ["not a tag"]})

    assert (await sync.sync_once()).finished == {"1": "Failed"}
    comment = raw_card(board_file, "1")["comments"][-1]
    assert comment.startswith("dispatchd: could not create a task from this card: 422")
