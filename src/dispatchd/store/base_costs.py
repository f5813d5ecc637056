"""The costs' part of the storage interface (docs/costs.md): the ledger's write, which goes
into a `Store.commit` like every other, and its reads. `base.Store` includes both."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol

from dispatchd.domain.costs import Charge, Cost


@dataclass(frozen=True, slots=True)
class AddCost:
    """Add what a cost report added to the ledger of its requester, agent and UTC day."""

    charge: Charge


@dataclass(frozen=True, slots=True)
class CostTotal:
    """One line of the cost ledger: what `agent` spent for `requester` on `day` (UTC)."""

    day: date
    requester: str
    agent: str
    cost: Cost


class CostReads(Protocol):
    async def cost_totals(self, *, since: date, limit: int) -> list[CostTotal]:
        """The ledger's lines from UTC day `since` on, by day, requester and agent; at
        most `limit` of them."""
        ...

    async def spent_usd(self, requester: str, day: date) -> float:
        """What `requester`'s tasks cost on UTC day `day`, over all agents."""
        ...
