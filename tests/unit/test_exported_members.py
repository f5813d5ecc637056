"""The public API is what `__all__` says: every name listed is there, and every public name
there is listed."""

from __future__ import annotations

import enum
import types

from pydantic import BaseModel

import dispatchd
import dispatchd.api.schemas
import dispatchd.client
import dispatchd.client.models
from dispatchd.client.errors import ClientError


def public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_dispatchd_exports_its_lazy_names() -> None:
    # The top level loads each name on first use, so its members are checked by name.
    assert set(dispatchd.__all__) == set(dispatchd._LAZY) | {"__version__"}
    for name in dispatchd.__all__:
        value = getattr(dispatchd, name)
        home = dispatchd._LAZY.get(name)
        if home is not None:
            assert value is getattr(__import__(home, fromlist=[name]), name)
    assert set(dir(dispatchd)) >= set(dispatchd.__all__)


def test_the_sdk_exports_its_clients_and_errors() -> None:
    exported = set(dispatchd.client.__all__)
    assert exported == public(dispatchd.client) - {"annotations"}
    assert {"Client", "AsyncClient", "ClientError"} <= exported
    errors = {
        name
        for name, value in vars(dispatchd.client.errors).items()
        if isinstance(value, type) and issubclass(value, ClientError)
    }
    assert errors <= exported


def test_the_sdk_models_export_every_model() -> None:
    exported = set(dispatchd.client.models.__all__)
    models = {
        name
        for name, value in vars(dispatchd.client.models).items()
        if isinstance(value, type)
        and issubclass(value, BaseModel | enum.Enum)
        and value is not BaseModel
    }
    assert exported == models


def test_the_api_schemas_export_every_model() -> None:
    exported = set(dispatchd.api.schemas.__all__)
    assert exported == public(dispatchd.api.schemas) - {"annotations"}
    for module in vars(dispatchd.api.schemas).values():
        if not isinstance(module, types.ModuleType):
            continue
        for name, value in vars(module).items():
            if not (isinstance(value, type) and issubclass(value, BaseModel)):
                continue
            if value.__module__.startswith("dispatchd.api."):
                # The one model left out: the webhook delivery's AttemptOut, whose name
                # the task's AttemptOut takes here.
                if name == "AttemptOut" and module.__name__.endswith(".webhooks"):
                    continue
                assert name in exported, (module.__name__, name)
