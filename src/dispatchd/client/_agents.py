"""Agent calls of the async client (`/api/v1/agents`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

from dispatchd.api.schemas.agents import AgentRegistered
from dispatchd.client._http import HttpBase, compact, pages
from dispatchd.client.models import Agent, AgentRemoved, AgentStatus, Page, Registration

AGENTS = "/api/v1/agents"

Capabilities = Sequence[str] | Mapping[str, float]


def agent_path(agent_id: str, action: str = "") -> str:
    path = f"{AGENTS}/{quote(agent_id, safe='')}"
    return f"{path}/{action}" if action else path


class AgentFields(TypedDict, total=False):
    """What an agent says about itself (None: leave as it is)."""

    capabilities: Capabilities | None
    owner: str | None
    max_concurrent: int | None
    room: str | None
    wake_url: str | None
    dispatch_model: str | None
    description: str | None
    status: AgentStatus | str | None


def _agent_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    body = compact(fields)
    capabilities = body.get("capabilities")
    if capabilities is not None:
        body["capabilities"] = (
            dict(capabilities) if isinstance(capabilities, Mapping) else list(capabilities)
        )
    return body


class AgentFilters(TypedDict, total=False):
    """The filters of an agent listing."""

    status: AgentStatus | str | None
    capability: str | None
    owner: str | None
    room: str | None


class AgentsApi(HttpBase):
    async def register_agent(
        self, *, agent_id: str | None = None, **fields: Unpack[AgentFields]
    ) -> Registration:
        """Register the agent (by default the client's `agent_id`), or update it when it
        exists. A new agent gets its token once; the client keeps it when it had none."""
        body = _agent_fields({"id": agent_id, **fields})
        response = await self.send("POST", AGENTS, json=body)
        answer = AgentRegistered.model_validate_json(response.content)
        if answer.token is not None and self.token is None:
            self.token = answer.token
        return Registration(
            agent=answer.agent, token=answer.token, created=response.status_code == 201
        )

    async def get_agent(self, agent_id: str) -> Agent:
        """An agent with its current load."""
        return await self.call(Agent, "GET", agent_path(agent_id))

    async def update_agent(self, agent_id: str, **fields: Unpack[AgentFields]) -> Agent:
        """Change the fields given (None leaves a field as it is)."""
        body = _agent_fields(dict(fields))
        return await self.call(Agent, "PATCH", agent_path(agent_id), json=body)

    async def deregister_agent(self, agent_id: str | None = None) -> AgentRemoved:
        """Remove an agent (by default this client's); its tasks go back to the queue."""
        return await self.call(AgentRemoved, "DELETE", agent_path(agent_id or self.agent_id))

    async def heartbeat(
        self, agent_id: str | None = None, status: AgentStatus | str | None = None
    ) -> Agent:
        """Say the agent is alive (renewing the leases of all its tasks), optionally with
        a new status (`ready`, `sleeping`, `busy`, `degraded`)."""
        body = compact({"status": status})
        path = agent_path(agent_id or self.agent_id, "heartbeat")
        return await self.call(Agent, "POST", path, json=body)

    async def list_agents(
        self, *, limit: int = 100, cursor: str | None = None, **filters: Unpack[AgentFilters]
    ) -> Page[Agent]:
        """One page of agents (admin)."""
        params = {**filters, "limit": limit, "cursor": cursor}
        return await self.call(Page[Agent], "GET", AGENTS, params=params, admin=True)

    async def iter_agents(
        self, *, limit: int = 100, **filters: Unpack[AgentFilters]
    ) -> AsyncGenerator[Agent, None]:
        """Every agent matching the filters, page after page (admin)."""
        async for agent in pages(
            lambda cursor: self.list_agents(limit=limit, cursor=cursor, **filters)
        ):
            yield agent

    async def drain_agent(self, agent_id: str) -> Agent:
        """Stop giving the agent new tasks; it finishes those it holds (admin)."""
        return await self.call(Agent, "POST", agent_path(agent_id, "drain"), admin=True)

    async def undrain_agent(self, agent_id: str) -> Agent:
        """Give the agent new tasks again (admin)."""
        return await self.call(Agent, "POST", agent_path(agent_id, "undrain"), admin=True)
