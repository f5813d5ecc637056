"""Agent routes of API v1 (SPEC §4 Agents)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.params import PageCursor
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.api.schemas.agents import (
    AgentList,
    AgentOut,
    AgentPatch,
    AgentRegister,
    AgentRegistered,
    AgentRemoved,
    HeartbeatBody,
)
from dispatchd.domain.access import require_admin
from dispatchd.domain.models import AgentStatus
from dispatchd.errors import ValidationFailed
from dispatchd.store.base import AgentFilter, AgentLoad

router = APIRouter(prefix="/api/v1/agents", tags=["agents"], responses=ERRORS)


def _agent_out(load: AgentLoad) -> AgentOut:
    return AgentOut.of(load.agent, load.active)


def _weights(capabilities: list[str] | dict[str, float] | None) -> dict[str, float] | None:
    """Capabilities as tags with weights; a bare tag weighs 1."""
    if capabilities is None:
        return None
    if isinstance(capabilities, list):
        return dict.fromkeys(capabilities, 1.0)
    return dict(capabilities)


def _fields(body: AgentRegister | AgentPatch) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True, exclude={"id"})
    if "capabilities" in fields:
        fields["capabilities"] = _weights(body.capabilities) or {}
    # A null status or limit leaves it as it is: an agent always has a status, and no limit
    # is the default limit already.
    for name in ("status", "max_concurrent"):
        if name in fields and fields[name] is None:
            del fields[name]
    if "status" in fields:
        fields["status"] = AgentStatus(fields["status"])
    return fields


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AgentRegistered,
    responses={200: {"model": AgentRegistered, "description": "An existing agent was updated"}},
)
async def register_agent(
    body: AgentRegister, caller: CallerDep, rt: RuntimeDep, response: Response
) -> AgentRegistered:
    agent_id = body.id or caller.agent_id
    if "/" in agent_id:
        # An agent is addressed by its id in paths (/agents/{id}/heartbeat): a slash would
        # make it unreachable. Requesters that never register may still use one.
        raise ValidationFailed(
            f"an agent id cannot contain '/': {agent_id!r}", code="invalid_agent_id", field="id"
        )
    registered = await rt.agents.register(agent_id, _fields(body), caller)
    if registered.token is None:
        response.status_code = status.HTTP_200_OK
    load = await rt.agents.load(registered.agent.id)
    return AgentRegistered(agent=_agent_out(load), token=registered.token)


@router.get("", response_model=AgentList)
async def list_agents(
    caller: CallerDep,
    rt: RuntimeDep,
    status_: Annotated[AgentStatus | None, Query(alias="status")] = None,
    capability: Annotated[str | None, Query(max_length=128)] = None,
    owner: Annotated[str | None, Query(max_length=128)] = None,
    room: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: PageCursor = None,
) -> AgentList:
    require_admin(caller)
    flt = AgentFilter(
        status=[status_] if status_ else [], capability=capability, owner=owner, room=room
    )
    page = await rt.agents.page(flt, limit=limit, cursor=cursor)
    return AgentList(items=[_agent_out(a) for a in page.items], next_cursor=page.next_cursor)


@router.get("/{agent_id}", response_model=AgentOut)
async def get_agent(agent_id: str, caller: CallerDep, rt: RuntimeDep) -> AgentOut:
    return _agent_out(await rt.agents.load(agent_id))


@router.patch("/{agent_id}", response_model=AgentOut)
async def patch_agent(
    agent_id: str, body: AgentPatch, caller: CallerDep, rt: RuntimeDep
) -> AgentOut:
    await rt.agents.update(agent_id, _fields(body), caller)
    return _agent_out(await rt.agents.load(agent_id))


@router.delete("/{agent_id}", response_model=AgentRemoved)
async def delete_agent(agent_id: str, caller: CallerDep, rt: RuntimeDep) -> AgentRemoved:
    requeued = await rt.agents.deregister(agent_id, caller)
    return AgentRemoved(id=agent_id, requeued=[t.id for t in requeued])


@router.post("/{agent_id}/heartbeat", response_model=AgentOut)
async def heartbeat(
    agent_id: str, caller: CallerDep, rt: RuntimeDep, body: HeartbeatBody | None = None
) -> AgentOut:
    new_status = AgentStatus(body.status) if body and body.status else None
    await rt.agents.heartbeat(agent_id, caller, status=new_status)
    return _agent_out(await rt.agents.load(agent_id))


@router.post("/{agent_id}/drain", response_model=AgentOut)
async def drain(agent_id: str, caller: CallerDep, rt: RuntimeDep) -> AgentOut:
    await rt.agents.set_drained(agent_id, caller, drained=True)
    return _agent_out(await rt.agents.load(agent_id))


@router.post("/{agent_id}/undrain", response_model=AgentOut)
async def undrain(agent_id: str, caller: CallerDep, rt: RuntimeDep) -> AgentOut:
    await rt.agents.set_drained(agent_id, caller, drained=False)
    return _agent_out(await rt.agents.load(agent_id))
