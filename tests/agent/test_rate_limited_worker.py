"""A Worker against a broker with a tight rate limit: slowed by 429s, which it waits out
as their Retry-After says, never broken by them; every task completes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatchd.client import AsyncClient
from dispatchd.runner.worker import Job, Worker
from tests.agent.conftest import ADMIN_TOKEN
from tests.agent.helpers import serving, settled
from tests.integration.server import ServerProcess

LIMIT = {
    "DISPATCH_ADMIN_TOKEN": ADMIN_TOKEN,
    "DISPATCH_LIMITS__REQUESTS_PER_SECOND": "2",
    "DISPATCH_LIMITS__BURST": "2",
}


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("limited"), env=LIMIT) as server:
        yield server


@pytest.fixture
async def requester(limited_server: ServerProcess) -> AsyncIterator[AsyncClient]:
    # The admin is not limited.
    async with AsyncClient(
        limited_server.api_url, agent_id="requester", admin_token=ADMIN_TOKEN
    ) as client:
        yield client


def limited_answers(ops_url: str) -> float:
    text = httpx.get(f"{ops_url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dispatchd_http_requests_total" and s.labels.get("status") == "429"
    )


async def test_a_worker_is_slowed_not_broken_by_a_rate_limit(
    limited_server: ServerProcess, requester: AsyncClient
) -> None:
    tasks = [await requester.create_task(f"t{i}", capabilities=["slow"]) for i in range(4)]
    async with AsyncClient(limited_server.api_url, agent_id="limited-worker") as client:
        worker = Worker(client, claim_wait_s=1.0, heartbeat_s=1.0, grace_s=5.0, max_concurrent=4)

        @worker.handler("slow")
        async def work(job: Job) -> str:
            await job.progress("on it", percent=50)
            return job.task.title

        async with serving() as start:
            await start(worker)
            for task in tasks:
                # Two requests a second: the worker's heartbeats and claims take most of
                # them, so its tasks finish in about 25 s alone, longer on a busy machine.
                done = await settled(requester, task.id, "completed", limit_s=120)
                assert done.result == task.title and done.attempt == 1
    # It went over its limit, was told to wait, and waited: no task failed or ran twice.
    assert limited_answers(limited_server.ops_url) > 0
    for task in tasks:
        types = [e.type for e in await requester.task_events(task.id)]
        assert types.count("task.assigned") == 1 and types.count("task.completed") == 1
