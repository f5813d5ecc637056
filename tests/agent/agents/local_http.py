"""What the agent scripts share: one call to the local agent API, standard library only.

An agent subprocess knows nothing but `DISPATCH_URL` and `DISPATCH_TASK_ID`; it holds no
broker address and no credential.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

URL = os.environ["DISPATCH_URL"]
TASK_ID = os.environ["DISPATCH_TASK_ID"]

# The local API is on loopback: never go through a proxy to reach it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON answer) of `method` on `DISPATCH_URL + path`; errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def ok(method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """The answer of a call that must succeed; exits non-zero with the answer otherwise."""
    status, answer = call(method, path, body, timeout)
    if status >= 300:
        raise SystemExit(f"{method} {path} answered {status}: {json.dumps(answer)}")
    return answer


def report(**observed: Any) -> None:
    """Print what the agent saw, as one JSON line, for the test to read."""
    print(json.dumps(observed), flush=True)
