"""The OpenAPI document, made to refuse what the server refuses.

FastAPI derives the document from the models, which cannot say everything the server
checks before a route runs (`api/guard.py`): no string may hold a NUL character, anywhere,
free-form JSON (a task's `context`) included. A client generated from the document, or a
fuzzer driven by it, would otherwise send values that the schema allows and the server
answers with 422. This module adds those rules to the document once, when it is first
asked for: a pattern on every string without a format or fixed values, and a recursive
`JsonValue` for free-form objects whose strings follow the same rule.

It also links each creation to what can be done with what it created (OpenAPI links): the
task, agent, webhook, schedule or room answered, by its id, to the operations on
`.../{id}`. Clients and tools (a fuzzer's stateful phase) follow them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

# No NUL character (JSON Schema patterns are ECMA-262 regular expressions).
NO_NUL = "^[^\\u0000]*$"
JSON_VALUE = "JsonValue"
_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
_STRING = {"type": "string", "pattern": NO_NUL}
_OBJECT = {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": _REF}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            app.openapi_schema = honest(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# A collection whose POST creates: the path parameter of its items, and where the new id is
# in the answer.
_CREATED = {
    "/api/v1/tasks": ("task_id", "$response.body#/id"),
    "/api/v1/agents": ("agent_id", "$response.body#/agent/id"),
    "/api/v1/webhooks": ("webhook_id", "$response.body#/webhook/id"),
    "/api/v1/schedules": ("schedule_id", "$response.body#/id"),
    "/api/v1/rooms": ("room_id", "$response.body#/id"),
}


def _link(paths: dict[str, Any]) -> None:
    for base, (param, source) in _CREATED.items():
        created = paths.get(base, {}).get("post")
        if created is None:
            continue
        links = {
            op["operationId"]: {"operationId": op["operationId"], "parameters": {param: source}}
            for path, ops in paths.items()
            if path.startswith(f"{base}/{{{param}}}")
            for op in ops.values()
            if isinstance(op, dict) and "operationId" in op
        }
        for status in ("200", "201"):
            if status in created.get("responses", {}) and links:
                created["responses"][status]["links"] = links


def honest(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the guard's rules written into it (see the module's docstring)."""
    _walk(schema)
    _link(schema.get("paths", {}))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components[JSON_VALUE] = {
        "description": "any JSON value; strings (and keys) hold no NUL character",
        "anyOf": [
            _STRING,
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": _REF},
            _OBJECT,
        ],
    }
    return schema


def _walk(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "string" and not {"pattern", "format", "enum", "const"} & node.keys():
        node["pattern"] = NO_NUL
    if kind == "object" and node.get("additionalProperties") is True:
        node.update(propertyNames={"pattern": NO_NUL}, additionalProperties=_REF)
    if kind == "object" and "propertyNames" not in node and "properties" not in node:
        node.setdefault("propertyNames", {"pattern": NO_NUL})
    for key, value in node.items():
        if key not in ("example", "examples", "default", "const", "enum"):
            _walk(value)
