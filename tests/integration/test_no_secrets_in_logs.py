"""No secret in any log line: a full lifecycle against a real server logging at debug
level, then its whole output searched for the admin token, an agent token and a webhook
secret (and the signature made with that secret)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.integration.server import ServerProcess
from tests.support.receiver import Receiver

ADMIN_TOKEN = "the-admin-token-that-must-not-leak-0123"
WEBHOOK_SECRET = "whsec-the-webhook-secret-that-must-not-leak"


def wait_for(probe, what: str, limit_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_lifecycle_at_debug_level_logs_no_secret(tmp_path: Path) -> None:
    env = {
        "DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "DISPATCH_LOG_LEVEL": "debug",
        "DISPATCH_AGENT_TOKENS": "required",
    }
    admin = {"X-Agent-ID": "ops", "Authorization": f"Bearer {ADMIN_TOKEN}"}
    with Receiver() as receiver, ServerProcess(tmp_path, env=env) as server:
        with httpx.Client(base_url=server.api_url, timeout=10) as http:
            r = http.post(
                "/api/v1/webhooks",
                json={"url": receiver.url(), "secret": WEBHOOK_SECRET},
                headers=admin,
            )
            assert r.status_code == 201, r.text
            r = http.post(
                "/api/v1/agents",
                json={"capabilities": ["code"]},
                headers={**admin, "X-Agent-ID": "w1"},
            )
            assert r.status_code == 201, r.text
            agent_token = r.json()["token"]
            me = {"X-Agent-ID": "w1", "Authorization": f"Bearer {agent_token}"}
            r = http.post(
                "/api/v1/tasks", json={"title": "t", "capabilities": ["code"]}, headers=admin
            )
            assert r.status_code == 201, r.text
            task_id = r.json()["id"]
            assert http.post("/api/v1/agents/w1/heartbeat", json={}, headers=me).status_code == 200
            r = http.post("/api/v1/tasks/claim", json={"max_tasks": 1, "wait_s": 5}, headers=me)
            assert [t["id"] for t in r.json()["tasks"]] == [task_id], r.text
            for action, body in (
                ("start", {}),
                ("progress", {"message": "half", "percent": 50}),
                ("complete", {"result": {"ok": True}}),
            ):
                r = http.post(f"/api/v1/tasks/{task_id}/{action}", json=body, headers=me)
                assert r.status_code == 200, r.text
            # Failures log too: a wrong token, a wrong admin token.
            wrong = {"X-Agent-ID": "w1", "Authorization": f"Bearer {agent_token}x"}
            assert http.get("/api/v1/tasks", headers=wrong).status_code == 401
            bad_admin = {"X-Agent-ID": "ops", "Authorization": f"Bearer {ADMIN_TOKEN}x"}
            assert http.get("/api/v1/agents", headers=bad_admin).status_code == 401
            receiver.fail_next(1)  # a failed delivery is logged, and retried
            sent = wait_for(
                lambda: [q for q in receiver.requests() if q.answered == 200], "a delivery"
            )
            signature = sent[0].headers["x-dispatch-signature"]
        assert server.stop() == 0, server.describe()
        assert server.stdout is not None and server.stderr is not None
        logs = server.stdout.text + "\n" + server.stderr.text
    assert " DEBUG " in logs  # the level took effect
    assert len(logs.splitlines()) > 10
    for secret in (ADMIN_TOKEN, agent_token, WEBHOOK_SECRET, signature.split("v1=")[-1]):
        assert secret not in logs, f"a secret appears in the logs: {secret[:6]}…"
