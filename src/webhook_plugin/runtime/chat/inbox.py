"""The Inbox's stages: an operator's message, and a conversation as the Inbox
shows it, with the user information the plugins fetch (never holding the
page longer than the user-info time box)."""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from ...models import Agent, Conversation, Message, UserInfo
from ..timestamps import iso
from . import channels
from .store import MessageRecord, MessageWrite

if TYPE_CHECKING:
    from .pipeline import ChatPipeline

__all__ = ["MAX_PAGE", "PAGE", "Inbox"]

#: messages in one page of a conversation, by default and at most
PAGE: Final = 50
MAX_PAGE: Final = 200

log = structlog.get_logger("webhook_plugin.runtime")


class Inbox:
    """The Inbox's stages, on a :class:`~.pipeline.ChatPipeline`'s stores and hooks."""

    def __init__(self, pipeline: ChatPipeline) -> None:
        self._p = pipeline

    async def message(self, conversation_id: str, text: str) -> dict[str, Any]:
        """A human operator writes from the Inbox; the channel decides what happens."""
        p = self._p
        record = await p.conversation(conversation_id)
        agent = await p.agent(record.agent_id, create=True)
        conversation = p.model(record)
        now = p.clock()
        verdict, reason = channels.decide(record.channel, record.last_user_message_at, now)
        message = Message(
            id=f"msg_{os.urandom(16).hex()}", text=text, created_at=datetime.fromtimestamp(now, UTC)
        )
        pm = p.pm
        with p.engine.collecting() as collected:
            if verdict == "sent":
                results = pm.on_agent_reply(
                    agent=agent, conversation=conversation, message=message, in_reply_to=None
                )
            elif verdict == "blocked":
                assert reason is not None  # channels.decide gives one with every refusal
                results = pm.on_blocked(
                    agent=agent, conversation=conversation, message=message, reason=reason
                )
            else:
                assert reason is not None
                results = pm.on_noted(
                    agent=agent, conversation=conversation, message=message, reason=reason
                )
        events = await p.settle(results, collected)
        stored = MessageRecord(
            id=message.id,
            conversation_id=conversation.id,
            author="operator",
            text=text,
            created_at=now,
            status=verdict,
        )
        await p.writes.commit(MessageWrite(messages=[stored]), collected)
        return {"messageId": message.id, "status": verdict, "events": events}

    async def view(
        self, conversation_id: str, *, before: int | None = None, limit: int = PAGE
    ) -> dict[str, Any]:
        """The conversation as the Inbox shows it, enriched with user info: its
        newest ``limit`` messages older than the cursor ``before``, oldest first,
        and ``nextBefore`` when there are older ones (a long conversation is
        read a page at a time, never whole)."""
        p = self._p
        record = await p.conversation(conversation_id)
        agent = await p.agent(record.agent_id, create=True)
        messages = await p.blocking(
            functools.partial(
                p.store.list_messages, conversation_id, before=before, limit=limit + 1
            )
        )
        older = len(messages) > limit
        messages = messages[1:] if older else messages
        info = await self.user_info(agent, p.model(record))
        return {
            "conversationId": record.id,
            "agentId": record.agent_id,
            "channel": record.channel,
            "aiEnabled": record.ai_enabled,
            "contact": record.contact,
            **({"groupName": record.group_name} if record.group_name else {}),
            "messages": [
                {
                    "id": m.id,
                    "author": m.author,
                    "text": m.text,
                    "createdAt": iso(m.created_at),
                    "status": m.status,
                    **({"attachments": m.attachments} if m.attachments else {}),
                }
                for m in messages
            ],
            "userInfo": info.data,
            "userInfoStatus": info.status,
            **({"userInfoError": info.error} if info.error else {}),
            **({"nextBefore": messages[0].seq} if older else {}),
        }

    async def user_info(self, agent: Agent, conversation: Conversation) -> UserInfo:
        """Ask the plugins; whatever they do, answer within the time box."""
        p = self._p
        try:
            pending = p.pm.fetch_user_info(agent=agent, conversation=conversation)
            if pending is None:
                return UserInfo(status="not_configured")
            # a little slack over the fetcher's own time box, for third-party plugins
            box = p.engine.config.user_info_timeout + 0.5
            with anyio.move_on_after(box):
                result = await pending
                if isinstance(result, UserInfo):
                    return result
                return UserInfo(
                    status="error", error="a plugin answered something else than UserInfo"
                )
            return UserInfo(status="timeout", error=f"no answer within {box:g} s")
        except Exception as exc:  # a third-party plugin must not break the Inbox
            log.warning("user_info.plugin_failed", error=type(exc).__name__)
            return UserInfo(status="error", error=f"a plugin failed: {type(exc).__name__}")
