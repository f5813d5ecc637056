"""`GET /api/v1/stats` (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dispatchd.api.auth import CallerDep, RuntimeDep
from dispatchd.api.routes.tasks import ERRORS
from dispatchd.domain.access import require_admin
from dispatchd.domain.ids import isoformat
from dispatchd.engine.stats import stats

router = APIRouter(prefix="/api/v1/stats", tags=["operations"], responses=ERRORS)


@router.get("")
async def read_stats(
    caller: CallerDep,
    rt: RuntimeDep,
    days: Annotated[int, Query(ge=1, le=366, description="Days of costs, today included")] = 7,
) -> dict[str, Any]:
    """Queue depth by state and priority, the oldest pending task's age, wait and run time
    percentiles and throughput over the last 1, 5 and 15 minutes, agents by state, and
    what tasks cost per UTC day, requester and agent over the last `days` days."""
    require_admin(caller)
    found = await stats(rt.store, cost_days=days)
    found["at"] = isoformat(found["at"])
    return found
