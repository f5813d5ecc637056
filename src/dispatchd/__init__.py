"""dispatchd: a task broker and work scheduler for fleets of AI agents.

The agent side is here at the top: `Client` and `AsyncClient` (the SDK), `Worker` and `Job`
(handler functions), `Runner` (any command-line agent) and `Task` (the task as the API
shows it). Each is loaded on first use, so `import dispatchd` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "AsyncClient": "dispatchd.client",
    "Client": "dispatchd.client",
    "Job": "dispatchd.runner.worker",
    "Runner": "dispatchd.runner.runner",
    "Task": "dispatchd.client.models",
    "TaskFailed": "dispatchd.runner.worker",
    "Worker": "dispatchd.runner.worker",
}

__all__ = [
    "AsyncClient",
    "Client",
    "Job",
    "Runner",
    "Task",
    "TaskFailed",
    "Worker",
    "__version__",
]

if TYPE_CHECKING:
    from dispatchd.client import AsyncClient, Client
    from dispatchd.client.models import Task
    from dispatchd.runner.runner import Runner
    from dispatchd.runner.worker import Job, TaskFailed, Worker


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dispatchd' has no attribute {name!r}")
    return getattr(import_module(module), name)
