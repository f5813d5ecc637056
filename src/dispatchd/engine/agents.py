"""Agent operations: registration, tokens, heartbeats, drain, deregistration."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatchd.domain import lifecycle
from dispatchd.domain.access import Caller, require_admin, require_self_or_admin
from dispatchd.domain.ids import utcnow
from dispatchd.domain.lifecycle import Change, Policy
from dispatchd.domain.models import Agent, AgentStatus, Event, Task
from dispatchd.domain.webhooks import check_url
from dispatchd.engine.transitions import MAX_TRIES, commit_changes
from dispatchd.errors import ConcurrentUpdate, DuplicateKey, NotFound, Unauthorized
from dispatchd.outbound import Outbound
from dispatchd.store.base import (
    AgentFilter,
    AgentLoad,
    AppendEvent,
    DeleteAgent,
    InsertAgent,
    Op,
    Page,
    RenewLeases,
    Store,
    UpdateAgent,
)

# Fields an agent may set about itself, on registration or by PATCH.
AGENT_FIELDS = (
    "capabilities",
    "owner",
    "max_concurrent",
    "room",
    "wake_url",
    "dispatch_model",
    "description",
    "status",
)


def hash_token(token: str) -> str:
    """Agent tokens are 256-bit random strings, so one SHA-256 pass is a sound digest."""
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Registered:
    agent: Agent
    token: str | None


class AgentService:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        escalate_to: str | None = None,
        outbound: Outbound | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.escalate_to = escalate_to
        # Where a wake URL may point (docs/security.md).
        self.outbound = outbound

    def _check(self, fields: Mapping[str, Any]) -> None:
        url = fields.get("wake_url")
        if url:
            check_url(url, "wake_url")
        if url and self.outbound is not None:
            self.outbound.check_stored(url, "wake_url")

    async def get(self, agent_id: str) -> Agent:
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id}", agent_id=agent_id)
        return agent

    async def page(self, flt: AgentFilter, *, limit: int, cursor: str | None) -> Page[AgentLoad]:
        return await self.store.list_agents(flt, limit=limit, cursor=cursor)

    async def load(self, agent_id: str) -> AgentLoad:
        agent = await self.get(agent_id)
        return AgentLoad(agent, agent.active)

    async def register(
        self, agent_id: str, fields: Mapping[str, Any], caller: Caller
    ) -> Registered:
        """Register a new agent (returns its token, once) or update an existing one."""
        require_self_or_admin(agent_id, caller)
        self._check(fields)
        for _ in range(MAX_TRIES):
            existing = await self.store.get_agent(agent_id)
            if existing is not None:
                try:
                    return Registered(await self._update(existing, fields, caller), None)
                except ConcurrentUpdate:
                    continue
            now = utcnow()
            token = secrets.token_urlsafe(32)
            values = {k: v for k, v in fields.items() if v is not None}
            agent = Agent(
                id=agent_id,
                capabilities=values.pop("capabilities", {}),
                status=values.pop("status", AgentStatus.READY),
                created_at=now,
                updated_at=now,
                token_hash=hash_token(token),
                last_heartbeat_at=now,
                **values,
            )
            event = _agent_event(
                "agent.registered", agent, caller, capabilities=dict(agent.capabilities)
            )
            try:
                await self.store.commit([InsertAgent(agent), AppendEvent(event)])
            except DuplicateKey:
                continue
            return Registered(agent, token)
        raise ConcurrentUpdate(f"agent {agent_id} is changing too fast; try again")

    async def update(self, agent_id: str, fields: Mapping[str, Any], caller: Caller) -> Agent:
        require_self_or_admin(agent_id, caller)
        self._check(fields)
        for _ in range(MAX_TRIES):
            try:
                return await self._update(await self.get(agent_id), fields, caller)
            except ConcurrentUpdate:
                continue
        raise ConcurrentUpdate(f"agent {agent_id} is changing too fast; try again")

    async def _update(self, agent: Agent, fields: Mapping[str, Any], caller: Caller) -> Agent:
        changes = {k: v for k, v in fields.items() if k in AGENT_FIELDS}
        now = utcnow()
        new = agent.evolve(updated_at=now, version=agent.version + 1, **changes)
        ops: list[Op] = [UpdateAgent(new)]
        changed = sorted(k for k in changes if getattr(agent, k) != getattr(new, k))
        ops.append(AppendEvent(_agent_event("agent.updated", new, caller, fields=changed)))
        if new.status != agent.status:
            ops.append(AppendEvent(status_event(agent, new, caller)))
        await self.store.commit(ops)
        return new

    async def heartbeat(
        self, agent_id: str, caller: Caller, *, status: AgentStatus | None
    ) -> Agent:
        """Liveness: records the time, the status if given, and renews the agent's leases."""
        require_self_or_admin(agent_id, caller)
        for _ in range(MAX_TRIES):
            agent = await self.get(agent_id)
            now = utcnow()
            new_status = status or (
                AgentStatus.READY if agent.status is AgentStatus.OFFLINE else agent.status
            )
            new = agent.evolve(
                status=new_status, last_heartbeat_at=now, updated_at=now, version=agent.version + 1
            )
            ops: list[Op] = [UpdateAgent(new), RenewLeases(agent_id, now + self.policy.lease)]
            if new.status != agent.status:
                ops.append(AppendEvent(status_event(agent, new, caller)))
            try:
                await self.store.commit(ops)
            except ConcurrentUpdate:
                continue
            return new
        raise ConcurrentUpdate(f"agent {agent_id} is changing too fast; try again")

    async def set_drained(self, agent_id: str, caller: Caller, *, drained: bool) -> Agent:
        require_admin(caller)
        for _ in range(MAX_TRIES):
            agent = await self.get(agent_id)
            if agent.drained == drained:
                return agent
            new = agent.evolve(drained=drained, updated_at=utcnow(), version=agent.version + 1)
            kind = "agent.drained" if drained else "agent.undrained"
            try:
                await self.store.commit(
                    [UpdateAgent(new), AppendEvent(_agent_event(kind, new, caller))]
                )
            except ConcurrentUpdate:
                continue
            return new
        raise ConcurrentUpdate(f"agent {agent_id} is changing too fast; try again")

    async def deregister(self, agent_id: str, caller: Caller) -> list[Task]:
        """Remove the agent; every task it held goes back to pending, in the same commit."""
        require_self_or_admin(agent_id, caller)
        for _ in range(MAX_TRIES):
            agent = await self.get(agent_id)
            held = await self.store.active_tasks_of(agent_id)
            now = utcnow()
            steps: list[tuple[Change, Task | None]] = []
            for task in held:
                change = lifecycle.requeue(
                    task, now, self.policy, reason=f"agent {agent_id} deregistered"
                )
                steps.append((change, task))
            gone = _agent_event("agent.deregistered", agent, caller, requeued=[t.id for t in held])
            extra: list[Op] = [DeleteAgent(agent_id, agent.version), AppendEvent(gone)]
            try:
                # Through the one commit path: a fifth loss escalates and fails children.
                done = await commit_changes(self.store, steps, extra, escalate_to=self.escalate_to)
            except ConcurrentUpdate:
                continue
            return [done.tasks[t.id] for t in held]
        raise ConcurrentUpdate(f"agent {agent_id} is changing too fast; try again")

    async def authenticate(self, agent_id: str, token: str) -> Agent:
        """The agent that `token` belongs to, which must be `agent_id`."""
        agent = await self.store.find_agent_by_token_hash(hash_token(token))
        if agent is None or agent.token_hash is None:
            raise Unauthorized("unknown agent token", code="invalid_token")
        if not tokens_equal(agent.id, agent_id):
            raise Unauthorized(
                "the token belongs to another agent than X-Agent-ID", code="token_mismatch"
            )
        return agent


def _agent_event(kind: str, agent: Agent, caller: Caller, **data: Any) -> Event:
    data.setdefault("by", caller.agent_id)
    return Event(type=kind, created_at=utcnow(), agent_id=agent.id, data=data)


def status_event(old: Agent, new: Agent, caller: Caller) -> Event:
    return _agent_event(
        "agent.status_changed", new, caller, previous=old.status.value, status=new.status.value
    )
