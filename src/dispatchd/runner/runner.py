"""The subprocess runner (SPEC §5): turns any command-line agent into a worker.

    runner = Runner(command="claude", max_concurrent_agents=3, agent_timeout=600)

    @runner.route(capabilities=["code"], args=["-p"], timeout=1800)
    def engineer(task: Task) -> str:
        return f"Work on task {task.id}: {task.title}\\n\\n{task.prompt}"

    runner.run()

Each task a route takes runs its command as a subprocess: an argument list (never a
shell), in its own process group, with `DISPATCH_URL` (the runner's local agent API,
scoped to the task, needing no credentials), `DISPATCH_TASK_ID` and `DISPATCH_RESULT_FILE`
in its environment. Exit 0 completes the task with the result file, when the agent wrote
one, or the tail of its output; another exit fails it with the tail of its error output.
Standard output is streamed to the task as rate-limited progress. On the route's timeout
the process gets TERM, then KILL after a grace period, and the task a comment saying so;
a task cancelled (or its room interrupted) while it runs stops the process the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dispatchd.client import AsyncClient
from dispatchd.client.errors import ClientError
from dispatchd.client.models import Task
from dispatchd.runner import workdirs
from dispatchd.runner.adapters import AgentAdapter, Invocation, adapter_for, fill
from dispatchd.runner.board import BoardSync
from dispatchd.runner.local_api import LocalApi
from dispatchd.runner.process import AgentProcess, ProcessResult, ProcessSpec
from dispatchd.runner.review import ReviewAdapter
from dispatchd.runner.worker import Job, Worker, run_until_signalled

log = logging.getLogger(__name__)

PromptFn = Callable[..., str]
F = TypeVar("F", bound=PromptFn)
DEFAULT_PROMPT = "{prompt}"
PROGRESS_CHARS = 2000


@dataclass(eq=False)
class Route:
    """What a runner does with the tasks needing `capabilities`: the arguments after the
    command, the prompt (a function of the task, or a template with `{id}`, `{title}`,
    `{prompt}`, `{model}`, `{feedback}`), a timeout, a priority among routes (lower first)
    and a concurrency of its own."""

    capabilities: frozenset[str]
    args: list[str]
    prompt: PromptFn | str = DEFAULT_PROMPT
    timeout_s: float | None = None
    priority: int = 0
    concurrency: int | None = None
    command: list[str] | None = None
    adapter: AgentAdapter | None = None
    # A reviewer route: it takes review tasks and reads the command's verdict (Aegis).
    review: bool = False

    def build_prompt(self, task: Task) -> str:
        if isinstance(self.prompt, str):
            return fill(self.prompt, task, task.prompt)
        params = inspect.signature(self.prompt).parameters
        if len(params) >= 2:
            # The seed's route functions take (task_id, task_name).
            return str(self.prompt(task.id, task.title))
        return str(self.prompt(task))


@dataclass
class RunnerOptions:
    max_concurrent_agents: int = 3
    agent_timeout: float | None = None
    kill_grace_s: float = 5.0
    stop_grace_s: float = 30.0
    output_cap: int = 64 * 1024
    progress_interval_s: float = 2.0
    api_host: str = "127.0.0.1"
    api_port: int = 0
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    heartbeat_s: float = 10.0
    claim_wait_s: float = 20.0


def default_agent_id(command: Sequence[str]) -> str:
    """`<command>@<host>`: stable across restarts, so a restarted runner is the same agent."""
    name = Path(command[0]).name if command else "runner"
    return f"{name}@{socket.gethostname()}".replace(" ", "-")[:128]


class Runner:
    def __init__(
        self,
        command: str | Sequence[str],
        *,
        url: str = "http://127.0.0.1:8600",
        agent_id: str | None = None,
        token: str | None = None,
        client: AsyncClient | None = None,
        adapter: AgentAdapter | None = None,
        boards: Sequence[BoardSync] = (),
        max_concurrent_agents: int = 3,
        agent_timeout: float | None = None,
        owner: str | None = None,
        room: str | None = None,
        **options: Any,
    ) -> None:
        self.command = [command] if isinstance(command, str) else list(command)
        if not self.command:
            raise ValueError("the runner needs a command")
        self.options = RunnerOptions(
            max_concurrent_agents=max_concurrent_agents, agent_timeout=agent_timeout, **options
        )
        self.agent_id = agent_id or (client.agent_id if client else default_agent_id(self.command))
        self._own_client = client is None
        self.client = client or AsyncClient(url, agent_id=self.agent_id, token=token)
        self.adapter = adapter
        self.boards = list(boards)
        self.routes: list[Route] = []
        self.worker = Worker(
            self.client,
            agent_id=self.agent_id,
            max_concurrent=self.options.max_concurrent_agents,
            owner=owner,
            room=room,
            description=f"runner: {' '.join(self.command)}"[:2000],
            heartbeat_s=self.options.heartbeat_s,
            claim_wait_s=self.options.claim_wait_s,
            grace_s=self.options.stop_grace_s,
        )
        self.local_api = LocalApi(
            self.client,
            host=self.options.api_host,
            port=self.options.api_port,
            status=self.status,
        )

    # --- routes -------------------------------------------------------------------------

    def route(
        self,
        *,
        capabilities: Sequence[str] = (),
        args: Sequence[str] = (),
        timeout: float | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        command: str | Sequence[str] | None = None,
        adapter: AgentAdapter | None = None,
    ) -> Callable[[F], F]:
        """Decorate the function that builds a task's prompt (from the task, or from the
        task id and title as in the seed) for the tasks needing `capabilities`."""

        def register(fn: F) -> F:
            self.add_route(
                capabilities=capabilities,
                args=args,
                prompt=fn,
                timeout=timeout,
                priority=priority,
                concurrency=concurrency,
                command=command,
                adapter=adapter,
            )
            return fn

        return register

    def add_route(
        self,
        *,
        capabilities: Sequence[str] = (),
        args: Sequence[str] = (),
        prompt: PromptFn | str = DEFAULT_PROMPT,
        timeout: float | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        command: str | Sequence[str] | None = None,
        adapter: AgentAdapter | None = None,
        review: bool = False,
    ) -> Route:
        """`review`: the route takes review tasks only, and the command's output must
        follow the Aegis convention (`VERDICT: APPROVED` / `VERDICT: REJECTED`, `NOTES:`);
        see docs/review.md."""
        route = Route(
            capabilities=frozenset(capabilities),
            args=list(args),
            prompt=prompt,
            timeout_s=timeout,
            priority=priority,
            concurrency=concurrency,
            command=[command] if isinstance(command, str) else list(command) if command else None,
            adapter=adapter,
            review=review,
        )
        self.routes.append(route)

        async def handle(job: Job) -> None:
            await self._run_task(route, job)

        handle.__name__ = f"route[{','.join(sorted(route.capabilities)) or '*'}]"
        self.worker.add_handler(
            handle, route.capabilities, priority=priority, concurrency=concurrency, review=review
        )
        return route

    def status(self) -> dict[str, Any]:
        return {
            **self.worker.status(),
            "command": self.command,
            "routes": [
                {
                    "capabilities": sorted(r.capabilities),
                    "priority": r.priority,
                    "concurrency": r.concurrency,
                    "timeout_s": r.timeout_s or self.options.agent_timeout,
                    "review": r.review,
                }
                for r in self.routes
            ],
        }

    # --- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully (a second signal: at once)."""
        run_until_signalled(
            self.serve, self.stop, self.worker.is_stopping, self.options.stop_grace_s
        )

    def stop(self) -> None:
        self.worker.stop()

    async def wait_started(self) -> None:
        await self.worker.wait_started()

    async def serve(self) -> None:
        if not self.routes:
            self.add_route()
        # Task folders that runners killed on this machine could not remove.
        await asyncio.to_thread(workdirs.sweep)
        await self.local_api.start()
        boards = [asyncio.create_task(b.run(), name="dispatchd-board") for b in self.boards]
        log.info("local agent API on %s", self.local_api.url)
        try:
            await self.worker.serve()
        finally:
            for task in boards:
                task.cancel()
            await asyncio.gather(*boards, return_exceptions=True)
            await self.local_api.close()
            if self._own_client:
                await self.client.aclose()

    # --- one task -----------------------------------------------------------------------

    async def _run_task(self, route: Route, job: Job) -> None:
        task = job.task
        command = route.command or self.command
        adapter = route.adapter or self.adapter or adapter_for(command)
        if route.review:
            adapter = ReviewAdapter(adapter)
        timeout = route.timeout_s or self.options.agent_timeout
        prompt = adapter.prompt(task, route.build_prompt(task))
        with workdirs.task_dir() as tmp:
            invocation = Invocation(task, command, route.args, prompt, tmp / "result")
            scope = self.local_api.open(task)
            env = {
                **self.options.env,
                **scope.env(),
                "DISPATCH_RESULT_FILE": str(invocation.result_file),
            }
            spec = ProcessSpec(
                adapter.argv(invocation),
                env=env,
                cwd=self.options.cwd,
                timeout_s=timeout,
                clock=scope.clock,
                grace_s=self.options.kill_grace_s,
                output_cap=self.options.output_cap,
            )

            async def stream(text: str) -> None:
                await self._progress(job, text)

            process = AgentProcess(
                spec, on_output=stream, progress_interval_s=self.options.progress_interval_s
            )
            try:
                result = await process.run()
            except asyncio.CancelledError:
                if job.lost is not None:
                    await self._note(job, f"agent stopped: {job.lost}")
                raise
            finally:
                self.local_api.close_scope(scope)
            outcome = adapter.outcome(invocation, result)
        if outcome.context:
            await self._merge_context(job, outcome.context)
        if result.timed_out:
            await self._note(job, _timeout_note(timeout, result))
        if scope.finished is not None or result.stopped:
            return  # the agent reported itself, or it was stopped: nothing more to say
        if outcome.ok:
            await job.complete(outcome.result, outcome.summary, cost=outcome.cost)
        else:
            await job.fail(
                outcome.error or "the agent failed", retryable=outcome.retryable, cost=outcome.cost
            )

    async def _progress(self, job: Job, text: str) -> None:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return
        message = "\n".join(lines[-5:])[-PROGRESS_CHARS:]
        try:
            await job.progress(message)
        except ClientError as exc:
            log.debug("progress on %s not sent: %s", job.id, exc)

    async def _note(self, job: Job, text: str) -> None:
        with contextlib.suppress(ClientError):
            await job.comment(text)

    async def _merge_context(self, job: Job, patch: Mapping[str, Any]) -> None:
        try:
            await job.update_context(patch)
        except ClientError as exc:
            log.warning("could not record %s on task %s: %s", sorted(patch), job.id, exc)


def _timeout_note(timeout: float | None, result: ProcessResult) -> str:
    how = "TERM, then KILL" if result.killed else "TERM"
    return f"agent timed out after {timeout or 0:g}s and was stopped ({how})"
