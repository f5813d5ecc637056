"""Daily budgets per requester (docs/costs.md): a requester whose tasks have cost its
budget today (UTC) may not create more until the next UTC midnight."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from dispatchd.domain.costs import BUDGET_EXCEEDED, day_of, next_reset
from dispatchd.domain.ids import isoformat
from dispatchd.errors import BudgetExceeded
from dispatchd.store.base import Store


@dataclass(frozen=True, slots=True)
class DailyBudgets:
    """`default_usd` for every requester (None: no limit), `per_requester` overrides."""

    default_usd: float | None = None
    per_requester: Mapping[str, float] = field(default_factory=dict)

    def limit_for(self, requester: str) -> float | None:
        return self.per_requester.get(requester, self.default_usd)

    async def check(self, store: Store, requester: str, now: datetime) -> None:
        """Raise `BudgetExceeded` when `requester` has spent its budget for today."""
        limit = self.limit_for(requester)
        if limit is None:
            return
        spent = await store.spent_usd(requester, day_of(now))
        if spent < limit:
            return
        reset = next_reset(now)
        raise BudgetExceeded(
            f"{requester} has spent {spent:g} USD today, its daily budget is {limit:g} USD",
            code=BUDGET_EXCEEDED,
            requester=requester,
            spent_usd=spent,
            budget_usd=limit,
            reset_at=isoformat(reset),
            retry_after_s=max(int((reset - now).total_seconds()) + 1, 1),
        )
