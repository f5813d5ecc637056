"""Query parameters that several routes share, described as exactly as the server checks
them (the server keeps its own check, to answer `invalid_cursor` rather than a generic
validation error)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated

from fastapi import Query
from pydantic import WithJsonSchema

# Unpadded base64url, as `store/rows.encode_cursor` writes it (never 1 past a multiple of
# 4). What it decodes to is the server's business: a made-up cursor of this shape is still
# refused (422 `invalid_cursor`), which no pattern can say.
PAGE_CURSOR_PATTERN = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"
PAGE_CURSOR_DOC = (
    "the `next_cursor` of the previous page, as it was given (opaque); absent: the first page"
)

PageCursor = Annotated[
    str | None,
    Query(
        max_length=512,
        description=PAGE_CURSOR_DOC,
        json_schema_extra={"minLength": 1, "pattern": PAGE_CURSOR_PATTERN},
    ),
]


def comma_list(values: Iterable[str]) -> str:
    """A pattern for a comma-separated list of `values`, spaces around them allowed, empty
    entries skipped (as `routes.tasks._split_enum` reads it)."""
    one = "|".join(values)
    return f"^ *(?:(?:{one}) *)?(?:, *(?:(?:{one}) *)?)*$"


def enum_list(kind: type[StrEnum]) -> object:
    """A list filter's item: one value of `kind`, or several separated by commas."""
    values = [v.value for v in kind]
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": comma_list(values),
            "description": f"one or more of {', '.join(values)}, comma-separated",
        }
    )
