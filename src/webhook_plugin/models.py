"""The objects a chat pipeline hands to the hooks.

They are plain, immutable msgspec Structs with snake_case names: the camelCase
wire names exist only in :mod:`webhook_plugin.payloads`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = ["Agent", "Attachment", "Contact", "Conversation", "Group", "Message", "UserInfo"]


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    """The AI agent that owns a conversation."""

    id: str
    name: str | None = None
    organization_id: str | None = None


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    """The end user talking to the agent, as far as the channel knows them."""

    id: str | None = None
    name: str | None = None
    email: str | None = None
    phone_number: str | None = None


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    """One conversation between a contact and an agent on one channel."""

    id: str
    agent_id: str
    channel: str
    ai_enabled: bool = True
    contact: Contact = msgspec.field(default_factory=Contact)


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """A file attached to a message."""

    url: str
    mime_type: str | None = None
    name: str | None = None
    size: int | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One message, from the user, the AI agent or a human operator."""

    id: str
    text: str
    created_at: datetime
    attachments: tuple[Attachment, ...] = ()


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """The group chat a message was posted in (ZAPI and similar channels)."""

    id: str
    name: str
    mentioned: bool = False


class UserInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the Inbox learns about a contact from the agent's user-info endpoint.

    ``status`` is ``ok`` (``data`` holds the endpoint's JSON object),
    ``not_configured``, ``timeout`` or ``error`` (``error`` says what went wrong,
    never with a header value).
    """

    status: Literal["ok", "not_configured", "timeout", "error"]
    data: dict[str, Any] | None = None
    error: str | None = None
