"""The chat pipeline: runs the stages of a chat turn and calls the hooks.

Request handlers (the reference runtime's, or a host app's) call
:class:`ChatPipeline`; it stores conversations and messages, calls
``on_user_message`` / ``on_agent_reply`` / ``on_blocked`` / ``on_noted`` /
``on_group_message`` / ``fetch_user_info`` / ``generate_reply``, and awaits
every queued event before it returns, so an acknowledgement means the events
are durably stored.
"""

from __future__ import annotations

import functools
import inspect
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
import structlog

from ...delivery.engine import DeliveryEngine
from ...delivery.outbox import Collected
from ...exceptions import NotFound
from ...manager import PluginManager
from ...models import Agent, Attachment, Conversation, Group, Message
from ...payloads import contact_from_wire
from ...settings import WebhookSettings
from ...storage._sql import SQLStore
from ...storage.base import HeldEvents
from ..config import RuntimeConfig
from ..timestamps import check_created_at
from ..worker.process import WorkerProcess
from .inbox import Inbox
from .store import (
    Answer,
    ChatStore,
    Conflict,
    ConversationRecord,
    IdempotencyMismatch,
    MessageRecord,
    MessageWrite,
    SQLChatStore,
    fingerprint,
)
from .writes import MessageWrites

__all__ = ["ChatPipeline", "Conflict", "IdempotencyMismatch", "QueuedEvents"]

log = structlog.get_logger("webhook_plugin.runtime")

T = TypeVar("T")

QueuedEvents = list[dict[str, str]]


_encode_answer = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(dict[str, Any]).decode


class ChatPipeline:
    """Runs chat turns through the plugin hooks.

    :param pm: the plugin manager (with the webhook plugin registered, usually).
    :param engine: the delivery engine.
    :param store: the chat store (default: :class:`SQLChatStore` on the engine's
        database; :meth:`open_store` creates its tables).
    :param config: agent defaults and the user-info time box.
    """

    def __init__(
        self,
        pm: PluginManager,
        engine: DeliveryEngine,
        config: RuntimeConfig | None = None,
        *,
        store: ChatStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pm = pm
        self.engine = engine
        #: the chat data; by default in the delivery store's database
        self.store: ChatStore = store or _chat_store_for(engine)
        self.config = config or RuntimeConfig()
        self.clock = clock
        #: the chat store's blocking calls: the delivery engine's own helper (one
        #: way to leave the event loop); not its write lane, since each chat
        #: write bounds its own wait for the database (a client waits on it)
        self.blocking = engine.blocking
        self._agents: dict[str, Agent] = {}
        self._ai_defaults: dict[str, bool] = {}
        #: the process delivering for this one, when it is not this one
        self.worker_process: WorkerProcess | None = None
        #: what messages change, written in shared transactions
        self.writes = MessageWrites(self.store, engine, self.blocking, clock=clock)
        #: what signs the console's sessions (the store's, once :meth:`open_store`
        #: and the runtime have read it; random until then)
        self.session_key = secrets.token_bytes(32)
        #: the user messages (by key) this process is working on, for their twins
        self._working: dict[tuple[str, str], anyio.Event] = {}
        #: the Inbox's stages (an operator's message, the conversation view)
        self.inbox = Inbox(self)

    async def open_store(self) -> None:
        """Create or migrate the chat tables (once the engine has opened its store)."""
        await self.blocking(self.store.open)

    # agents -------------------------------------------------------------------------------

    async def agent(self, agent_id: str, *, create: bool = False) -> Agent:
        """The agent, created on first use when ``create`` (AI enabled by default)."""
        cached = self._agents.get(agent_id)
        if cached is not None:
            return cached
        row = await self.blocking(self.store.get_agent, agent_id)
        if row is None:
            if not create:
                raise NotFound(f"agent {agent_id!r} does not exist")
            configured = self.config.agent(agent_id)
            name = configured.name if configured else None
            org = configured.organization_id if configured else None
            ai = configured.ai_enabled if configured else True
            await self.blocking(
                lambda: self.store.put_agent(
                    agent_id, name=name, organization_id=org, ai_enabled=ai
                )
            )
            row = {"id": agent_id, "name": name, "organization_id": org, "ai_enabled": ai}
        agent = Agent(id=agent_id, name=row["name"], organization_id=row["organization_id"])  # type: ignore[arg-type]
        self._agents[agent_id] = agent
        self._ai_defaults[agent_id] = bool(row["ai_enabled"])
        return agent

    async def _agent_ai_default(self, agent_id: str) -> bool:
        # read with the agent (nothing changes an agent's default once created)
        if agent_id not in self._ai_defaults:
            row = await self.blocking(self.store.get_agent, agent_id)
            self._ai_defaults[agent_id] = bool(row["ai_enabled"]) if row else True
        return self._ai_defaults[agent_id]

    async def seed_agents(self) -> None:
        """Create the config's agents, and their settings unless saved ones exist."""
        for configured in self.config.agents:
            existing = await self.blocking(self.store.get_agent, configured.id)
            if existing is None:
                await self.blocking(
                    self.store.put_agent,
                    configured.id,
                    name=configured.name,
                    organization_id=configured.organization_id,
                    ai_enabled=configured.ai_enabled,
                )
            settings = configured.settings()
            if settings is not None and await self.engine.get_settings(configured.id) is None:
                await self.engine.save_settings(configured.id, settings)

    async def save_settings(
        self, agent_id: str, settings: WebhookSettings, *, held_events: HeldEvents = "send"
    ) -> tuple[WebhookSettings, str | None]:
        """Save an agent's settings (creating the agent, enabling its endpoint and
        sending or discarding what was held); the settings saved, and the signing
        secret this save generated (the agent's first), if it did."""
        await self.agent(agent_id, create=True)
        return await self.engine.save_settings_reporting(
            agent_id, settings, held_events=held_events
        )

    # conversations -------------------------------------------------------------------------

    async def find_conversation(self, conversation_id: str) -> ConversationRecord | None:
        """The stored conversation, or ``None``: on the event loop where the store
        allows it (a thread hop costs more than the lookup), else in a thread."""
        if getattr(self.store, "reads_inline", False):  # a host's own store may not say
            return self.store.get_conversation(conversation_id)
        return await self.blocking(self.store.get_conversation, conversation_id)

    async def conversation(self, conversation_id: str) -> ConversationRecord:
        record = await self.find_conversation(conversation_id)
        if record is None:
            raise NotFound(f"conversation {conversation_id!r} does not exist")
        return record

    @staticmethod
    def model(record: ConversationRecord) -> Conversation:
        return Conversation(
            id=record.id,
            agent_id=record.agent_id,
            channel=record.channel,
            ai_enabled=record.ai_enabled,
            contact=contact_from_wire(record.contact),
        )

    async def set_ai(self, conversation_id: str, enabled: bool) -> ConversationRecord:
        """An operator's switch: it holds whatever messages are in flight (they
        never write it)."""
        record = await self.blocking(self.store.set_ai_enabled, conversation_id, enabled)
        if record is None:
            raise NotFound(f"conversation {conversation_id!r} does not exist")
        return record

    # the stages ------------------------------------------------------------------------------

    async def settle(self, results: list[Any], collected: Collected) -> QueuedEvents:
        """Await what the hooks returned, except the events being collected
        (they are stored with the message); report the queued webhook events."""
        events: QueuedEvents = []
        for result in results:
            if inspect.isawaitable(result) and not collected.holds(result):
                await result
            event_type = getattr(result, "event_type", None)
            webhook_id = getattr(result, "webhook_id", None)
            if event_type is not None and webhook_id is not None:
                events.append({"eventType": str(event_type), "webhookId": webhook_id})
        return events

    async def user_message(
        self,
        agent_id: str,
        *,
        conversation_id: str,
        channel: str,
        text: str,
        message_id: str | None = None,
        created_at: datetime | None = None,
        contact: dict[str, str] | None = None,
        group: Group | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> dict[str, Any]:
        """A user's message arrives: store it, call the hooks, let the AI answer.

        With a ``message_id``, a client retrying a request it got no answer to
        gets the first answer again, with no second reply and no second set of
        events; the database decides which request's answer that is:

        - a retry of an answered message gets the stored answer from one read
          by key, before any hook runs (the model is not asked again);
        - twins in this process (a retry while the first is at work) wait for
          the first and get its answer (single-flight);
        - twins on two processes may both run the hooks; the first to commit
          stores its answer and events, the other stores nothing (its events
          are void) and answers what the first stored;
        - the same ``message_id`` with another request (another agent, channel,
          text or group) is an :class:`IdempotencyMismatch`, never the first
          request's answer.
        """
        process = functools.partial(
            self._user_message,
            agent_id,
            conversation_id=conversation_id,
            channel=channel,
            text=text,
            message_id=message_id,
            created_at=created_at,
            contact=contact,
            group=group,
            attachments=attachments,
        )
        if message_id is None:
            return await process(None)
        key = (conversation_id, message_id)
        bound = fingerprint(agent_id, channel, text, group.id if group else None)
        while True:
            earlier = await self._answer(key, bound)
            if earlier is not None:
                return earlier
            first = self._working.get(key)
            if first is None:
                break
            await first.wait()  # then its answer, or ours to make if it failed
        self._working[key] = done = anyio.Event()
        try:
            return await process(bound)
        finally:
            del self._working[key]
            done.set()

    async def _answer(self, key: tuple[str, str], bound: str) -> dict[str, Any] | None:
        """The stored answer of a message, if it was answered (one read by key)."""
        if getattr(self.store, "reads_inline", False):  # a host's own store may not say
            stored = self.store.get_answer(*key)
        else:
            stored = await self.blocking(self.store.get_answer, *key)
        if stored is None or not stored[0]:
            return None
        body, bound_to = stored
        if bound_to is not None and bound_to != bound:
            raise IdempotencyMismatch.of(key[1])
        return _stored_answer(body, key[1])

    async def _user_message(
        self,
        agent_id: str,
        bound: str | None,
        *,
        conversation_id: str,
        channel: str,
        text: str,
        message_id: str | None,
        created_at: datetime | None,
        contact: dict[str, str] | None,
        group: Group | None,
        attachments: tuple[Attachment, ...],
    ) -> dict[str, Any]:
        agent = await self.agent(agent_id, create=True)
        now = self.clock()
        created = check_created_at(created_at) if created_at else datetime.fromtimestamp(now, UTC)
        record = await self.find_conversation(conversation_id)
        if record is None:
            record = ConversationRecord(
                id=conversation_id,
                agent_id=agent_id,
                channel=channel,
                ai_enabled=await self._agent_ai_default(agent_id),
                contact={},
                created_at=now,
            )
        elif record.agent_id != agent_id:
            raise Conflict(f"conversation {conversation_id!r} belongs to another agent")
        elif record.channel != channel:
            raise Conflict(f"conversation {conversation_id!r} is on channel {record.channel!r}")
        # the contact is merged with the stored one at commit (under its lock);
        # the hooks see what is known now
        given = {k: v for k, v in (contact or {}).items() if v}
        if given:
            record.contact = {**record.contact, **given}
        if group is not None and group.name:
            record.group_name = group.name
        record.last_user_message_at = max(record.last_user_message_at or 0.0, created.timestamp())
        conversation = self.model(record)
        message = Message(
            id=message_id or f"msg_{os.urandom(16).hex()}",
            text=text,
            created_at=created,
            attachments=attachments,
        )
        stored = [
            MessageRecord(
                id=message.id,
                conversation_id=conversation.id,
                author="user",
                text=text,
                created_at=created.timestamp(),
                status="received",
                attachments=[msgspec.to_builtins(a) for a in attachments],
            )
        ]
        results: list[Any] = []
        reply: dict[str, str] = {}
        with self.engine.collecting() as collected:
            await self._run_user_hooks(agent, conversation, message, group, results, stored, reply)
        answered = {
            "conversationId": conversation.id,
            "messageId": message.id,
            "reply": reply or None,
            "events": await self.settle(results, collected),
        }
        answer = None
        if message_id is not None and bound is not None:
            answer = Answer(
                conversation_id=conversation.id,
                message_id=message_id,
                fingerprint=bound,
                body=_encode_answer(answered),
            )
        write = MessageWrite(
            conversation=msgspec.structs.replace(record, contact=given),
            messages=stored,
            answer=answer,
        )
        await self.writes.commit(write, collected)
        if write.refused is not None:
            raise write.refused
        if write.earlier is not None:  # another request was answered first: its answer
            return _stored_answer(write.earlier, message_id or "")
        return answered

    async def _run_user_hooks(
        self,
        agent: Agent,
        conversation: Conversation,
        message: Message,
        group: Group | None,
        results: list[Any],
        stored: list[MessageRecord],
        reply_to: dict[str, str],
    ) -> None:
        """The hooks of a user's message (and the AI's reply), in the order the
        contract gives; what they return goes to ``results``, the AI's message
        to ``stored`` and ``reply_to``."""
        pm = self.pm
        if group is not None and not group.mentioned:
            results += pm.on_group_message(
                agent=agent, conversation=conversation, message=message, group=group
            )
        else:
            results += pm.on_user_message(agent=agent, conversation=conversation, message=message)
            if conversation.ai_enabled:
                answer = pm.hook.generate_reply(  # the runtime's own hookspec
                    agent=agent, conversation=conversation, message=message
                )
                if inspect.isawaitable(answer):
                    answer = await answer
                if answer:
                    agent_message = Message(
                        id=f"msg_{os.urandom(16).hex()}",
                        text=str(answer),
                        created_at=datetime.fromtimestamp(self.clock(), UTC),
                    )
                    results += pm.on_agent_reply(
                        agent=agent,
                        conversation=conversation,
                        message=agent_message,
                        in_reply_to=message,
                    )
                    stored.append(
                        MessageRecord(
                            id=agent_message.id,
                            conversation_id=conversation.id,
                            author="agent",
                            text=agent_message.text,
                            created_at=agent_message.created_at.timestamp(),
                            status="sent",
                        )
                    )
                    reply_to.update(messageId=agent_message.id, text=agent_message.text)

    # the Inbox (runtime/chat/inbox.py) --------------------------------------------------------

    async def inbox_message(self, conversation_id: str, text: str) -> dict[str, Any]:
        """:meth:`Inbox.message <.inbox.Inbox.message>`."""
        return await self.inbox.message(conversation_id, text)

    async def inbox_view(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """:meth:`Inbox.view <.inbox.Inbox.view>`."""
        return await self.inbox.view(conversation_id, before=before, limit=limit)


def _stored_answer(body: bytes, message_id: str) -> dict[str, Any]:
    """A stored answer, as it is answered again; one that does not read (a row
    written by hand or by another program) is a :class:`Conflict` that says so,
    never a server error."""
    try:
        return _decode_answer(body)
    except (msgspec.DecodeError, RecursionError):
        raise Conflict(
            f"the stored answer of message {message_id!r} cannot be read (it was written"
            " by another program); send the message with a new messageId"
        ) from None


def _chat_store_for(engine: DeliveryEngine) -> ChatStore:
    if not isinstance(engine.store, SQLStore):
        raise TypeError(
            "the chat pipeline keeps its data in the delivery store's SQL database: pass"
            " store=... for a delivery store of another kind"
        )
    return SQLChatStore(engine.store)
