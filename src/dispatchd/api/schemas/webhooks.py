"""The webhook resource: subscriptions and their deliveries. A webhook's secret is shown
once, in the answer to its creation, and never again."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, WithJsonSchema, model_validator
from pydantic.json_schema import SkipJsonSchema

from dispatchd.api.schemas.common import Flag, Request, opt_isoformat
from dispatchd.domain.event_types import TYPE_NAME
from dispatchd.domain.ids import isoformat
from dispatchd.domain.webhooks import (
    MAX_URL,
    URL_PATTERN,
    AttemptRecord,
    CircuitState,
    Delivery,
    DeliveryStatus,
    Webhook,
)

# The document carries the URL rule (`domain.webhooks.check_url`), which answers
# `invalid_url` for what it refuses.
Url = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_URL),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_URL, "pattern": URL_PATTERN}
    ),
]
# One name or glob per item (`events.subscriptions.check_types` answers `invalid_types`).
TypePattern = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": 100, "pattern": f"^ *{TYPE_NAME} *$"}
    ),
]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$")]
Description = Annotated[str, StringConstraints(max_length=2000)]
Types = Annotated[
    list[TypePattern],
    Field(
        max_length=50,
        description="event types, globs (task.*) or families (agent); empty: every event",
    ),
]


class WebhookCreate(Request):
    url: Url = Field(description="http:// or https:// URL that receives the POSTs")
    types: Types = Field(default_factory=list)
    secret: Secret | None = Field(
        None, description="signing secret (printable ASCII, 16+); generated when absent"
    )
    description: Description = ""
    active: Flag = True


class WebhookPatch(Request):
    # Every field may be left out, none may be null: the document says so (SkipJsonSchema
    # hides the None that only stands for "absent").
    url: Url | SkipJsonSchema[None] = None
    types: Types | SkipJsonSchema[None] = None
    secret: Secret | SkipJsonSchema[None] = Field(
        None, description="a new signing secret, used at once"
    )
    description: Description | SkipJsonSchema[None] = None
    active: Flag | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _no_nulls(self) -> WebhookPatch:
        nulls = sorted(k for k in self.model_fields_set if getattr(self, k) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep it")
        return self


class CircuitOut(BaseModel):
    state: CircuitState
    consecutive_failures: int
    open_until: str | None


class WebhookOut(BaseModel):
    id: str
    url: str
    types: list[str]
    description: str
    active: bool
    cursor: str = Field(description="the last event id handled for this webhook")
    circuit: CircuitOut
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, w: Webhook, now: datetime) -> WebhookOut:
        return cls(
            id=w.id,
            url=w.url,
            types=list(w.types),
            description=w.description,
            active=w.active,
            cursor=str(w.last_event_id),
            circuit=CircuitOut(
                state=w.circuit(now),
                consecutive_failures=w.consecutive_failures,
                open_until=opt_isoformat(w.open_until),
            ),
            created_at=isoformat(w.created_at),
            updated_at=isoformat(w.updated_at),
        )


class WebhookCreated(BaseModel):
    webhook: WebhookOut
    secret: str = Field(description="the signing secret; not shown again")


class WebhookList(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


class WebhookRemoved(BaseModel):
    id: str
    deleted: bool = True


class AttemptOut(BaseModel):
    attempt: int
    at: str
    outcome: Literal["delivered", "failed", "interrupted"]
    response_status: int | None
    error: str | None
    duration_ms: int | None
    next_attempt_at: str | None

    @classmethod
    def of(cls, r: AttemptRecord) -> AttemptOut:
        return cls(
            attempt=r.attempt,
            at=isoformat(r.at),
            outcome=r.outcome,
            response_status=r.response_status,
            error=r.error,
            duration_ms=r.duration_ms,
            next_attempt_at=opt_isoformat(r.next_attempt_at),
        )


# OpenAPI tells this model from the task's AttemptOut by module path. The component keeps
# the name it had before the schemas became a package, for clients generated from it;
# the models that embed AttemptOut come below, so they take the renamed schema.
AttemptOut.__module__ = "dispatchd.api.webhook_schemas"
AttemptOut.model_rebuild(force=True)


class DeliveryOut(BaseModel):
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempt: int = Field(description="attempts made so far")
    response_status: int | None = Field(description="the last attempt's HTTP status")
    error: str | None = Field(description="why the last attempt failed")
    next_attempt_at: str | None = Field(description="when a pending delivery is tried next")
    created_at: str
    updated_at: str
    delivered_at: str | None
    attempts: list[AttemptOut] = Field(description="each attempt, oldest first")

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls(
            id=d.id,
            webhook_id=d.webhook_id,
            event_id=str(d.event_id),
            event_type=d.event_type,
            status=d.status,
            attempt=d.attempt,
            response_status=d.response_status,
            error=d.error,
            next_attempt_at=opt_isoformat(d.next_attempt_at)
            if d.status == DeliveryStatus.PENDING
            else None,
            created_at=isoformat(d.created_at),
            updated_at=isoformat(d.updated_at),
            delivered_at=opt_isoformat(d.delivered_at),
            attempts=[AttemptOut.of(r) for r in d.history],
        )


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None
