"""The names of the OpenAPI components are part of the API: clients are generated from them."""

from __future__ import annotations

from pathlib import Path

from dispatchd.api.app import create_app
from tests.api.conftest import make_settings


def test_components_are_named_by_their_model_not_their_module(tmp_path: Path) -> None:
    schemas = create_app(settings=make_settings(tmp_path)).openapi()["components"]["schemas"]
    # Two models share the name AttemptOut (a task's attempt, a webhook delivery's attempt),
    # so OpenAPI names them by module path; those names stay as published, wherever the
    # models' files are. Any other model named by its path is a new clash to resolve.
    by_path = sorted(name for name in schemas if "__" in name)
    assert by_path == [
        "dispatchd__api__schemas__AttemptOut",
        "dispatchd__api__webhook_schemas__AttemptOut",
    ]
    assert schemas["dispatchd__api__schemas__AttemptOut"]["required"][0] == "number"
    assert set(schemas["dispatchd__api__webhook_schemas__AttemptOut"]["required"]) >= {
        "attempt",
        "outcome",
    }
    for model in ("TaskOut", "EventOut", "ExplainOut", "AgentOut", "NotificationOut"):
        assert model in schemas
