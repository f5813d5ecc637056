"""schemathesis hooks for tests/e2e/test_fuzz.py: long polls wait a moment, not a minute.

`wait_s` (claims, events, notifications) may hold a request for up to 60 s by design; the
fuzzer would spend its whole budget waiting. The value is still sent, only shortened.
"""

from __future__ import annotations

from typing import Any

import schemathesis

QUICK_S = 0.2


def _shortened(part: Any) -> Any:
    if isinstance(part, dict) and "wait_s" in part:
        try:
            if float(part["wait_s"]) > QUICK_S:
                part["wait_s"] = QUICK_S
        except (TypeError, ValueError):
            pass  # not a number: the server's 422 is what is being tested
    return part


@schemathesis.hook
def map_query(ctx: Any, query: Any) -> Any:
    return _shortened(query)


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    return _shortened(body)
