"""What the ``/v1`` API answers, as msgspec Structs: the answer types that
``/openapi.json`` documents (:mod:`._openapi`).

The tests decode real answers into these (unknown fields refused), so the
document cannot drift from what the API sends.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ...delivery.engine import EndpointTest
from ...events import WebhookEventType

__all__ = ["ANSWERS"]


class _Answer(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class QueuedEvent(_Answer):
    """A webhook delivery the call queued."""

    event_type: str
    webhook_id: str


class Reply(_Answer):
    message_id: str
    text: str


class MessageAnswer(_Answer):
    """The message is stored and its events durably queued."""

    conversation_id: str
    message_id: str
    reply: Reply | None
    events: list[QueuedEvent]


class ConversationAnswer(_Answer):
    conversation_id: str
    ai_enabled: bool


class InboxMessageAnswer(_Answer):
    """What the channel did with the operator's message."""

    message_id: str
    status: Literal["sent", "blocked", "noted"]
    events: list[QueuedEvent]


class InboxMessage(_Answer, omit_defaults=True):
    id: str
    author: Literal["user", "agent", "operator"]
    text: str
    created_at: str
    status: Literal["received", "sent", "blocked", "noted"]
    attachments: list[dict[str, Any]] | UnsetType = UNSET


class InboxConversation(_Answer, omit_defaults=True):
    """The conversation as the Inbox shows it, enriched with the user-info answer:
    its newest messages (a page, oldest first); ``nextBefore`` is the cursor of
    the older ones, when there are."""

    conversation_id: str
    agent_id: str
    channel: str
    ai_enabled: bool
    contact: dict[str, str]
    messages: list[InboxMessage]
    user_info: dict[str, Any] | None
    user_info_status: Literal["ok", "not_configured", "timeout", "error"]
    user_info_error: str | UnsetType = UNSET
    next_before: int | UnsetType = UNSET


class WebhookSettingsAnswer(_Answer, omit_defaults=True):
    """An agent's settings: header values masked, the signing secret never shown
    but once: in the answer to the PUT that generated the agent's first one."""

    agent_id: str
    url: str | None
    header: str | None
    events: list[WebhookEventType] | None
    user_info_url: str | None
    user_info_header: str | None
    disabled: bool
    disabled_reason: str | None
    #: ``none`` or ``conversation`` (one conversation's events one at a time, in order)
    ordering: Literal["none", "conversation"]
    #: seconds a conversation's head event may keep failing before it is given up
    ordering_max_wait: float
    operations_url: str | None
    #: with ``?test=true`` only: what one signed test request found (null without a URL)
    test: EndpointTest | UnsetType | None = UNSET
    #: the agent's first signing secret, in the answer to the PUT that made it only
    signing_secret: str | UnsetType = UNSET


class RotatedSecret(_Answer):
    """The new secret, shown this once."""

    signing_secret: str
    previous_secret_expires_at: str | None


class Delivery(_Answer):
    id: int
    webhook_id: str
    event_type: str
    conversation_id: str | None
    #: the payload's ``sequence``: its place among its conversation's events
    sequence: int | None
    status: Literal["pending", "held", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    next_attempt_at: str | None


class Attempt(_Answer):
    attempt: int
    at: str
    duration_ms: float
    #: ``scheduled`` (the first, or a retry), ``manual`` (the first of a
    #: redelivery) or ``recovery`` (the first after a recover or a re-enable)
    trigger: Literal["scheduled", "manual", "recovery"]
    url: str | None
    #: ``[name, value]`` pairs: the signature elided, the owner's header masked
    request_headers: list[list[str]]
    status_code: int | None
    response_headers: dict[str, str] | None
    error: str | None
    #: the first bytes of the receiver's answer
    response: str | None


class DeliveryDetail(Delivery):
    #: null once expired (purged after the retention)
    payload: dict[str, Any] | None
    payload_expired: bool
    attempt_log: list[Attempt]


class Health(_Answer, omit_defaults=True):
    status: Literal["ok", "failing"]
    reason: str | UnsetType = UNSET


class Recovered(_Answer):
    """How many deliveries a recover queued again."""

    queued: int


class ErrorDetail(_Answer):
    code: str
    message: str


class Error(_Answer):
    error: ErrorDetail


#: what each documented answer decodes into, by name (the tests use it)
ANSWERS: dict[str, type[Any]] = {
    t.__name__: t
    for t in (
        MessageAnswer,
        ConversationAnswer,
        InboxMessageAnswer,
        InboxConversation,
        WebhookSettingsAnswer,
        RotatedSecret,
        Delivery,
        DeliveryDetail,
        Recovered,
        Health,
        Error,
    )
}
