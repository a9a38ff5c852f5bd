"""The webhook plugin: hook implementations that turn stages into queued deliveries.

Each hook maps its stage to an event type (pure), checks the agent's settings
(from memory), builds and encodes the payload (pure) and hands the bytes to
the outbox, which returns at once. Nothing here waits on I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from .delivery.outbox import Outbox, Ticket
from .events import Stage, WebhookEventType, event_for_stage
from .hookspecs import hookimpl
from .models import Agent, Conversation, Group, Message, UserInfo
from .payloads import build_payload, encode
from .userinfo import UserInfoFetcher

__all__ = ["WebhookPlugin"]


class WebhookPlugin:
    """Sends each agent's conversation events to its webhook URL.

    :param outbox: where encoded events go (a
        :class:`~webhook_plugin.delivery.engine.DeliveryEngine`, usually).
    :param user_info: answers :func:`~webhook_plugin.hookspecs.fetch_user_info`
        for agents with a user-info URL; ``None`` leaves that hook to others.
    """

    def __init__(self, outbox: Outbox, user_info: UserInfoFetcher | None = None) -> None:
        self._outbox = outbox
        self._user_info = user_info

    def _queue(
        self, event_type: WebhookEventType | None, agent: Agent, **parts: Any
    ) -> Ticket | None:
        if event_type is None:
            return None
        settings = self._outbox.settings_for(agent.id)
        if settings is None or not settings.wants(event_type):
            return None
        body = encode(build_payload(event_type, agent=agent, **parts))
        return self._outbox.enqueue(agent.id, event_type, body, parts["conversation"].id)

    @hookimpl
    def on_user_message(
        self, agent: Agent, conversation: Conversation, message: Message
    ) -> Ticket | None:
        event = event_for_stage(Stage.USER_MESSAGE, ai_enabled=conversation.ai_enabled)
        return self._queue(event, agent, conversation=conversation, message=message)

    @hookimpl
    def on_agent_reply(
        self,
        agent: Agent,
        conversation: Conversation,
        message: Message,
        in_reply_to: Message | None,
    ) -> Ticket | None:
        event = event_for_stage(Stage.AGENT_REPLY, from_operator=in_reply_to is None)
        return self._queue(
            event, agent, conversation=conversation, message=message, user_message=in_reply_to
        )

    @hookimpl
    def on_blocked(
        self, agent: Agent, conversation: Conversation, message: Message, reason: str
    ) -> Ticket | None:
        event = event_for_stage(Stage.BLOCKED)
        return self._queue(event, agent, conversation=conversation, message=message, reason=reason)

    @hookimpl
    def on_noted(
        self, agent: Agent, conversation: Conversation, message: Message, reason: str
    ) -> Ticket | None:
        event = event_for_stage(Stage.NOTED)
        return self._queue(event, agent, conversation=conversation, message=message, reason=reason)

    @hookimpl
    def on_group_message(
        self, agent: Agent, conversation: Conversation, message: Message, group: Group
    ) -> Ticket | None:
        event = event_for_stage(Stage.GROUP_MESSAGE)
        return self._queue(event, agent, conversation=conversation, message=message, group=group)

    @hookimpl
    def fetch_user_info(
        self, agent: Agent, conversation: Conversation
    ) -> Awaitable[UserInfo] | None:
        if self._user_info is None:
            return None
        settings = self._outbox.settings_for(agent.id)
        if settings is None or not settings.user_info_url:
            return None
        return self._user_info.fetch(agent, conversation, settings)
