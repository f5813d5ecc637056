"""Domain records as rows and back, for either dialect.

A record's columns are its fields, converted by their declared types: times, JSON (tuples,
mappings, free JSON), booleans and enums. A `Codec` says how a dialect stores the first
three; everything else is shared.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import json
import operator
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress
from operator import is_not
from typing import Any, Literal, TypeVar

from dispatchd.domain.ids import isoformat, parse_iso
from dispatchd.domain.models import Agent, Task
from dispatchd.domain.notifications import Digest
from dispatchd.domain.rooms import Room
from dispatchd.domain.schedules import Fire, Schedule
from dispatchd.domain.webhooks import Delivery, Webhook
from dispatchd.errors import ValidationFailed

R = TypeVar("R")
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Codec:
    dump_time: Callable[[datetime], Any]
    load_time: Callable[[Any], datetime]
    dump_json: Callable[[Any], Any]
    load_json: Callable[[Any], Any]
    dump_bool: Callable[[bool], Any]


def _json_text(value: Any) -> str:
    return _ENCODER.encode(value)


# What json.dumps(value, separators=(",", ":"), ensure_ascii=False) writes, without making
# an encoder per call as json.dumps does for any options but its defaults (a third of the
# cost of an event's small data).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _load_json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


SQLITE = Codec(
    dump_time=isoformat,
    load_time=parse_iso,
    dump_json=_json_text,
    load_json=_load_json_text,
    dump_bool=int,
)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _jsonb(value: Any) -> Any:
    global _JSONB
    wrap = _JSONB
    if wrap is None:
        # Imported on first use, so that the embedded (SQLite) setup never loads psycopg
        # (an import statement per call cost five times the wrapping).
        from psycopg.types.json import Jsonb

        wrap = _JSONB = Jsonb
    return wrap(value)


_JSONB: Any = None


# psycopg hands back timestamptz as aware datetimes in the session's time zone and jsonb
# already decoded (a JSON string comes back as a `str`, so it must not be decoded again).
POSTGRES = Codec(
    dump_time=_utc, load_time=_utc, dump_json=_jsonb, load_json=lambda v: v, dump_bool=bool
)

# The columns of the tables written whole from a record: its fields, and a task's
# priority_rank (the priority's order, for the queue index). An agent's `active` and
# `last_assigned_at` are kept by the store as tasks are assigned and released, never
# written from the record.
TASK_COLUMNS = (*(f.name for f in dataclasses.fields(Task)), "priority_rank")
AGENT_COLUMNS = tuple(
    f.name for f in dataclasses.fields(Agent) if f.name not in ("active", "last_assigned_at")
)
WEBHOOK_COLUMNS = tuple(f.name for f in dataclasses.fields(Webhook))
DELIVERY_COLUMNS = tuple(f.name for f in dataclasses.fields(Delivery))
ROOM_COLUMNS = tuple(f.name for f in dataclasses.fields(Room))
SCHEDULE_COLUMNS = tuple(f.name for f in dataclasses.fields(Schedule))
FIRE_COLUMNS = tuple(f.name for f in dataclasses.fields(Fire))

# --- records <-> rows ------------------------------------------------------------------------

Convert = Callable[[Any], Any]
_FIELDS: dict[Any, tuple[tuple[str, str, Any], ...]] = {}
_PLANS: dict[tuple[Any, Codec, Literal["dump", "new", "load"]], Convert] = {}


def _kind(hint: Any) -> tuple[str, Any]:
    """How a field of this declared type is stored: time, json (`extra`: what the value is
    turned into first, list or dict), bool, enum, records (a tuple of records, JSON with
    times as RFC 3339 text), record (one, as a JSON object) or as it is (plain)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return _kind(members[0]) if len(members) == 1 else ("json", None)
    if origin is tuple and dataclasses.is_dataclass(args[0]):
        return "records", args[0]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "record", hint
    if origin in (tuple, list):
        return "json", list
    if origin in (dict, Mapping):
        return "json", dict
    if hint is Any:
        return "json", None
    if hint is datetime:
        return "time", None
    if hint is bool:
        return "bool", None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "enum", hint
    return "plain", None


def _fields(cls: Any) -> tuple[tuple[str, str, Any], ...]:
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple((f.name, *_kind(hints[f.name])) for f in dataclasses.fields(cls))
    return _FIELDS[cls]


def _dumper(kind: str, extra: Any, codec: Codec) -> Convert:
    dump_json = codec.dump_json
    match kind:
        case "time":
            return codec.dump_time
        case "bool":
            return codec.dump_bool
        case "enum":
            return lambda v: v.value
        case "json" if extra is list:
            # Most lists (capabilities, labels, dependencies) are empty or repeat (a batch
            # of tasks needing the same capabilities): each is dumped once.
            return _remembered(lambda v: dump_json(list(v)))
        case "json" if extra is dict:
            empty = dump_json({})
            return lambda v: dump_json(dict(v)) if v else empty
        case "json":
            return dump_json
        case "record":
            # Records are frozen values and few (a task's cost is most often zero).
            return functools.lru_cache(maxsize=256)(lambda v: dump_json(_plain_record(v)))
        case _:  # records
            return lambda v: dump_json([_plain_record(r) for r in v])


def _remembered(dump: Convert) -> Convert:
    """`dump`, remembering the last few tuples of text; anything else (where equal values
    may dump apart: 1 and True) is dumped each time."""
    cached = functools.lru_cache(maxsize=1024)(dump)

    def convert(value: Any) -> Any:
        if type(value) is tuple and all(type(item) is str for item in value):
            return cached(value)
        return dump(value)

    return convert


def _loader(kind: str, extra: Any, codec: Codec) -> Convert:
    load_json = codec.load_json
    match kind:
        case "time":
            return codec.load_time
        case "bool":
            return bool
        case "enum":
            return extra  # type: ignore[no-any-return]
        case "json" if extra is list:
            # Tuples in the records, lists in JSON.
            return lambda v: tuple(load_json(v)) if v != "[]" else ()
        case "json":
            return load_json
        case "record":
            return _record_loader(extra, load_json)
        case _:  # records
            return lambda v: tuple(_record_from(extra, item) for item in load_json(v) or ())


def _record_loader(cls: Any, load_json: Callable[[Any], Any]) -> Convert:
    @functools.lru_cache(maxsize=256)
    def from_text(text: str) -> Any:
        return _record_from(cls, load_json(text) or {})

    # Text (SQLite) is remembered, the record being a frozen value; a decoded object
    # (PostgreSQL's jsonb) is converted each time.
    return lambda v: from_text(v) if isinstance(v, str) else _record_from(cls, load_json(v) or {})


def _plain_record(record: Any) -> dict[str, Any]:
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return {k: isoformat(v) if isinstance(v, datetime) else v for k, v in values.items()}


def _record_from(cls: type[R], item: Mapping[str, Any]) -> R:
    values = {name: item[name] for name, _, _ in _fields(cls) if name in item}
    for name, kind, _ in _fields(cls):
        if kind == "time" and values.get(name) is not None:
            values[name] = parse_iso(values[name])
    return cls(**values)


def _plan(cls: Any, codec: Codec, how: Literal["dump", "new", "load"]) -> Convert:
    """The function that turns a record of `cls` into its row (`how` "dump"), into the
    columns of its row that hold a value ("new": what an insert names, the others being
    NULL by default), or a row into the record ("load"); made once per record type, dialect
    and direction.

    It is generated as code naming every field, with each field's conversion (None stays
    NULL): a loop over fields costs about as much again per row, and every task read and
    written passes here.
    """
    key = (cls, codec, how)
    plan = _PLANS.get(key)
    if plan is None:
        make = _loader if how == "load" else _dumper
        env: dict[str, Any] = {"cls": cls}
        parts = []
        for i, (name, kind, extra) in enumerate(_fields(cls)):
            value = f"row[{name!r}]" if how == "load" else f"record.{name}"
            converted = "v"
            if kind != "plain":
                env[f"c{i}"] = make(kind, extra, codec)
                converted = f"c{i}(v)"
            if how == "new":
                parts.append(
                    f"    if (v := {value}) is not None:\n        row[{name!r}] = {converted}\n"
                )
                continue
            if kind != "plain":
                value = f"(None if (v := {value}) is None else {converted})"
            parts.append(f"{name!r}: {value}" if how == "dump" else value)
        if how == "load":
            # Positional, in declaration order (every record field is an init field).
            source = f"def convert(row):\n    return cls({', '.join(parts)})\n"
        elif how == "new":
            source = f"def convert(record):\n    row = {{}}\n{''.join(parts)}    return row\n"
        else:
            source = f"def convert(record):\n    return {{{', '.join(parts)}}}\n"
        exec(source, env)  # noqa: S102 - made from the record's own field names
        plan = _PLANS[key] = env["convert"]
    return plan


def to_row(record: Any, codec: Codec) -> dict[str, Any]:
    """A record's fields as statement parameters (None stays NULL)."""
    return _ranked(record, _plan(type(record), codec, "dump")(record))


def to_new_row(record: Any, codec: Codec) -> dict[str, Any]:
    """The fields of a record that hold a value, as an insert's parameters: the columns
    left out are NULL by default (a task's insert names 25 of its 56 columns, most often,
    and SQLite binds each parameter at a cost)."""
    return _ranked(record, _plan(type(record), codec, "new")(record))


def _ranked(record: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A task's row with the rank of its priority, which the queue's order reads."""
    if isinstance(record, Task):
        params["priority_rank"] = record.priority.rank
    return params


def changed_columns(task: Task, before: Task, codec: Codec) -> dict[str, Any]:
    """The columns of `task` whose values differ from `before`'s, as statement parameters,
    with `id` (to find the row) and `version` (always changed: the check's base)."""
    dumps = _TASK_DUMPS.get(codec)
    if dumps is None:
        dumps = _TASK_DUMPS[codec] = [
            (name, None if kind == "plain" else _dumper(kind, extra, codec))
            for name, kind, extra in _fields(Task)
        ]
    params: dict[str, Any] = {"id": task.id, "version": task.version}
    new, old = _task_values(task), _task_values(before)
    # The fields that are not the same object, found without a Python loop over all of
    # them (most of a task's 55 fields are passed on untouched by a transition).
    for i in compress(_TASK_INDEXES, map(is_not, new, old)):
        value = new[i]
        if value != old[i]:
            name, dump = dumps[i]
            params[name] = value if dump is None or value is None else dump(value)
    if "priority" in params:
        params["priority_rank"] = task.priority.rank
    return params


_TASK_DUMPS: dict[Codec, list[tuple[str, Convert | None]]] = {}
_task_values = operator.attrgetter(*(f.name for f in dataclasses.fields(Task)))
_TASK_INDEXES = range(len(dataclasses.fields(Task)))


def from_row(cls: type[R], row: Row, codec: Codec) -> R:
    record: R = _plan(cls, codec, "load")(row)
    return record


def digest_params(digest: Digest, at: datetime, codec: Codec) -> dict[str, Any]:
    return {
        "name": OPEN_DIGEST,
        "opened_at": codec.dump_time(digest.opened_at),
        "closes_at": codec.dump_time(digest.closes_at),
        "event_id": digest.event_id,
        "data": codec.dump_json(digest.data()),
        "updated_at": codec.dump_time(at),
    }


def digest_from_row(row: Row, codec: Codec) -> Digest:
    return Digest.from_data(
        codec.load_time(row["opened_at"]),
        codec.load_time(row["closes_at"]),
        int(row["event_id"]),
        codec.load_json(row["data"]),
    )


# The name of the open notification digest's row.
OPEN_DIGEST = "open"

# --- page cursors ----------------------------------------------------------------------------


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        key = ""
    if not key or "\x00" in key:
        raise ValidationFailed(
            "cursor is not one this server handed out", code="invalid_cursor", cursor=cursor
        )
    return key


def delivery_cursor(cursor: str) -> int:
    key = decode_cursor(cursor)
    if not key.isascii() or not key.isdigit() or len(key) > 19:
        raise ValidationFailed(
            "cursor is not one this server handed out", code="invalid_cursor", cursor=cursor
        )
    return int(key)


def counter_deltas(old: str | None, new: str | None) -> Sequence[tuple[str, int]]:
    if old == new:
        return ()
    deltas: list[tuple[str, int]] = []
    if old is not None:
        deltas.append((old, -1))
    if new is not None:
        deltas.append((new, 1))
    return deltas
