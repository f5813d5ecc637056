"""The review gate (SPEC §1, §2; docs/review.md): a task with a reviewer opens a review task
when completed, routed to the reviewer and never to the agent that did the work; the
review task's verdict applies to the task, a rejection sends it back to its agent with the
feedback until `review.max_cycles`, and every verdict is listed in the task's `reviews`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import as_agent
from tests.api.helpers import (
    ADMIN,
    BOTH,
    Register,
    act,
    assert_error,
    create_task,
    detail,
    eventually,
    task_events,
    wait_assigned,
    wait_task,
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "assignment": {"lease_ms": 10_000, "wake_timeout_ms": 5000, "tick_interval_ms": 200},
        "retry": {"backoff_base_ms": 50, "backoff_cap_ms": 100},
        "review": {"max_cycles": 2},
    }


async def review_tasks(client: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/tasks?review_of={task_id}&order=asc")
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def open_review(client: httpx.AsyncClient, task_id: str, cycle: int) -> dict[str, Any]:
    """The review task of `task_id`'s `cycle`th review, once it exists."""

    async def probe() -> dict[str, Any] | None:
        found = [t for t in await review_tasks(client, task_id) if t["status"] != "cancelled"]
        return found[cycle - 1] if len(found) >= cycle else None

    return await eventually(probe, f"review {cycle} of {task_id}")


async def worked(client: httpx.AsyncClient, task_id: str, agent: str, result: Any) -> None:
    await wait_assigned(client, task_id, agent)
    done = await act(client, task_id, "complete", agent, result=result, summary=f"did {result}")
    assert done["status"] == "review"


async def verdict(
    client: httpx.AsyncClient, review_id: str, agent: str, verdict: str, feedback: str
) -> dict[str, Any]:
    await wait_assigned(client, review_id, agent)
    body = {"result": {"verdict": verdict, "feedback": feedback}}
    r = await client.post(f"/api/v1/tasks/{review_id}/complete", json=body, headers=as_agent(agent))
    assert r.status_code == 200, r.text
    return dict(r.json())


@BOTH
async def test_a_named_reviewer_rejects_then_approves(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    # The reviewer can do the work too, but never gets the work it is to review.
    await register("aegis", ["code"])
    task = await create_task(
        client, capabilities=["code"], prompt="Sort the list", review=True, reviewer="aegis"
    )
    assert task["reviewer"] == {"agent": "aegis", "capability": None}
    assert task["kind"] == "task" and task["excluded_agent"] == "aegis"
    await worked(client, task["id"], "w1", "v1")

    first = await open_review(client, task["id"], 1)
    assert (first["kind"], first["review_of"], first["assigned_to"]) == (
        "review",
        task["id"],
        "aegis",
    )
    assert first["excluded_agent"] == "w1"
    carried = first["context"]["review"]
    assert carried["prompt"] == "Sort the list" and carried["result"] == "v1"
    assert carried["summary"] == "did v1" and carried["worker"] == "w1"
    assert "VERDICT: APPROVED" in first["prompt"] and "v1" in first["prompt"]

    done = await verdict(client, first["id"], "aegis", "rejected", "handle empty lists")
    assert done["status"] == "completed"
    back = await detail(client, task["id"])
    assert back["status"] in ("pending", "assigned")
    assert back["context"]["feedback"] == "handle empty lists"
    assert back["review_cycles"] == 1

    # Offered first to the agent that did it, which resumes with the feedback.
    await worked(client, task["id"], "w1", "v2")
    second = await open_review(client, task["id"], 2)
    assert second["context"]["review"]["previous_feedback"] == "handle empty lists"
    await verdict(client, second["id"], "aegis", "approved", "good")
    final = await wait_task(client, task["id"], lambda t: t["status"] == "completed", "approved")
    assert final["result"] == "v2"
    assert [(r["cycle"], r["reviewer"], r["verdict"], r["feedback"]) for r in final["reviews"]] == [
        (1, "aegis", "rejected", "handle empty lists"),
        (2, "aegis", "approved", "good"),
    ]
    assert [r["review_task_id"] for r in final["reviews"]] == [first["id"], second["id"]]
    assert all(r["created_at"].endswith("Z") for r in final["reviews"])
    kinds = [e["type"] for e in await task_events(client, task["id"])]
    assert kinds.count("task.review_requested") == 2
    assert "task.rejected" in kinds and kinds[-1] == "task.approved"


async def test_a_rejected_task_goes_first_to_the_agent_that_did_it(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    # w2 is idle, holds nothing and was never given a task: it would win on score alone.
    await register("w2")
    review = await open_review(client, task["id"], 1)
    await verdict(client, review["id"], "rev", "rejected", "again")
    again = await wait_assigned(client, task["id"], "w1")
    assert again["attempt"] == 2 and again["preferred_agent"] is None
    rejected = (await task_events(client, task["id"], "task.rejected"))[0]
    assert rejected["data"]["worker"] == "w1"


async def test_a_preference_is_not_a_reservation(
    client: httpx.AsyncClient, register: Register, admin: dict[str, str]
) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    r = await client.post("/api/v1/agents/w1/drain", headers=admin)
    assert r.status_code == 200, r.text
    await register("w2")
    review = await open_review(client, task["id"], 1)
    await verdict(client, review["id"], "rev", "rejected", "again")
    await wait_assigned(client, task["id"], "w2")


@BOTH
async def test_a_capability_review_never_goes_to_the_worker(
    client: httpx.AsyncClient, register: Register
) -> None:
    # w1 holds the review capability itself and is the only agent at first.
    await register("w1", ["code", "review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    assert task["reviewer"] == {"agent": None, "capability": "review"}
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    assert review["capabilities"] == ["review"] and review["assigned_to"] is None
    # Neither push nor a claim hands it to w1.
    r = await client.post("/api/v1/tasks/claim", json={"max_tasks": 5}, headers=as_agent("w1"))
    assert r.status_code == 200, r.text
    assert r.json()["tasks"] == [] and r.json()["reason"] == "no_tasks_available"
    r = await client.get(f"/api/v1/tasks/{review['id']}/explain")
    assert r.status_code == 200, r.text
    excluded = {e["agent_id"]: e["reason"] for e in r.json()["excluded"]}
    assert excluded == {"w1": "excluded"}
    assert (await detail(client, review["id"]))["status"] == "pending"
    await register("rev", ["review"])
    await verdict(client, review["id"], "rev", "approved", "fine")
    await wait_task(client, task["id"], lambda t: t["status"] == "completed", "approved")


async def test_the_last_rejection_fails_the_task(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    for cycle in (1, 2):  # review.max_cycles is 2 here
        await worked(client, task["id"], "w1", f"v{cycle}")
        review = await open_review(client, task["id"], cycle)
        await verdict(client, review["id"], "rev", "rejected", f"no {cycle}")
    failed = await wait_task(client, task["id"], lambda t: t["status"] == "failed", "failed")
    assert failed["error"] == "rejected in review 2 times: no 2"
    assert [r["verdict"] for r in failed["reviews"]] == ["rejected", "rejected"]
    assert len(await review_tasks(client, task["id"])) == 2


async def test_a_failing_reviewer_sends_the_review_back_to_its_queue(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    for attempt in (1, 2, 3, 4):  # more than its max_attempts (3)
        await wait_assigned(client, review["id"], "rev", attempt)
        failed = await act(client, review["id"], "fail", "rev", error="no verdict", retryable=False)
        assert failed["status"] == "pending"
        assert (await detail(client, task["id"]))["status"] == "review"
    await verdict(client, review["id"], "rev", "approved", "at last")
    final = await wait_task(client, task["id"], lambda t: t["status"] == "completed", "approved")
    assert [r["feedback"] for r in final["reviews"]] == ["at last"]


async def test_a_verdict_posted_on_the_task_closes_its_review_task(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/review",
        json={"verdict": "approved", "feedback": "ok by me"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    closed = await detail(client, review["id"])
    assert closed["status"] == "cancelled"
    final = await detail(client, task["id"])
    assert [(r["reviewer"], r["review_task_id"]) for r in final["reviews"]] == [("admin", None)]


async def test_the_reviewer_may_post_its_verdict_on_the_task(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    await register("rev", ["review"])
    await register("other", ["code"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    await wait_assigned(client, review["id"], "rev")
    body = {"verdict": "rejected", "feedback": "tests"}
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/review", json=body, headers=as_agent("other")
    )
    assert_error(r, 403, "not_reviewer")
    r = await client.post(f"/api/v1/tasks/{task['id']}/review", json=body, headers=as_agent("rev"))
    assert r.status_code == 200, r.text
    assert r.json()["context"]["feedback"] == "tests"
    assert (await detail(client, review["id"]))["status"] == "cancelled"
    # The cancelled review task's agent cannot complete it any more.
    r = await client.post(
        f"/api/v1/tasks/{review['id']}/complete",
        json={"result": {"verdict": "approved"}},
        headers=as_agent("rev"),
    )
    assert r.status_code in (403, 409), r.text
    assert (await detail(client, task["id"]))["reviews"][0]["verdict"] == "rejected"


async def test_cancelling_a_task_in_review_cancels_its_review(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    task = await create_task(client, capabilities=["code"], review=True, reviewer="aegis")
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    r = await client.patch(f"/api/v1/tasks/{task['id']}", json={"status": "cancelled"})
    assert r.status_code == 200, r.text
    assert (await detail(client, review["id"]))["status"] == "cancelled"


async def test_a_task_in_review_without_a_reviewer_waits_for_a_posted_verdict(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    task = await create_task(client, capabilities=["code"], review=True)
    await worked(client, task["id"], "w1", "v1")
    assert await review_tasks(client, task["id"]) == []
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/review", json={"verdict": "approved"}, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["status"] == "completed"


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["maybe", "APPROVED!", None, 1, ""])
async def test_a_review_task_completed_without_a_verdict_is_refused_whole(
    client: httpx.AsyncClient, register: Register, bad: Any
) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    await wait_assigned(client, review["id"], "rev")
    before = await detail(client, review["id"])
    for result in ({"verdict": bad}, "approved", [1], None, {"verdict": "approved", "feedback": 3}):
        r = await client.post(
            f"/api/v1/tasks/{review['id']}/complete",
            json={"result": result},
            headers=as_agent("rev"),
        )
        err = assert_error(r, 422, "invalid_verdict")
        assert err["details"]["field"].startswith("result")
    after = await detail(client, review["id"])
    assert (after["status"], after["updated_at"]) == (before["status"], before["updated_at"])
    assert (await detail(client, task["id"]))["status"] == "review"


async def test_a_posted_verdict_must_be_approved_or_rejected(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    task = await create_task(client, capabilities=["code"], review=True, reviewer="aegis")
    await worked(client, task["id"], "w1", "v1")
    for body in ({"verdict": "maybe"}, {"verdict": "Approved"}, {}, {"verdict": None}):
        r = await client.post(f"/api/v1/tasks/{task['id']}/review", json=body, headers=ADMIN)
        assert_error(r, 422, None)
    assert (await detail(client, task["id"]))["reviews"] == []


async def test_the_worker_may_not_review_its_own_work(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1", ["code", "review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    r = await client.post(
        f"/api/v1/tasks/{task['id']}/review",
        json={"verdict": "approved"},
        headers=as_agent("w1"),
    )
    assert_error(r, 403, "self_review")
    assert (await detail(client, task["id"]))["status"] == "review"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"reviewer": "aegis"}, "reviewer_without_review"),
        ({"review": True, "reviewer": "w1", "assigned_to": "w1"}, "reviewer_is_assignee"),
        ({"review": True, "reviewer": {"agent": "a", "capability": "b"}}, None),
        ({"review": True, "reviewer": {}}, None),
        ({"review": True, "reviewer": {"capability": "two words"}}, None),
        ({"review": True, "reviewer": {"team": "x"}}, None),
        ({"review": True, "reviewer": ""}, None),
    ],
)
async def test_a_bad_reviewer_is_refused(
    client: httpx.AsyncClient, fields: dict[str, Any], code: str | None
) -> None:
    r = await client.post("/api/v1/tasks", json={"title": "t", **fields})
    err = assert_error(r, 422, code)
    if code is not None:
        assert err["details"]["field"] == "reviewer"
    r = await client.get("/api/v1/tasks")
    assert r.json()["items"] == []


async def test_an_unknown_reviewer_agent_is_accepted(client: httpx.AsyncClient) -> None:
    # Agents come and go: the review task waits for the agent as a task named for it does.
    task = await create_task(client, review=True, reviewer={"agent": "not-yet"})
    assert task["reviewer"] == {"agent": "not-yet", "capability": None}


async def test_a_reviewer_that_vanishes_sends_the_review_back_to_its_queue(
    client: httpx.AsyncClient, register: Register, admin: dict[str, str]
) -> None:
    await register("w1")
    await register("rev", ["review"])
    task = await create_task(
        client, capabilities=["code"], review=True, reviewer={"capability": "review"}
    )
    await worked(client, task["id"], "w1", "v1")
    review = await open_review(client, task["id"], 1)
    await wait_assigned(client, review["id"], "rev")
    await act(client, review["id"], "start", "rev")
    r = await client.delete("/api/v1/agents/rev", headers=admin)
    assert r.status_code == 200, r.text
    back = await wait_task(client, review["id"], lambda t: t["status"] == "pending", "requeued")
    assert back["assignee"] is None and back["attempts"][0]["outcome"] == "lost"
    assert (await detail(client, task["id"]))["status"] == "review"
    await register("rev2", ["review"])
    await verdict(client, review["id"], "rev2", "approved", "fine")
    await wait_task(client, task["id"], lambda t: t["status"] == "completed", "approved")


async def test_review_tasks_completed_in_a_batch_apply_their_verdicts(
    client: httpx.AsyncClient, register: Register
) -> None:
    await register("w1")
    await register("rev", ["review"])
    tasks = [
        await create_task(
            client, capabilities=["code"], review=True, reviewer={"capability": "review"}
        )
        for _ in range(2)
    ]
    for task in tasks:
        await worked(client, task["id"], "w1", "v1")
    reviews = [await open_review(client, task["id"], 1) for task in tasks]
    for review in reviews:
        await wait_assigned(client, review["id"], "rev")
    items = [
        {"task_id": reviews[0]["id"], "result": {"verdict": "approved"}},
        {"task_id": reviews[1]["id"], "result": {"verdict": "perhaps"}},
    ]
    r = await client.post(
        "/api/v1/tasks/batch/complete", json={"items": items}, headers=as_agent("rev")
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["items"]
    assert first["ok"] and not second["ok"]
    assert second["error"]["code"] == "invalid_verdict"
    assert (await detail(client, tasks[0]["id"]))["status"] == "completed"
    assert (await detail(client, tasks[1]["id"]))["status"] == "review"
    assert (await detail(client, reviews[1]["id"]))["status"] == "assigned"
