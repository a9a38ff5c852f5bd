"""The outbound webhook payload: one msgspec Struct per event type.

The wire format is flat camelCase JSON (``CONTRACT.md`` section 2). Every
payload is tagged with ``eventType``; fields that are unknown are ``UNSET``
and therefore left out, never ``null``. ``groupId``/``groupName`` exist only
on :class:`GroupMessageReceived`.

Pure: no I/O. The encoder is built once, at import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, UnsetType

from .events import OperationalEventType, WebhookEventType
from .models import Agent, Contact, Conversation, Group, Message

__all__ = [
    "AgentMessageBlocked",
    "AgentMessageNoted",
    "AgentMessageSended",
    "AgentUserMessage",
    "AttachmentPayload",
    "GroupMessageReceived",
    "OperationalEvent",
    "PAYLOAD_TYPES",
    "Payload",
    "TEST_EVENT_TYPE",
    "UserMessageReceived",
    "WebhookTest",
    "build_payload",
    "contact_from_wire",
    "contact_to_wire",
    "encode",
    "example_payload",
    "json_schemas",
    "new_webhook_id",
]


# gc=False: payloads hold only strings, numbers, datetimes and lists of
# attachments, never a reference cycle, so the cycle collector can skip them
# (it halves the cost of building one).


class AttachmentPayload(
    msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel", frozen=True, gc=False
):
    url: str
    mime_type: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    size: int | UnsetType = UNSET


class Payload(
    msgspec.Struct,
    kw_only=True,
    omit_defaults=True,
    rename="camel",
    tag_field="eventType",
    gc=False,
):
    """Fields common to every event. Subclasses add the event's own."""

    agent_id: str
    conversation_id: str
    channel: str
    created_at: datetime
    is_ai_enabled: bool
    agent_name: str | UnsetType = UNSET
    organization_id: str | UnsetType = UNSET
    user_name: str | UnsetType = UNSET
    user_email: str | UnsetType = UNSET
    user_phone_number: str | UnsetType = UNSET
    attachments: list[AttachmentPayload] | UnsetType = UNSET
    #: the event's place in its conversation (1, 2, 3...): numbered by the
    #: delivery store as the event is queued, so unset when built here
    sequence: Annotated[int, msgspec.Meta(ge=1)] | UnsetType = UNSET


class UserMessageReceived(Payload, tag=WebhookEventType.USER_MESSAGE_RECEIVED.value):
    """A user's message arrived while AI is disabled."""

    message_id: str
    user_message: str


class AgentUserMessage(Payload, tag=WebhookEventType.AGENT_USER_MESSAGE.value):
    """The AI agent answered a user's message: carries both texts."""

    message_id: str
    user_message_id: str
    user_message: str
    agent_response: str


class AgentMessageSended(Payload, tag=WebhookEventType.AGENT_MESSAGE_SENDED.value):
    """A human operator's message went out from the Inbox."""

    message_id: str
    agent_response: str


class AgentMessageBlocked(Payload, tag=WebhookEventType.AGENT_MESSAGE_BLOCKED.value):
    """The channel refused an agent message (e.g. outside WhatsApp's 24 h window)."""

    message_id: str
    agent_response: str
    reason: str


class AgentMessageNoted(Payload, tag=WebhookEventType.AGENT_MESSAGE_NOTED.value):
    """An agent message was logged as a note: the channel cannot carry it."""

    message_id: str
    agent_response: str
    reason: str


class GroupMessageReceived(Payload, tag=WebhookEventType.GROUP_MESSAGE_RECEIVED.value):
    """A group message arrived in which the agent was not mentioned."""

    message_id: str
    user_message: str
    group_id: str
    group_name: str


PAYLOAD_TYPES: Final[dict[WebhookEventType, type[Payload]]] = {
    WebhookEventType.USER_MESSAGE_RECEIVED: UserMessageReceived,
    WebhookEventType.AGENT_USER_MESSAGE: AgentUserMessage,
    WebhookEventType.AGENT_MESSAGE_SENDED: AgentMessageSended,
    WebhookEventType.AGENT_MESSAGE_BLOCKED: AgentMessageBlocked,
    WebhookEventType.AGENT_MESSAGE_NOTED: AgentMessageNoted,
    WebhookEventType.GROUP_MESSAGE_RECEIVED: GroupMessageReceived,
}

_encoder: Final = msgspec.json.Encoder()

#: Encode a payload to the JSON bytes that go on the wire (the encoder's bound
#: method itself: one Python call less on the hook path).
encode: Final[Callable[[Payload], bytes]] = _encoder.encode


def _utc(moment: datetime) -> datetime:
    # RFC 3339 in UTC on the wire; a naive time is taken to be UTC already.
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _attachments(message: Message) -> list[AttachmentPayload]:
    return [
        AttachmentPayload(
            url=a.url,
            mime_type=UNSET if a.mime_type is None else a.mime_type,
            name=UNSET if a.name is None else a.name,
            size=UNSET if a.size is None else a.size,
        )
        for a in message.attachments
    ]


def build_payload(
    event_type: WebhookEventType,
    *,
    agent: Agent,
    conversation: Conversation,
    message: Message,
    user_message: Message | None = None,
    group: Group | None = None,
    reason: str | None = None,
) -> Payload:
    """Build the payload of one event from the pipeline's objects.

    :param message: the agent's message for agent events, the user's message
        for ``USER_MESSAGE_RECEIVED`` and ``GROUP_MESSAGE_RECEIVED``.
    :param user_message: the user's message the AI answered
        (``AGENT_USER_MESSAGE`` only).
    :param group: the group (``GROUP_MESSAGE_RECEIVED`` only).
    :param reason: why a message was blocked or noted.
    :raises ValueError: when an argument the event type needs is missing.
    """
    # This runs on the hook path for every event, so each Struct is built in a
    # single call with explicit keywords: splatting a dict of the common fields
    # measured twice as slow (benchmarks/bench_encoding.py).
    contact = conversation.contact
    agent_id, conversation_id, channel = agent.id, conversation.id, conversation.channel
    created_at, ai = _utc(message.created_at), conversation.ai_enabled
    agent_name = UNSET if agent.name is None else agent.name
    organization_id = UNSET if agent.organization_id is None else agent.organization_id
    user_name = UNSET if contact.name is None else contact.name
    user_email = UNSET if contact.email is None else contact.email
    user_phone = UNSET if contact.phone_number is None else contact.phone_number
    attachments = _attachments(message) if message.attachments else UNSET

    if event_type is WebhookEventType.AGENT_USER_MESSAGE:
        if user_message is None:
            raise ValueError("AGENT_USER_MESSAGE needs the user's message it answers")
        return AgentUserMessage(
            agent_id=agent_id, conversation_id=conversation_id, channel=channel,
            created_at=created_at, is_ai_enabled=ai, agent_name=agent_name,
            organization_id=organization_id, user_name=user_name, user_email=user_email,
            user_phone_number=user_phone, attachments=attachments, message_id=message.id,
            user_message_id=user_message.id, user_message=user_message.text,
            agent_response=message.text,
        )  # fmt: skip
    if event_type is WebhookEventType.USER_MESSAGE_RECEIVED:
        return UserMessageReceived(
            agent_id=agent_id, conversation_id=conversation_id, channel=channel,
            created_at=created_at, is_ai_enabled=ai, agent_name=agent_name,
            organization_id=organization_id, user_name=user_name, user_email=user_email,
            user_phone_number=user_phone, attachments=attachments, message_id=message.id,
            user_message=message.text,
        )  # fmt: skip
    if event_type is WebhookEventType.AGENT_MESSAGE_SENDED:
        return AgentMessageSended(
            agent_id=agent_id, conversation_id=conversation_id, channel=channel,
            created_at=created_at, is_ai_enabled=ai, agent_name=agent_name,
            organization_id=organization_id, user_name=user_name, user_email=user_email,
            user_phone_number=user_phone, attachments=attachments, message_id=message.id,
            agent_response=message.text,
        )  # fmt: skip
    if event_type is WebhookEventType.GROUP_MESSAGE_RECEIVED:
        if group is None:
            raise ValueError("GROUP_MESSAGE_RECEIVED needs the group")
        return GroupMessageReceived(
            agent_id=agent_id, conversation_id=conversation_id, channel=channel,
            created_at=created_at, is_ai_enabled=ai, agent_name=agent_name,
            organization_id=organization_id, user_name=user_name, user_email=user_email,
            user_phone_number=user_phone, attachments=attachments, message_id=message.id,
            user_message=message.text, group_id=group.id, group_name=group.name,
        )  # fmt: skip
    if event_type in (WebhookEventType.AGENT_MESSAGE_BLOCKED, WebhookEventType.AGENT_MESSAGE_NOTED):
        if reason is None:
            raise ValueError(f"{event_type} needs a reason")
        cls = (
            AgentMessageBlocked
            if event_type is WebhookEventType.AGENT_MESSAGE_BLOCKED
            else AgentMessageNoted
        )
        return cls(
            agent_id=agent_id, conversation_id=conversation_id, channel=channel,
            created_at=created_at, is_ai_enabled=ai, agent_name=agent_name,
            organization_id=organization_id, user_name=user_name, user_email=user_email,
            user_phone_number=user_phone, attachments=attachments, message_id=message.id,
            agent_response=message.text, reason=reason,
        )  # fmt: skip
    raise ValueError(f"unknown event type {event_type!r}")


#: the ``eventType`` of the request that tests an agent's settings; never the
#: type of a conversation event, so receivers can tell it apart and ignore it
TEST_EVENT_TYPE: Final = "WEBHOOK_TEST"


class WebhookTest(
    msgspec.Struct, kw_only=True, rename="camel", tag_field="eventType", tag=TEST_EVENT_TYPE
):
    """The body of a settings test: which agent's settings, and when."""

    agent_id: str
    created_at: datetime


def require_sequence(definitions: dict[str, Any]) -> None:
    """Mark ``sequence`` required in these schema definitions: every delivered
    payload has one (the store writes it in), though a payload built here has not."""
    for definition in definitions.values():
        if "sequence" in definition.get("properties", {}):
            definition["required"] = sorted({*definition.get("required", ()), "sequence"})


class OperationalEvent(
    msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel", frozen=True
):
    """What an ``operations_url`` receives, and what the operational hooks are
    given: which agent's endpoint, its URL, why, and when."""

    event_type: OperationalEventType
    agent_id: str
    #: the agent's webhook URL (the endpoint the event is about)
    url: str
    reason: str
    created_at: datetime
    #: ``DELIVERY_EXHAUSTED`` only: the delivery that failed for good
    delivery_id: int | UnsetType = UNSET
    webhook_id: str | UnsetType = UNSET


def example_payload(event_type: WebhookEventType, agent: Agent) -> Payload:
    """A realistic payload of ``event_type`` for ``agent``, in the conversation
    ``example`` with a fictional contact: what "Send example event" sends."""
    conversation = Conversation(
        id="example",
        agent_id=agent.id,
        channel="whatsapp",
        ai_enabled=event_type is not WebhookEventType.USER_MESSAGE_RECEIVED,
        contact=Contact(
            id="example-user", name="Example User", email="user@example.com",
            phone_number="+15550100000",
        ),
    )  # fmt: skip
    now = datetime.now(UTC)
    user = Message(id=f"example-user-{now:%H%M%S}", text="Hi! Where is my order?", created_at=now)
    reply = Message(id=f"example-agent-{now:%H%M%S}", text="It ships today.", created_at=now)
    kwargs: dict[str, Any] = {}
    message = reply
    if event_type in (
        WebhookEventType.USER_MESSAGE_RECEIVED,
        WebhookEventType.GROUP_MESSAGE_RECEIVED,
    ):
        message = user
    if event_type is WebhookEventType.AGENT_USER_MESSAGE:
        kwargs["user_message"] = user
    if event_type is WebhookEventType.GROUP_MESSAGE_RECEIVED:
        kwargs["group"] = Group(id="example-group", name="Example Group")
    if event_type is WebhookEventType.AGENT_MESSAGE_BLOCKED:
        kwargs["reason"] = "an example: the channel refused the message"
    if event_type is WebhookEventType.AGENT_MESSAGE_NOTED:
        kwargs["reason"] = "an example: the channel cannot carry agent messages"
    return build_payload(
        event_type, agent=agent, conversation=conversation, message=message, **kwargs
    )


def new_webhook_id() -> str:
    """A unique, time-ordered event id: ``msg_``, 48 bits of milliseconds and 80 random bits, in hex."""
    return f"msg_{time.time_ns() // 1_000_000:012x}{int.from_bytes(os.urandom(10)):020x}"


def _with_sequence(schema: dict[str, Any]) -> dict[str, Any]:
    require_sequence(schema.get("$defs", {}))
    return schema


def json_schemas() -> dict[str, Any]:
    """The JSON Schema of every payload an agent's URL receives, keyed by event
    type: the six conversation events, and ``WEBHOOK_TEST`` (a settings save's
    test request)."""
    schemas = {str(t): _with_sequence(msgspec.json.schema(cls)) for t, cls in PAYLOAD_TYPES.items()}
    schemas[TEST_EVENT_TYPE] = msgspec.json.schema(WebhookTest)
    for kind in OperationalEventType:  # what an operations_url receives
        schemas[str(kind)] = msgspec.json.schema(OperationalEvent)
    return schemas


#: a contact's fields and their camelCase wire names, the one list of them
_CONTACT_WIRE: Final = {
    f.name: f.encode_name
    for f in msgspec.structs.fields(
        msgspec.defstruct(
            "_ContactWire",
            [(f.name, f.type, f.default) for f in msgspec.structs.fields(Contact)],
            rename="camel",
        )
    )
}


def contact_to_wire(contact: Contact) -> dict[str, str]:
    """A contact as the wire carries it: camelCase names, fields unset or empty left out."""
    return {
        wire: value for name, wire in _CONTACT_WIRE.items() if (value := getattr(contact, name))
    }


def contact_from_wire(data: dict[str, str]) -> Contact:
    """The contact a wire object (or a stored one) describes; other keys are ignored."""
    return Contact(**{name: data.get(wire) for name, wire in _CONTACT_WIRE.items()})
