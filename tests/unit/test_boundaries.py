"""What importing the SDK and the wire models loads. Each import runs in a fresh
interpreter, so the modules the test process already holds cannot hide a new dependency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The server side: none of it may come with the SDK or the wire models.
SERVER = (
    "dispatchd.engine",
    "dispatchd.store",
    "dispatchd.runtime",
    "dispatchd.events",
    "dispatchd.runner",
    "dispatchd.cli",
    "dispatchd.config",
    "psycopg",
    "uvicorn",
    "fastapi",
    "starlette",
    "sse_starlette",
    "nats",
)


def loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    names: list[str] = json.loads(out.stdout)
    return names


def server_modules(names: list[str]) -> list[str]:
    def is_server(name: str) -> bool:
        if any(name == s or name.startswith(s + ".") for s in SERVER):
            return True
        # Of dispatchd.api, only the request and response models (api.schemas).
        return name.startswith("dispatchd.api.") and not (
            name == "dispatchd.api.schemas" or name.startswith("dispatchd.api.schemas.")
        )

    return [n for n in names if is_server(n)]


@pytest.mark.parametrize(
    "statement",
    [
        "import dispatchd.client",
        "from dispatchd import Client, AsyncClient, Task",
        "import dispatchd.api.schemas",
        "import dispatchd.api.schemas.events",
    ],
)
def test_the_sdk_and_the_wire_models_load_nothing_of_the_server(statement: str) -> None:
    names = loaded_after(statement)
    assert "dispatchd.api.schemas.events" in names  # the import did happen
    assert server_modules(names) == []


def test_the_check_sees_a_server_import() -> None:
    # The same check on the API app must find the server, or it finds nothing at all.
    found = server_modules(loaded_after("import dispatchd.api.app"))
    assert "fastapi" in found
    assert "dispatchd.engine.tasks" in found
    assert "dispatchd.api.routes.tasks" in found


def test_the_mcp_server_is_a_client_of_the_api_and_loads_nothing_of_the_broker() -> None:
    # The `mcp` SDK brings its own web stack (starlette, uvicorn); what must not come is
    # any of dispatchd's server side: the tools reach the broker over its HTTP API only.
    names = loaded_after("import dispatchd.mcp.stdio")
    assert "dispatchd.mcp.server" in names
    ours = [n for n in server_modules(names) if n.startswith("dispatchd.")]
    assert ours == [], ours
