"""How `dispatchd mcp` finds the broker and its credentials: options, then DISPATCH_*
variables, then the admin token file of the working directory."""

from __future__ import annotations

from pathlib import Path

from dispatchd.client import AsyncClient
from tests.agent.conftest import LiveServer
from tests.integration.server import run_cli
from tests.mcp.helpers import call, call_error, stdio_session


async def test_an_agent_token_and_as_name_the_caller(
    live_server: LiveServer, unique: str, tmp_path: Path
) -> None:
    agent_id = f"lead-{unique}"
    async with (
        AsyncClient(live_server.url, agent_id=agent_id) as lead,
        AsyncClient(live_server.url, agent_id=f"hand-{unique}") as hand,
        AsyncClient(
            live_server.url, agent_id="operator", admin_token=live_server.admin_token
        ) as admin,
    ):
        token = (await lead.register_agent(capabilities=[f"lead-{unique}"])).token
        await hand.register_agent(capabilities=[f"hand-{unique}"])
        await admin.create_room(f"r-{unique}")
        assert token is not None
        env = {"DISPATCH_TOKEN": token, "DISPATCH_AGENT_ID": agent_id}
        async with stdio_session(live_server.url, cwd=tmp_path, env=env) as session:
            start = await call(session, "get_notifications", {})
            arguments = {"prompt": "p", "capabilities": [f"hand-{unique}"]}
            task = (await call(session, "dispatch_task", arguments))["task"]
            assert task["requester"] == agent_id
            claim = await hand.claim(wait_s=10)
            await hand.fail_task(claim.tasks[0].id, "no disk", retryable=False)
            # A requester reads the news of its own tasks, and only those, waiting for it.
            news = await call(
                session, "get_notifications", {"after": start["next_cursor"], "wait_s": 20}
            )
            assert [(n["kind"], n["task_id"]) for n in news["notifications"]] == [
                ("failed", task["id"])
            ]
            # An agent is no admin: interrupting a room is refused with the API's reason.
            refused = await call_error(session, "interrupt_room", {"room": f"r-{unique}"})
            assert "403" in refused


async def test_a_wrong_token_is_a_tool_error_not_a_crash(
    live_server: LiveServer, tmp_path: Path
) -> None:
    env = {"DISPATCH_TOKEN": "not-the-token-of-anyone"}
    async with stdio_session(live_server.url, cwd=tmp_path, env=env, args=("--as", "x")) as s:
        error = await call_error(s, "list_tasks", {})
        assert "unknown agent token" in error and "401" in error
        assert "unknown agent token" in await call_error(s, "list_tasks", {})


async def test_the_url_from_the_environment_and_the_admin_token_from_the_data_dir(
    live_server: LiveServer, unique: str, tmp_path: Path
) -> None:
    (tmp_path / ".dispatchd").mkdir()
    (tmp_path / ".dispatchd" / "admin_token").write_text(live_server.admin_token + "\n")
    env = {"DISPATCH_API_URL": live_server.url}
    async with stdio_session(None, cwd=tmp_path, env=env) as session:
        task = await call(
            session, "dispatch_task", {"prompt": "p", "capabilities": [f"n-{unique}"]}
        )
        assert task["task"]["requester"] == "mcp"
        # The admin token it found lets it read the admin's notifications.
        await call(session, "get_notifications", {})


async def test_an_unreachable_broker_is_a_tool_error(tmp_path: Path) -> None:
    async with stdio_session("http://127.0.0.1:9", cwd=tmp_path) as session:
        error = await call_error(session, "list_tasks", {})
        assert "could not be reached" in error
        assert "could not be reached" in await call_error(session, "check_task", {"task_id": "t"})


def test_the_command_documents_where_it_finds_the_broker() -> None:
    out = run_cli("mcp", "--help")
    assert out.returncode == 0, out.stderr
    for text in ("--url", "--as", "--token", "DISPATCH_API_URL", "DISPATCH_AGENT_ID"):
        assert text in out.stdout
    assert run_cli("mcp", "--no-such-option").returncode == 2
