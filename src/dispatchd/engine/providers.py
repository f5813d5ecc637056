"""External capability and availability services (SPEC §3, §7).

With `promptforge.url` set, an agent's capabilities are what PromptForge says; with
`warren.url` set, its availability is what Warren says, and a sleeping agent given a task is
woken through Warren. The HTTP contract expected of both is in docs/providers.md.

Each service's answer is kept for `refresh_s` so that choosing an agent never waits on a
call: an expired answer is asked again in the background and used meanwhile (only the very
first answer is waited for, up to `timeout_s`). A service that is down, slow or answers
something outside the contract changes nothing: its last good answer stays in use, with a
warning, and before any good answer the agents' registered values are used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from dispatchd.config import Settings
from dispatchd.domain.ids import isoformat
from dispatchd.domain.models import Agent, AgentStatus, Task
from dispatchd.engine.wake import WakeCall

log = logging.getLogger(__name__)

AGENTS_PATH = "/api/v1/agents"
# How long a caller waits for a refresh already under way before it uses the last answer.
FRESH_WAIT_S = 0.2

T = TypeVar("T")
A = TypeVar("A", bound="_Answer")
Clock = Callable[[], float]


class ContractError(ValueError):
    """An answer that does not follow the HTTP contract of docs/providers.md."""


# --- the contract ----------------------------------------------------------------------

AgentId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\s,]+$")]
Weight = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Answer(BaseModel):
    # Strict: "0.9" is not a weight and true is not 1. Unknown fields are ignored.
    model_config = ConfigDict(strict=True, frozen=True)


class _ForgeAgent(_Answer):
    id: AgentId
    capabilities: dict[Tag, Weight] | list[Tag]


class _ForgeAnswer(_Answer):
    agents: list[_ForgeAgent]


class _WarrenAgent(_Answer):
    id: AgentId
    status: str


class _WarrenAnswer(_Answer):
    agents: list[_WarrenAgent]


def parse_capabilities(data: object) -> dict[str, dict[str, float]]:
    """PromptForge's `GET /api/v1/agents` body → {agent id: {tag: weight}}.

    A list of tags means weight 1.0 each; a tag weighted 0 is one the agent lacks.
    """
    answer = _validate(_ForgeAnswer, data)
    out: dict[str, dict[str, float]] = {}
    for agent in answer.agents:
        if agent.id in out:
            raise ContractError(f"agent {agent.id!r} is listed twice")
        caps = agent.capabilities
        if isinstance(caps, list):
            out[agent.id] = dict.fromkeys(caps, 1.0)
        else:
            out[agent.id] = {tag: weight for tag, weight in caps.items() if weight > 0}
    return out


def parse_availability(data: object) -> dict[str, AgentStatus]:
    """Warren's `GET /api/v1/agents` body → {agent id: status}."""
    answer = _validate(_WarrenAnswer, data)
    out: dict[str, AgentStatus] = {}
    for agent in answer.agents:
        if agent.id in out:
            raise ContractError(f"agent {agent.id!r} is listed twice")
        try:
            out[agent.id] = AgentStatus(agent.status.lower())
        except ValueError:
            known = ", ".join(s.value for s in AgentStatus)
            raise ContractError(
                f"agent {agent.id!r} has status {agent.status!r}, not one of {known}"
            ) from None
    return out


def _validate(model: type[A], data: object) -> A:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ContractError(f"{where}: {first['msg']}{more}") from None


# --- asking a service -----------------------------------------------------------------


class _Source(Generic[T]):
    """One service's list of agents, asked at most once per `ttl`, last good answer kept."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        parse: Callable[[object], dict[str, T]],
        client: Callable[[], httpx.AsyncClient],
        headers: Mapping[str, str],
        ttl: float,
        timeout: float,
        clock: Clock,
    ) -> None:
        self.name = name
        self.url = url
        self.parse = parse
        self.client = client
        self.headers = {"Accept": "application/json", **headers}
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self.answer: dict[str, T] | None = None
        self.attempts = 0
        self._asked_at: float | None = None
        self._job: asyncio.Task[None] | None = None
        self._failing = False

    async def current(self) -> dict[str, T] | None:
        """The answer to use now; None when the service never gave a good one."""
        if self._job is None and (
            self._asked_at is None or self.clock() - self._asked_at >= self.ttl
        ):
            self._start()
        job = self._job
        if job is not None:
            # Until the first answer, the registered values would be used: worth waiting
            # for it. Later, the last good answer serves while a slow refresh goes on.
            first = self.attempts == 1 and self.answer is None
            await asyncio.wait({job}, timeout=self.timeout if first else FRESH_WAIT_S)
        return self.answer

    async def refresh(self) -> None:
        """Ask now (or join the call under way) and wait for it."""
        job = self._job or self._start()
        await asyncio.wait({job})

    def _start(self) -> asyncio.Task[None]:
        self._asked_at = self.clock()
        self.attempts += 1
        self._job = asyncio.create_task(self._ask(), name=f"ask {self.name}")
        return self._job

    async def _ask(self) -> None:
        try:
            response = await self.client().get(self.url, headers=self.headers, timeout=self.timeout)
            response.raise_for_status()
            answer = self.parse(response.json())
        except Exception as exc:  # whatever the service does, assignment goes on
            self._failing = True
            log.warning(
                "%s at %s: %s; %s",
                self.name,
                self.url,
                _trouble(exc, self.timeout),
                "keeping its last good answer"
                if self.answer is not None
                else "using the agents' registered values",
                extra={"action": "provider", "service": self.name},
            )
        else:
            if self._failing:
                log.info(
                    "%s answers again",
                    self.name,
                    extra={"action": "provider", "service": self.name},
                )
            self._failing = False
            self.answer = answer
        finally:
            self._job = None

    async def close(self) -> None:
        job = self._job
        if job is not None:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)


def _trouble(exc: Exception, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"answered HTTP {exc.response.status_code}"
    if isinstance(exc, ContractError):
        return f"the answer does not follow the contract: {exc}"
    if isinstance(exc, ValueError):
        return "the answer is not JSON"
    if isinstance(exc, httpx.HTTPError):
        return f"unreachable ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


# --- the services together ---------------------------------------------------------------


class External:
    """PromptForge and/or Warren as configured; see `connect`."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        forge, warren = settings.promptforge, settings.warren
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._warren_url = warren.url.rstrip("/") if warren.url else None
        self._warren_headers = {"Authorization": f"Bearer {warren.token}"} if warren.token else {}
        self._warren_timeout = warren.timeout_s
        self.capabilities: _Source[dict[str, float]] | None = None
        self.availability: _Source[AgentStatus] | None = None
        if forge.url:
            self.capabilities = _Source(
                "PromptForge",
                forge.url.rstrip("/") + AGENTS_PATH,
                parse=parse_capabilities,
                client=self._client,
                headers={},
                ttl=forge.refresh_s,
                timeout=forge.timeout_s,
                clock=clock,
            )
        if self._warren_url:
            self.availability = _Source(
                "Warren",
                self._warren_url + AGENTS_PATH,
                parse=parse_availability,
                client=self._client,
                headers=self._warren_headers,
                ttl=warren.refresh_s,
                timeout=warren.timeout_s,
                clock=clock,
            )

    @property
    def refresh_s(self) -> float:
        """How often the assigner should re-read its agents: these services change
        without telling."""
        return min(s.ttl for s in self._sources())

    @property
    def service_wake(self) -> WakeCall | None:
        """The wake call for the `Waker`, when Warren is configured."""
        return self.wake if self._warren_url else None

    async def overlay(self, agents: list[Agent]) -> list[Agent]:
        """`agents` with capabilities and status as the services say.

        An agent PromptForge does not list has no capabilities; one Warren does not list
        is offline. Before a service's first good answer, the registered values stand.
        """
        caps, status = await asyncio.gather(
            _current(self.capabilities), _current(self.availability)
        )
        if caps is None and status is None:
            return agents
        out = []
        for agent in agents:
            changes: dict[str, object] = {}
            if caps is not None:
                changes["capabilities"] = dict(caps.get(agent.id, {}))
            if status is not None:
                changes["status"] = status.get(agent.id, AgentStatus.OFFLINE)
            out.append(agent.evolve(**changes))
        return out

    async def wake(self, agent: Agent, task: Task) -> None:
        """Ask Warren to wake `agent` for `task`; raises when Warren does not accept."""
        if self._warren_url is None:
            return
        url = f"{self._warren_url}{AGENTS_PATH}/{quote(agent.id, safe='')}/wake"
        body = {
            "task_id": task.id,
            "reason": "task assigned",
            "priority": task.priority.value,
            "start_by": isoformat(task.lease_expires_at) if task.lease_expires_at else None,
        }
        response = await self._client().post(
            url, json=body, headers=self._warren_headers, timeout=self._warren_timeout
        )
        response.raise_for_status()

    async def refresh(self) -> None:
        """Ask every service now and wait for the answers."""
        await asyncio.gather(*(s.refresh() for s in self._sources()))

    async def close(self) -> None:
        for source in self._sources():
            await source.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _sources(self) -> list[_Source[dict[str, float]] | _Source[AgentStatus]]:
        sources: list[_Source[dict[str, float]] | _Source[AgentStatus]] = []
        if self.capabilities is not None:
            sources.append(self.capabilities)
        if self.availability is not None:
            sources.append(self.availability)
        return sources

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self._transport)
        return self._http


async def _current(source: _Source[T] | None) -> dict[str, T] | None:
    return None if source is None else await source.current()


def connect(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.monotonic,
) -> External | None:
    """The configured external services, or None when neither URL is set."""
    if not settings.promptforge.url and not settings.warren.url:
        return None
    return External(settings, transport=transport, clock=clock)
