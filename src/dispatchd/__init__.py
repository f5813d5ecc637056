"""dispatchd: a task broker and work scheduler for fleets of AI agents."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
