"""Model routing (SPEC §3): which model a task runs on when the requester named none.

A task gets the `complex` tier when its text carries a signal of hard work or when it is
critical; the `routine` tier for signals of light work at low or medium priority; else the
agent's default. Tier names map to model names in configuration (`routing.tiers`), and an
agent's own `dispatch_model` overrides the mapping for the tasks it receives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dispatchd.domain.models import Agent, Priority, Task

COMPLEX_SIGNALS = (
    "debug",
    "diagnose",
    "architect",
    "security audit",
    "incident",
    "refactor",
    "migration",
)
ROUTINE_SIGNALS = (
    "status check",
    "format",
    "rename",
    "ping",
    "summarize",
    "translate",
    "simple",
    "minor",
)


def _pattern(signals: tuple[str, ...]) -> re.Pattern[str]:
    # Word starts, so "debugging" and "migrations" count but "formation" does not.
    words = "|".join(re.escape(s).replace(r"\ ", r"\s+") for s in signals)
    return re.compile(rf"\b(?:{words})", re.IGNORECASE)


_COMPLEX = _pattern(COMPLEX_SIGNALS)
_ROUTINE = _pattern(ROUTINE_SIGNALS)


@dataclass(frozen=True, slots=True)
class Route:
    model: str | None
    tier: str | None  # "complex", "routine", or None for the agent's default
    reason: str


def tier_of(task: Task) -> tuple[str | None, str]:
    if task.priority is Priority.CRITICAL:
        return "complex", "critical priority"
    text = f"{task.title}\n{task.prompt}"
    found = _COMPLEX.search(text)
    if found:
        return "complex", f"signal '{found.group(0).lower()}'"
    found = _ROUTINE.search(text)
    if found and task.priority in (Priority.LOW, Priority.MEDIUM):
        return "routine", f"signal '{found.group(0).lower()}' at {task.priority.value} priority"
    return None, "no signal"


def route(
    task: Task, agent: Agent | None, tiers: Mapping[str, str], default_model: str | None
) -> Route:
    """The model for `task` on `agent`; a model the requester named is kept as it is."""
    if task.model is not None:
        return Route(task.model, None, "named by the requester")
    if agent is not None and agent.dispatch_model:
        return Route(agent.dispatch_model, None, f"agent {agent.id} overrides with its own")
    tier, reason = tier_of(task)
    if tier is not None and tier in tiers:
        return Route(tiers[tier], tier, reason)
    return Route(default_model, None, reason if tier is None else f"no model for tier {tier}")
