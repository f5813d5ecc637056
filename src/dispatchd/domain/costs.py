"""What work costs: dollars and tokens reported by agents, and the budgets they are held to.

An agent reports the running total of its attempt (progress, completion, failure); the
attempt's cost is the highest total reported per field, so a report sent twice, late or out
of order never counts twice and never lowers what was spent. What a report adds (its
excess over what the attempt had) is added to the task's cost and to the day's ledger of
its requester and agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

# The error code of a task stopped by its budget, and of a create refused by a daily one.
BUDGET_EXCEEDED = "budget_exceeded"
# Dollars are kept to the nano-dollar: sums of floats stay tidy.
USD_DIGITS = 9


def _usd(value: float) -> float:
    return round(value, USD_DIGITS) + 0.0  # `+ 0.0` turns -0.0 into 0.0


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            _usd(self.usd + other.usd),
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )

    def __sub__(self, other: Cost) -> Cost:
        return Cost(
            _usd(self.usd - other.usd),
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
        )

    def __bool__(self) -> bool:
        return bool(self.usd or self.input_tokens or self.output_tokens)

    def data(self) -> dict[str, Any]:
        return {
            "usd": self.usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True, slots=True)
class CostReport:
    """An attempt's running total as an agent reports it; a field left None was not
    reported and keeps its value."""

    usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def raised(current: Cost, report: CostReport | None) -> Cost:
    """The attempt's cost after `report`: per field, the higher of the two."""
    if report is None:
        return current
    return Cost(
        max(current.usd, _usd(report.usd)) if report.usd is not None else current.usd,
        max(current.input_tokens, report.input_tokens or 0),
        max(current.output_tokens, report.output_tokens or 0),
    )


@dataclass(frozen=True, slots=True)
class Charge:
    """What one report added, for the ledger of (requester, agent, UTC day)."""

    requester: str
    agent: str
    day: date
    cost: Cost


def day_of(at: datetime) -> date:
    return at.astimezone(UTC).date()


def next_reset(now: datetime) -> datetime:
    """When a daily budget starts again: the next UTC midnight."""
    return datetime.combine(day_of(now) + timedelta(days=1), time(0), tzinfo=UTC)


def over_budget(cost: Cost, limit: float | None) -> bool:
    """Whether `cost` has crossed a task's `max_cost_usd` (spending exactly it is allowed)."""
    return limit is not None and cost.usd > limit
