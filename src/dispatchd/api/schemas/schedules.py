"""The schedule resource (docs/schedules.md): a cron expression in a time zone and the
task template it fires, Mission Control's shape plus the misfire and overlap policies."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from dispatchd.api.schemas.common import Flag, Request, opt_isoformat, whole_number
from dispatchd.domain.ids import isoformat
from dispatchd.domain.schedules import CRON_PATTERN, Misfire, Overlap, Schedule, time_zones

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# The document carries the server's rules for both (`domain.schedules`); the server checks
# them itself, to answer `invalid_schedule` and `invalid_timezone`.
Cron = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": CRON_PATTERN},
        mode="validation",
    ),
]


def _literal(name: str) -> str:
    # Names hold letters, digits and -_/+ (re.escape's `\-` is not valid ECMA-262 in
    # unicode mode).
    return re.sub(r"([.+*?()\[\]{}|^$\\])", r"\\\1", name)


# The names as one alternation rather than an `enum`: the same set, but a tool that tries
# every value of an enum (schemathesis' coverage phase) would send each of the ~600.
Zone = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^(?:" + "|".join(map(_literal, sorted(time_zones()))) + ")$",
        },
        mode="validation",
    ),
]
CatchUp = Annotated[int, Field(ge=0, le=31 * 24 * 3600, strict=True), BeforeValidator(whole_number)]
TEMPLATE_DOC = (
    "any task creation body (POST /api/v1/tasks) but its idempotency key, checked at once"
)
# Described as what it must be, so that a client (or a fuzzer) built from the document sends
# a template the server takes: a task creation body, without an idempotency key (each firing
# makes a new task).
Template = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "allOf": [
                {"$ref": "#/components/schemas/TaskCreate"},
                {"not": {"required": ["idempotency_key"]}},
            ],
            "description": TEMPLATE_DOC,
        },
        mode="validation",
    ),
    Field(description=TEMPLATE_DOC),
]
CRON_DOC = "five cron fields (`0 9 * * 1-5`) or a macro (`@hourly`, `@daily`, ...)"


class ScheduleCreate(Request):
    name: Name
    schedule: Cron = Field(description=CRON_DOC)
    task_template: Template
    timezone: Zone = Field("UTC", description="IANA time zone the expression is read in")
    misfire: Misfire = Field(
        Misfire.SKIP,
        description="fire times missed while down: skip (none), latest (one), all "
        "(each within catch_up_s)",
    )
    overlap: Overlap = Field(
        Overlap.ALLOW,
        description="while the task fired last is unfinished: allow, skip, cancel_previous",
    )
    catch_up_s: CatchUp = 3600
    paused: Flag = False


class SchedulePatch(Request):
    # Every field may be left out, none may be null: the document says so (SkipJsonSchema
    # hides the None that only stands for "absent").
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Name | SkipJsonSchema[None] = None
    schedule: Cron | SkipJsonSchema[None] = Field(None, description=CRON_DOC)
    task_template: Template | SkipJsonSchema[None] = None
    timezone: Zone | SkipJsonSchema[None] = None
    misfire: Misfire | SkipJsonSchema[None] = None
    overlap: Overlap | SkipJsonSchema[None] = None
    catch_up_s: CatchUp | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _no_nulls(self) -> SchedulePatch:
        nulls = sorted(k for k in self.model_fields_set if getattr(self, k) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep it")
        return self


class ScheduleOut(BaseModel):
    id: str
    name: str
    schedule: str
    timezone: str
    task_template: dict[str, Any]
    paused: bool
    next_fire_at: str | None
    last_fire_at: str | None
    last_task_id: str | None
    misfire: Misfire
    overlap: Overlap
    catch_up_s: int
    created_by: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, s: Schedule) -> ScheduleOut:
        return cls(
            id=s.id,
            name=s.name,
            schedule=s.schedule,
            timezone=s.timezone,
            task_template=dict(s.task_template),
            paused=s.paused,
            next_fire_at=opt_isoformat(s.next_fire_at),
            last_fire_at=opt_isoformat(s.last_fire_at),
            last_task_id=s.last_task_id,
            misfire=s.misfire,
            overlap=s.overlap,
            catch_up_s=s.catch_up_s,
            created_by=s.created_by,
            created_at=isoformat(s.created_at),
            updated_at=isoformat(s.updated_at),
        )


class ScheduleDetailOut(ScheduleOut):
    preview: list[str] = Field(
        default_factory=list, description="the next fire times asked for with ?preview=N"
    )


class ScheduleList(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None


class ScheduleRemoved(BaseModel):
    id: str
    deleted: bool = True
