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
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
import structlog

from ..delivery.engine import DeliveryEngine
from ..delivery.outbox import Batcher, Collected
from ..exceptions import NotFound, WebhookPluginError
from ..manager import PluginManager
from ..models import Agent, Attachment, Conversation, Group, Message
from ..payloads import contact_from_wire
from ..settings import WebhookSettings
from ..storage._sql import SQLStore
from .chat_store import ChatStore, ConversationRecord, MessageRecord, MessageWrite, SQLChatStore
from .config import RuntimeConfig
from .inbox import Inbox
from .reservations import Conflict, Reservations

__all__ = [
    "MAX_CREATED_AT",
    "MIN_CREATED_AT",
    "ChatPipeline",
    "Conflict",
    "QueuedEvents",
    "check_created_at",
]

log = structlog.get_logger("webhook_plugin.runtime")

T = TypeVar("T")

QueuedEvents = list[dict[str, str]]


_encode_outcome = msgspec.json.Encoder().encode


#: a message's ``created_at`` must fall in this range once converted to UTC:
#: outside it a time cannot be stored as a timestamp and shown again
MIN_CREATED_AT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CREATED_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def check_created_at(value: datetime) -> datetime:
    """``value`` made aware (a time without an offset is UTC) and checked against
    :data:`MIN_CREATED_AT` .. :data:`MAX_CREATED_AT`; :class:`ValueError` if outside."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    try:
        utc: datetime | None = aware.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        utc = None
    if utc is None or not MIN_CREATED_AT <= utc <= MAX_CREATED_AT:
        raise ValueError(
            f"createdAt {value.isoformat()} is out of range: give a time between"
            " 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z (after conversion to UTC)"
        )
    return aware


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
        self._limiter = anyio.CapacityLimiter(4)
        self._agents: dict[str, Agent] = {}
        self._ai_defaults: dict[str, bool] = {}
        #: what messages change, written in shared transactions
        self._writes: Batcher[MessageWrite] = Batcher(self.store.write_messages, max_batch=512)
        self._writes_running = False
        self.reservations = Reservations(self.store, self.blocking, clock)
        #: the Inbox's stages (an operator's message, the conversation view)
        self.inbox = Inbox(self)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

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
                    lambda c=configured: self.store.put_agent(
                        c.id,
                        name=c.name,
                        organization_id=c.organization_id,
                        ai_enabled=c.ai_enabled,
                    )
                )
            settings = configured.settings()
            if settings is not None and await self.engine.get_settings(configured.id) is None:
                await self.engine.save_settings(configured.id, settings)

    async def save_settings(self, agent_id: str, settings: WebhookSettings) -> WebhookSettings:
        await self.agent(agent_id, create=True)
        return await self.engine.save_settings(agent_id, settings)

    # conversations -------------------------------------------------------------------------

    async def conversation(self, conversation_id: str) -> ConversationRecord:
        record = await self.blocking(self.store.get_conversation, conversation_id)
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
        record = await self.conversation(conversation_id)
        record.ai_enabled = enabled
        await self.blocking(self.store.put_conversation, record)
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

    async def commit(self, write: MessageWrite, collected: Collected) -> None:
        """Store ``write`` and the events ``collected`` with it, in one transaction
        shared with the other messages being committed (group commit); return
        once it is durable."""
        write.deliveries = collected.items
        try:
            if self._writes_running:
                await self._writes.submit(write).wait()
            else:  # nobody runs the group commit (an app that embeds us bare)
                await self.blocking(self.store.write_messages, [write])
        except BaseException as exc:
            self.engine.written(collected, exc)
            raise
        self.engine.written(collected)

    async def run_writes(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Group-commit messages until :meth:`close_writes` (run it in a task)."""
        self._writes_running = True
        try:
            await self._writes.run(task_status=task_status)
        finally:
            self._writes_running = False

    def close_writes(self) -> None:
        self._writes.close()

    async def purge_loop(self) -> None:
        """Forget stored answers past the delivery log's retention, every
        ``purge_interval`` (run it in a task; it never returns)."""
        config = self.engine.config
        while config.retention > 0:
            try:
                await self.blocking(
                    functools.partial(
                        self.store.purge_outcomes, before=self.clock() - config.retention
                    )
                )
            except WebhookPluginError as exc:  # the next round tries again
                log.warning("outcomes.purge_failed", error=str(exc))
            await anyio.sleep(config.purge_interval)

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
        events, even while the first request is still running (the retry waits
        for it up to a few seconds, then gets a :class:`Conflict`).
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
            return await process()
        earlier = await self.reservations.take(conversation_id, message_id)
        if earlier is not None:
            return earlier
        failure: Exception | None = None
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.reservations.keep, conversation_id, message_id)
            try:
                # the answer is stored with everything else the message changed
                outcome = await process()
            except Exception as exc:  # carried out of the task group unwrapped
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            with anyio.CancelScope(shield=True):
                await self.reservations.release(conversation_id, message_id)
            raise failure
        return outcome

    async def _user_message(
        self,
        agent_id: str,
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
        record = await self.blocking(self.store.get_conversation, conversation_id)
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
        if contact:
            record.contact = {**record.contact, **{k: v for k, v in contact.items() if v}}
        record.last_user_message_at = max(record.last_user_message_at or 0.0, created.timestamp())
        conversation = self.model(record)
        message = Message(
            id=message_id or f"msg_{uuid.uuid4().hex}",
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
        outcome = {
            "conversationId": conversation.id,
            "messageId": message.id,
            "reply": reply or None,
            "events": await self.settle(results, collected),
        }
        key = (conversation.id, message_id, _encode_outcome(outcome)) if message_id else None
        await self.commit(
            MessageWrite(conversation=record, messages=stored, outcome=key), collected
        )
        return outcome

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
                        id=f"msg_{uuid.uuid4().hex}",
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

    # the Inbox (runtime/inbox.py) --------------------------------------------------------

    async def inbox_message(self, conversation_id: str, text: str) -> dict[str, Any]:
        """:meth:`Inbox.message <.inbox.Inbox.message>`."""
        return await self.inbox.message(conversation_id, text)

    async def inbox_view(self, conversation_id: str) -> dict[str, Any]:
        """:meth:`Inbox.view <.inbox.Inbox.view>`."""
        return await self.inbox.view(conversation_id)


def _chat_store_for(engine: DeliveryEngine) -> ChatStore:
    if not isinstance(engine.store, SQLStore):
        raise TypeError(
            "the chat pipeline keeps its data in the delivery store's SQL database: pass"
            " store=... for a delivery store of another kind"
        )
    return SQLChatStore(engine.store)
