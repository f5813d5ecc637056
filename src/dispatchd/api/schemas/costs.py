"""What work cost (docs/costs.md): as an agent reports it, and as a task, an attempt and
the stats show it."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field

from dispatchd.api.schemas.common import Request, built, whole_number
from dispatchd.domain.costs import Cost, CostReport

# Numbers as JSON numbers only: a string, a boolean, NaN or an infinity is refused.
Usd = Annotated[float, Field(ge=0, le=1e9, strict=True, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=0, le=10**15, strict=True), BeforeValidator(whole_number)]


class CostIn(Request):
    """The attempt's running total so far; omitted fields keep what was reported before."""

    usd: Usd | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None

    def report(self) -> CostReport:
        return CostReport(self.usd, self.input_tokens, self.output_tokens)


class CostOut(BaseModel):
    usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def of(cls, c: Cost) -> CostOut:
        # In every task's answer: built without validation (a Cost's fields have these types).
        return built(
            cls,
            {"usd": float(c.usd), "input_tokens": c.input_tokens, "output_tokens": c.output_tokens},
        )


def report_of(cost: CostIn | None) -> CostReport | None:
    return cost.report() if cost is not None else None
