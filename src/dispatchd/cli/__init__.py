"""The `dispatchd` command line."""

from __future__ import annotations

from dispatchd.cli.main import app, main

__all__ = ["app", "main"]
