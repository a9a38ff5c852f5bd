"""Webhook event types, and which pipeline stage produces which.

Pure: no I/O. The mapping is the contract's table (``CONTRACT.md`` section 1).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["GROUP_EVENTS", "OperationalEventType", "Stage", "WebhookEventType", "event_for_stage"]


class WebhookEventType(StrEnum):
    """The kind of conversation activity that triggered a webhook.

    Values equal their names; ``AGENT_MESSAGE_SENDED`` is spelled as the wire
    format has always spelled it.
    """

    USER_MESSAGE_RECEIVED = "USER_MESSAGE_RECEIVED"
    AGENT_MESSAGE_SENDED = "AGENT_MESSAGE_SENDED"
    AGENT_USER_MESSAGE = "AGENT_USER_MESSAGE"
    AGENT_MESSAGE_BLOCKED = "AGENT_MESSAGE_BLOCKED"
    AGENT_MESSAGE_NOTED = "AGENT_MESSAGE_NOTED"
    GROUP_MESSAGE_RECEIVED = "GROUP_MESSAGE_RECEIVED"


class OperationalEventType(StrEnum):
    """What happened to an agent's endpoint, told to its ``operations_url`` and
    to the ``on_endpoint_*`` / ``on_delivery_exhausted`` hooks (``CONTRACT.md``
    section 2), never about the operations URL itself."""

    #: its failures have lasted a set share of the auto-disable window
    ENDPOINT_FAILING = "ENDPOINT_FAILING"
    #: ``410 Gone``, or the auto-disable window ran out: its events are held
    ENDPOINT_DISABLED = "ENDPOINT_DISABLED"
    #: a success after ``ENDPOINT_FAILING`` or ``ENDPOINT_DISABLED``
    ENDPOINT_RECOVERED = "ENDPOINT_RECOVERED"
    #: a delivery failed for good (its attempts ran out, or it was given up)
    DELIVERY_EXHAUSTED = "DELIVERY_EXHAUSTED"


#: event types whose payload carries ``groupId`` and ``groupName``
GROUP_EVENTS = frozenset({WebhookEventType.GROUP_MESSAGE_RECEIVED})


class Stage(StrEnum):
    """The pipeline stages, named after the hooks that announce them."""

    USER_MESSAGE = "on_user_message"
    AGENT_REPLY = "on_agent_reply"
    BLOCKED = "on_blocked"
    NOTED = "on_noted"
    GROUP_MESSAGE = "on_group_message"


def event_for_stage(
    stage: Stage, *, ai_enabled: bool = True, from_operator: bool = False
) -> WebhookEventType | None:
    """Return the event a stage sends, or ``None`` when it sends none by itself.

    :param stage: the hook the pipeline called.
    :param ai_enabled: whether AI answers in this conversation (matters for
        :attr:`Stage.USER_MESSAGE`: with AI on, the reply sends the event).
    :param from_operator: for :attr:`Stage.AGENT_REPLY`, whether a human operator
        wrote the message from the Inbox rather than the AI answering a user.
    """
    match stage:
        case Stage.USER_MESSAGE:
            return None if ai_enabled else WebhookEventType.USER_MESSAGE_RECEIVED
        case Stage.AGENT_REPLY:
            if from_operator:
                return WebhookEventType.AGENT_MESSAGE_SENDED
            return WebhookEventType.AGENT_USER_MESSAGE
        case Stage.BLOCKED:
            return WebhookEventType.AGENT_MESSAGE_BLOCKED
        case Stage.NOTED:
            return WebhookEventType.AGENT_MESSAGE_NOTED
        case Stage.GROUP_MESSAGE:
            return WebhookEventType.GROUP_MESSAGE_RECEIVED
    raise ValueError(f"unknown stage {stage!r}")  # pragma: no cover - exhaustive match
