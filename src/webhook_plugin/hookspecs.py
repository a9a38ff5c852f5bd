"""Hook specifications: the contract between chat pipelines and plugins.

A chat pipeline calls these hooks at its stages, always with keyword
arguments (pluggy refuses positional ones); plugins (this package's own :class:`~webhook_plugin.plugin.WebhookPlugin`
and any third party's) implement them with :data:`hookimpl`.

Hook implementations must not wait on I/O: a pipeline calls them on its event
loop, in the middle of a chat turn. The ``on_*`` hooks may return an awaitable
(the webhook plugin returns a :class:`QueuedEvent`); a pipeline that wants an
acknowledgement to mean "durably queued" awaits every awaitable returned before
it answers. ``fetch_user_info`` is ``firstresult``: the first plugin that returns
an awaitable answers for the conversation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, Final, Protocol

import pluggy

from .events import WebhookEventType
from .models import Agent, Conversation, Group, Message, UserInfo
from .payloads import OperationalEvent

__all__ = ["NAME", "QueuedEvent", "hookimpl"]

#: the pluggy project name, the marker name and the entry-point group
NAME: Final = "webhook_plugin"

hookimpl: Final = pluggy.HookimplMarker(NAME)
_hookspec: Final = pluggy.HookspecMarker(NAME)


class QueuedEvent(Protocol):
    """What an ``on_*`` hook returns for each webhook delivery it queued.

    Awaiting it returns once the event is durably stored in the outbox.
    """

    @property
    def event_type(self) -> WebhookEventType: ...

    @property
    def webhook_id(self) -> str: ...

    def __await__(self) -> Generator[Any, None, None]: ...


@_hookspec
def on_user_message(
    agent: Agent, conversation: Conversation, message: Message
) -> Awaitable[object] | None:
    """A user's message arrived in a conversation.

    Fires for every user message, before the AI answers. When AI is disabled
    for the conversation (``conversation.ai_enabled`` is false) it sends
    ``USER_MESSAGE_RECEIVED``; when AI is enabled it sends nothing by itself,
    because the reply sends ``AGENT_USER_MESSAGE``.

    :param agent: the agent that owns the conversation.
    :param conversation: the conversation, with the contact.
    :param message: the user's message.
    :return: an awaitable the pipeline awaits before acknowledging the
        message, or ``None``.
    """


@_hookspec
def on_agent_reply(
    agent: Agent,
    conversation: Conversation,
    message: Message,
    in_reply_to: Message | None,
) -> Awaitable[object] | None:
    """An agent message went out on a channel that carries it.

    Fires when the AI agent answered a user's message (``in_reply_to`` is that
    message: sends ``AGENT_USER_MESSAGE`` with both texts), and when a human
    operator sent a message from the Inbox (``in_reply_to`` is ``None``: sends
    ``AGENT_MESSAGE_SENDED``).

    :param message: the agent's message.
    :param in_reply_to: the user's message the AI answered, or ``None`` for an
        operator's message.
    :return: an awaitable, or ``None``.
    """


@_hookspec
def on_blocked(
    agent: Agent, conversation: Conversation, message: Message, reason: str
) -> Awaitable[object] | None:
    """The channel refused an agent message.

    Fires, for example, on ``whatsapp``, ``instagram`` and ``instagramDm`` when
    more than 24 hours passed since the user's last message. Sends
    ``AGENT_MESSAGE_BLOCKED``.

    :param message: the agent's message that was not delivered.
    :param reason: why, in words an operator understands.
    :return: an awaitable, or ``None``.
    """


@_hookspec
def on_noted(
    agent: Agent, conversation: Conversation, message: Message, reason: str
) -> Awaitable[object] | None:
    """An agent message was logged as a note because the channel cannot carry it.

    Fires on channels such as ``api`` and ``dashboard``. Sends
    ``AGENT_MESSAGE_NOTED``.

    :param message: the agent's message that was kept as a note.
    :param reason: why it was noted.
    :return: an awaitable, or ``None``.
    """


@_hookspec
def on_group_message(
    agent: Agent, conversation: Conversation, message: Message, group: Group
) -> Awaitable[object] | None:
    """A message arrived in a group chat in which the agent was not mentioned.

    Sends ``GROUP_MESSAGE_RECEIVED``, the only event with ``groupId`` and
    ``groupName``.

    :param message: the user's message in the group.
    :param group: the group it was posted in.
    :return: an awaitable, or ``None``.
    """


@_hookspec(firstresult=True)
def fetch_user_info(agent: Agent, conversation: Conversation) -> Awaitable[UserInfo] | None:
    """Fetch extra information about the conversation's contact for the Inbox.

    Called before the Inbox renders a conversation. The first plugin that
    returns an awaitable answers; the awaitable must never raise and should
    finish within the configured time box, resolving to a :class:`UserInfo`
    whose ``status`` says why data may be missing. Return ``None`` when this
    plugin has nothing to say for the agent.

    :return: an awaitable resolving to a :class:`UserInfo`, or ``None``.
    """


# operational events: what happened to an agent's endpoint ------------------------------
#
# Called by the delivery engine (``DeliveryEngine.report_to(pm.hook)``) on its
# event loop in the process that recorded the attempt, once per condition (the
# database decides which process saw it first). Implementations must not wait
# on I/O; an exception is logged and never reaches the engine. The same events
# go to the agent's ``operations_url``, when it has one (``CONTRACT.md``
# section 2).


@_hookspec
def on_endpoint_failing(event: OperationalEvent) -> None:
    """An agent's endpoint has kept failing for a set share of the auto-disable
    window (``ENDPOINT_FAILING``: once per share, per failing spell)."""


@_hookspec
def on_endpoint_disabled(event: OperationalEvent) -> None:
    """An agent's endpoint was disabled (``410 Gone``, or failing for the whole
    window): its events are held until its owner enables it again."""


@_hookspec
def on_endpoint_recovered(event: OperationalEvent) -> None:
    """An agent's endpoint answered a success after ``ENDPOINT_FAILING`` or
    ``ENDPOINT_DISABLED``."""


@_hookspec
def on_delivery_exhausted(event: OperationalEvent) -> None:
    """A delivery failed for good: its attempts ran out, or it was given up
    (``event.delivery_id`` and ``event.webhook_id`` say which). It stays in the
    delivery log, and can be redelivered or recovered."""
