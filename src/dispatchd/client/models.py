"""The SDK's typed results. Most are the server's own response models
(`dispatchd.api.schemas`, which imports nothing of the server), so the SDK and the server
share one definition of every shape; the rest exist only on the client side.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

from dispatchd.api.schemas.agents import AgentOut as Agent
from dispatchd.api.schemas.agents import AgentRemoved
from dispatchd.api.schemas.claims import ClaimOut as Claim
from dispatchd.api.schemas.claims import CompleteItemOut, QueueOut
from dispatchd.api.schemas.events import EventOut as Event
from dispatchd.api.schemas.explain import ExplainOut
from dispatchd.api.schemas.notifications import NotificationList as NotificationPage
from dispatchd.api.schemas.notifications import NotificationOut as Notification
from dispatchd.api.schemas.notifications import OpenDigestOut as OpenDigest
from dispatchd.api.schemas.rooms import CurrentTaskOut as RoomTask
from dispatchd.api.schemas.rooms import HistoryTaskOut as RoomHistoryTask
from dispatchd.api.schemas.rooms import InterruptOut as RoomInterrupted
from dispatchd.api.schemas.rooms import RoomHistoryOut as RoomHistory
from dispatchd.api.schemas.rooms import RoomOut as Room
from dispatchd.api.schemas.rooms import RoomRemoved
from dispatchd.api.schemas.schedules import ScheduleDetailOut as ScheduleDetail
from dispatchd.api.schemas.schedules import ScheduleOut as Schedule
from dispatchd.api.schemas.schedules import ScheduleRemoved
from dispatchd.api.schemas.tasks import CommentOut as Comment
from dispatchd.api.schemas.tasks import TaskDetailOut as TaskDetail
from dispatchd.api.schemas.tasks import TaskOut as Task
from dispatchd.api.schemas.webhooks import DeliveryOut as Delivery
from dispatchd.api.schemas.webhooks import WebhookCreated, WebhookRemoved
from dispatchd.api.schemas.webhooks import WebhookOut as Webhook
from dispatchd.domain.models import AgentStatus, Priority, TaskStatus
from dispatchd.domain.rooms import RoomAgentStatus

__all__ = [
    "Agent",
    "AgentRemoved",
    "AgentStatus",
    "Claim",
    "Comment",
    "CompleteItemOut",
    "Delivery",
    "Event",
    "EventPage",
    "ExplainOut",
    "Notification",
    "NotificationPage",
    "OpenDigest",
    "Page",
    "Priority",
    "QueueOut",
    "Registration",
    "Room",
    "RoomAgentStatus",
    "RoomHistory",
    "RoomHistoryTask",
    "RoomInterrupted",
    "RoomRemoved",
    "RoomTask",
    "Schedule",
    "ScheduleDetail",
    "ScheduleRemoved",
    "Task",
    "TaskDetail",
    "TaskStatus",
    "Webhook",
    "WebhookCreated",
    "WebhookRemoved",
]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a listing; `next_cursor` continues it (None: this was the last)."""

    items: list[T]
    next_cursor: str | None = None


class EventPage(BaseModel):
    """Events in order and the cursor to read on from (pass it as `after`)."""

    events: list[Event]
    next_cursor: str


class Registration(BaseModel):
    """The answer to `register_agent`: `token` is given once, when the agent is new
    (`created`); registering again updates the agent and gives no token."""

    agent: Agent
    token: str | None = None
    created: bool
