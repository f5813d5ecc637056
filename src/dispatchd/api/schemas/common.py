"""What every resource's models share: the request base, the constrained strings, the
error form."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from dispatchd.domain.ids import isoformat

ID_PATTERN = r"^[A-Za-z0-9#@][A-Za-z0-9._:@#/+-]*$"
# An agent that registers is addressed by its id in paths (/agents/{id}/heartbeat): no slash.
AGENT_ID_PATTERN = r"^[A-Za-z0-9#@][A-Za-z0-9._:@#+-]*$"
# No whitespace (Python's, `str.isspace`), comma or NUL. Spelled out rather than `\s`, which
# means a different set in ECMA-262 (the document's regular expressions), Python and Rust
# (pydantic).
TAG_PATTERN = (
    r"^[^\x00\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000,]+$"
)

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
# The document says no slash; the route checks it, to answer `invalid_agent_id`.
AgentId = Annotated[
    Id,
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": 128, "pattern": AGENT_ID_PATTERN}
    ),
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=TAG_PATTERN)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Text = Annotated[str, StringConstraints(max_length=200_000)]
Short = Annotated[str, StringConstraints(max_length=2_000)]


# Numbers and booleans are taken as JSON has them, as the document says: pydantic would
# otherwise take "5" or true for a number and 0 or "yes" for a boolean.
def whole_number(value: Any) -> Any:
    """Before a strict integer: JSON Schema counts 5.0 as an integer, and so do clients that
    only have floats, so a whole float is taken as the integer it is; strings and booleans
    stay refused. Put it after the integer's bounds (`Annotated[int, Field(ge=..., le=...,
    strict=True), BeforeValidator(whole_number)]`): bounds given after it, or on the field,
    are checked but left out of the document."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Number = Annotated[float, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Weight = Annotated[float, Field(gt=0, le=1, strict=True)]
# Tags with weights. Written out for the document: pydantic's own schema lets a key that
# breaks the tag pattern through with any value.
Weights = Annotated[
    dict[Tag, Weight],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 100, "pattern": TAG_PATTERN},
            "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        }
    ),
]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+05:00 is a time before the first one UTC can write.
        raise ValueError("the time in UTC falls outside years 1 to 9999") from None


def _text(value: Any) -> Any:
    # A time is a string: pydantic would take a number as seconds since 1970.
    if not isinstance(value, str | datetime):
        raise ValueError("a time is a string such as 2026-01-31T09:00:00Z")
    return value


# A time with its offset, kept in UTC.
Time = Annotated[AwareDatetime, BeforeValidator(_text), AfterValidator(_in_utc)]


def exactly_one(**kinds: str | list[str]) -> dict[str, Any]:
    """JSON Schema for "exactly one of these fields, not null" (`kinds`: each field's JSON
    type when given): a field left out and a field sent as null are the same to the server."""
    branches = []
    for name, kind in kinds.items():
        others = {other: {"type": "null"} for other in kinds if other != name}
        branches.append({"required": [name], "properties": {name: {"type": kind}, **others}})
    return {"anyOf": branches}


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorOut(BaseModel):
    error: ErrorBody


# Why one item of a batch was refused: the error form without its envelope.
class ItemError(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


M = TypeVar("M", bound=BaseModel)


def built(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of `cls` holding `values`, which give every field a value already of
    its type: what `model_construct` makes, without its walk over the fields for
    defaults and aliases (the larger part of building a task's answer)."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def opt_isoformat(value: datetime | None) -> str | None:
    return isoformat(value) if value else None
