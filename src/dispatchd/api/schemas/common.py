"""What every resource's models share: the request base, the constrained strings, the
error form."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from dispatchd.domain.ids import isoformat

ID_PATTERN = r"^[A-Za-z0-9#@][A-Za-z0-9._:@#/+-]*$"

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\s,]+$")]
Title = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Text = Annotated[str, StringConstraints(max_length=200_000)]
Short = Annotated[str, StringConstraints(max_length=2_000)]
Weight = Annotated[float, Field(gt=0, le=1)]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+05:00 is a time before the first one UTC can write.
        raise ValueError("the time in UTC falls outside years 1 to 9999") from None


# A time with its offset, kept in UTC.
Time = Annotated[AwareDatetime, AfterValidator(_in_utc)]


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


def opt_isoformat(value: datetime | None) -> str | None:
    return isoformat(value) if value else None
