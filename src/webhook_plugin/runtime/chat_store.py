"""The reference runtime's chat store: agents, conversations, messages and the
answers stored for retried messages (by ``messageId``).

The runtime owns these tables and their migrations; they live in the same
database as the delivery store's, and :class:`SQLChatStore` writes through
the delivery store's SQL seam (:class:`~webhook_plugin.storage._sql.SQLStore`),
so that everything one chat message changes, the events its hooks queued
included, commits in one transaction (:meth:`ChatStore.write_messages`).
A host app that embeds only the plugin never creates these tables.

Like the delivery store's, the methods are synchronous and may block: the
pipeline calls them in worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from ..storage._sql import SQLStore
from ..storage.base import NewDelivery
from ._chat_schema import MIGRATIONS

__all__ = ["ChatStore", "ConversationRecord", "MessageRecord", "MessageWrite", "SQLChatStore"]

_json_encode = msgspec.json.Encoder().encode
_contact_decoder = msgspec.json.Decoder(dict[str, str])
_attachments_decoder = msgspec.json.Decoder(list[dict[str, Any]])


def _contact(raw: bytes) -> dict[str, str]:
    """A stored contact; one written in another shape (another version, a hand
    edit) reads as unknown rather than failing its conversation's every page."""
    try:
        return _contact_decoder.decode(raw)
    except (msgspec.DecodeError, TypeError):
        return {}


def _attachments(raw: bytes) -> list[dict[str, Any]]:
    try:
        return _attachments_decoder.decode(raw)
    except (msgspec.DecodeError, TypeError):
        return []


class ConversationRecord(msgspec.Struct, kw_only=True):
    id: str
    agent_id: str
    channel: str
    ai_enabled: bool
    contact: dict[str, str]
    created_at: float
    last_user_message_at: float | None = None


class MessageRecord(msgspec.Struct, kw_only=True):
    id: str
    conversation_id: str
    #: ``user``, ``agent`` (the AI) or ``operator`` (a human from the Inbox)
    author: str
    text: str
    created_at: float
    #: ``received``, ``sent``, ``blocked`` or ``noted``
    status: str
    attachments: list[dict[str, object]] = msgspec.field(default_factory=list)


class MessageWrite(msgspec.Struct, kw_only=True):
    """Everything one chat message changed, written in one transaction."""

    conversation: ConversationRecord | None = None
    messages: list[MessageRecord] = msgspec.field(default_factory=list)
    deliveries: list[NewDelivery] = msgspec.field(default_factory=list)
    #: ``(conversation_id, message_id, answer)``: what a retry of the message gets
    outcome: tuple[str, str, bytes] | None = None


class ChatStore(Protocol):
    """What the chat pipeline keeps: agents, conversations, messages, answers."""

    #: whether :meth:`get_conversation` may be called on the event loop (it is
    #: a lookup by key that never waits for a writer), rather than in a thread
    reads_inline: bool

    def open(self) -> None:
        """Create or migrate the chat tables (the delivery store is open already)."""
        ...

    def get_agent(self, agent_id: str) -> dict[str, object] | None: ...
    def put_agent(
        self, agent_id: str, *, name: str | None, organization_id: str | None, ai_enabled: bool
    ) -> None: ...
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...
    def put_conversation(self, conversation: ConversationRecord) -> None: ...
    def add_messages(self, messages: Sequence[MessageRecord]) -> None: ...
    def get_outcome(self, conversation_id: str, message_id: str) -> bytes | None: ...
    def reserve_outcome(
        self, conversation_id: str, message_id: str, *, now: float, stale_before: float
    ) -> bytes | None:
        """Take a user message's ``messageId`` for processing: ``None`` when it is
        ours now, ``b""`` while another request processes it, else its outcome."""
        ...

    def purge_outcomes(self, *, before: float) -> int: ...
    def release_outcome(self, conversation_id: str, message_id: str) -> None:
        """Give up a reservation whose processing failed (a retry may take it)."""
        ...

    def write_messages(self, writes: Sequence[MessageWrite]) -> None:
        """Store what chat messages changed, each whole or not at all, in one transaction."""
        ...

    def touch_outcome(self, conversation_id: str, message_id: str, *, now: float) -> None: ...
    def put_outcome(self, conversation_id: str, message_id: str, outcome: bytes) -> None: ...
    def list_messages(self, conversation_id: str) -> list[MessageRecord]: ...
    def list_agents(self, *, limit: int = 1000) -> list[dict[str, object]]: ...
    def list_conversations(
        self, *, agent_id: str | None = None, limit: int = 100
    ) -> list[tuple[ConversationRecord, MessageRecord | None]]:
        """Conversations, the most recently active first, each with its last message."""
        ...


class SQLChatStore:
    """The chat store on the delivery store's database (SQLite or PostgreSQL).

    :param db: the delivery store, opened first: its connections, transactions
        and SQL dialect serve these tables too.
    """

    def __init__(self, db: SQLStore) -> None:
        self._db = db
        self.reads_inline = db.point_reads_inline

    def __repr__(self) -> str:
        return f"SQLChatStore({self._db!r})"

    def open(self) -> None:
        self._db.migrate("chat", MIGRATIONS[self._db.dialect])

    def write_messages(self, writes: Sequence[MessageWrite]) -> None:
        """Everything some chat messages changed, in one transaction: their
        conversations, messages, queued webhook deliveries and stored answers.
        A message is stored whole or not at all, and many share one commit."""
        # Rows are locked in one order (by id) whatever order the messages came
        # in: two servers writing the same conversations must not deadlock.
        # The last record of a conversation is its latest, as written in turn.
        conversations = {w.conversation.id: w.conversation for w in writes if w.conversation}
        with self._db.transaction() as conn:
            for conversation_id in sorted(conversations):
                self._put_conversation(conn, conversations[conversation_id])
            messages = [m for w in writes for m in w.messages]
            if messages:
                self._add_messages(conn, messages)
            self._db.queue_deliveries(conn, [d for w in writes for d in w.deliveries])
            outcomes = sorted(w.outcome for w in writes if w.outcome is not None)
            if outcomes:
                self._put_outcomes(conn, outcomes)

    def get_outcome(self, conversation_id: str, message_id: str) -> bytes | None:
        row = self._db.read(
            lambda c: self._db.execute(
                c,
                "SELECT outcome FROM message_outcomes WHERE conversation_id = ? AND message_id = ?",
                (conversation_id, message_id),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    def reserve_outcome(
        self, conversation_id: str, message_id: str, *, now: float, stale_before: float
    ) -> bytes | None:
        # An empty outcome marks a message being processed. The reservation is
        # ours when the row is new, or when it is a mark left older than
        # stale_before (its request died); otherwise the row says what to answer.
        with self._db.transaction() as conn:
            mine = self._db.execute(
                conn,
                "INSERT INTO message_outcomes (conversation_id, message_id, outcome, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (conversation_id, message_id) DO UPDATE"
                " SET created_at = excluded.created_at"
                " WHERE message_outcomes.outcome = ? AND message_outcomes.created_at < ?"
                " RETURNING created_at",
                (conversation_id, message_id, b"", now, b"", stale_before),
            ).fetchone()
            if mine is not None:
                return None
            row = self._db.execute(
                conn,
                "SELECT outcome FROM message_outcomes WHERE conversation_id = ? AND message_id = ?",
                (conversation_id, message_id),
            ).fetchone()
        return b"" if row is None else bytes(row[0])

    def release_outcome(self, conversation_id: str, message_id: str) -> None:
        with self._db.transaction() as conn:
            self._db.execute(
                conn,
                "DELETE FROM message_outcomes"
                " WHERE conversation_id = ? AND message_id = ? AND outcome = ?",
                (conversation_id, message_id, b""),
            )

    def put_outcome(self, conversation_id: str, message_id: str, outcome: bytes) -> None:
        with self._db.transaction() as conn:
            self._put_outcomes(conn, [(conversation_id, message_id, outcome)])

    def _put_outcomes(self, conn: Any, outcomes: Sequence[tuple[str, str, bytes]]) -> None:
        now = time.time()
        self._db.execute_many(
            conn,
            "INSERT INTO message_outcomes (conversation_id, message_id, outcome, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (conversation_id, message_id)"
            " DO UPDATE SET outcome = excluded.outcome",
            [(c, m, o, now) for c, m, o in outcomes],
        )

    def touch_outcome(self, conversation_id: str, message_id: str, *, now: float) -> None:
        """Keep a reservation alive (its request is still working on the message)."""
        with self._db.transaction() as conn:
            self._db.execute(
                conn,
                "UPDATE message_outcomes SET created_at = ?"
                " WHERE conversation_id = ? AND message_id = ? AND outcome = ?",
                (now, conversation_id, message_id, b""),
            )

    def get_agent(self, agent_id: str) -> dict[str, object] | None:
        row = self._db.read(
            lambda c: self._db.execute(
                c,
                "SELECT id, name, organization_id, ai_enabled FROM agents WHERE id = ?",
                (agent_id,),
            ).fetchone()
        )
        if row is None:
            return None
        return {"id": row[0], "name": row[1], "organization_id": row[2], "ai_enabled": bool(row[3])}

    def put_agent(
        self, agent_id: str, *, name: str | None, organization_id: str | None, ai_enabled: bool
    ) -> None:
        with self._db.transaction() as conn:
            self._db.execute(
                conn,
                "INSERT INTO agents (id, name, organization_id, ai_enabled, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
                " organization_id = excluded.organization_id, ai_enabled = excluded.ai_enabled",
                (agent_id, name, organization_id, int(ai_enabled), time.time()),
            )

    def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = self._db.point_read(
            lambda c: self._db.execute(
                c,
                "SELECT id, agent_id, channel, ai_enabled, contact, created_at,"
                " last_user_message_at FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
        )
        if row is None:
            return None
        return ConversationRecord(
            id=row[0],
            agent_id=row[1],
            channel=row[2],
            ai_enabled=bool(row[3]),
            contact=_contact(row[4]),
            created_at=row[5],
            last_user_message_at=row[6],
        )

    def put_conversation(self, conversation: ConversationRecord) -> None:
        with self._db.transaction() as conn:
            self._put_conversation(conn, conversation)

    def _put_conversation(self, conn: Any, conversation: ConversationRecord) -> None:
        c = conversation
        self._db.execute(
            conn,
            "INSERT INTO conversations (id, agent_id, channel, ai_enabled, contact,"
            " created_at, last_user_message_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET ai_enabled = excluded.ai_enabled,"
            " contact = excluded.contact, last_user_message_at = excluded.last_user_message_at",
            (
                c.id,
                c.agent_id,
                c.channel,
                int(c.ai_enabled),
                _json_encode(c.contact),
                c.created_at,
                c.last_user_message_at,
            ),
        )

    def add_messages(self, messages: Sequence[MessageRecord]) -> None:
        with self._db.transaction() as conn:
            self._add_messages(conn, messages)

    def _add_messages(self, conn: Any, messages: Sequence[MessageRecord]) -> None:
        self._db.execute_many(
            conn,
            "INSERT INTO messages (id, conversation_id, author, text, created_at, status,"
            " attachments) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    m.id,
                    m.conversation_id,
                    m.author,
                    m.text,
                    m.created_at,
                    m.status,
                    _json_encode(m.attachments),
                )
                for m in messages
            ],
        )

    def list_messages(self, conversation_id: str) -> list[MessageRecord]:
        rows = self._db.read(
            lambda c: self._db.execute(
                c,
                "SELECT id, conversation_id, author, text, created_at, status, attachments"
                " FROM messages WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            ).fetchall()
        )
        return [
            MessageRecord(
                id=r[0],
                conversation_id=r[1],
                author=r[2],
                text=r[3],
                created_at=r[4],
                status=r[5],
                attachments=_attachments(r[6]),
            )
            for r in rows
        ]

    def list_agents(self, *, limit: int = 1000) -> list[dict[str, object]]:
        """Every agent (as :meth:`get_agent` gives one), by name, then id. Read-only."""
        rows = self._db.read(
            lambda c: self._db.execute(
                c,
                "SELECT id, name, organization_id, ai_enabled FROM agents"
                " ORDER BY COALESCE(name, id), id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            {"id": r[0], "name": r[1], "organization_id": r[2], "ai_enabled": bool(r[3])}
            for r in rows
        ]

    def list_conversations(
        self, *, agent_id: str | None = None, limit: int = 100
    ) -> list[tuple[ConversationRecord, MessageRecord | None]]:
        """Conversations, the most recently active first (by their last stored
        message), each with that message (its text cut to 200 characters). Read-only."""
        where = ""
        args: list[object] = []
        if agent_id is not None:
            where = " WHERE c.agent_id = ?"
            args.append(agent_id)
        sql = (
            "SELECT c.id, c.agent_id, c.channel, c.ai_enabled, c.contact, c.created_at,"
            " c.last_user_message_at, m.id, m.author, SUBSTR(m.text, 1, 200), m.created_at,"
            " m.status FROM conversations c LEFT JOIN messages m ON m.seq ="
            " (SELECT MAX(seq) FROM messages WHERE conversation_id = c.id)"
            f"{where} ORDER BY COALESCE(m.seq, 0) DESC, c.created_at DESC LIMIT ?"
        )
        args.append(limit)
        rows = self._db.read(lambda c: self._db.execute(c, sql, args).fetchall())
        return [
            (
                ConversationRecord(
                    id=r[0],
                    agent_id=r[1],
                    channel=r[2],
                    ai_enabled=bool(r[3]),
                    contact=_contact(r[4]),
                    created_at=r[5],
                    last_user_message_at=r[6],
                ),
                None
                if r[7] is None
                else MessageRecord(
                    id=r[7],
                    conversation_id=r[0],
                    author=r[8],
                    text=r[9],
                    created_at=r[10],
                    status=r[11],
                ),
            )
            for r in rows
        ]

    def purge_outcomes(self, *, before: float) -> int:
        """Forget the answers of messages stored before ``before`` (a retry that
        late is a new message)."""
        with self._db.transaction() as conn:
            removed: int = self._db.execute(
                conn, "DELETE FROM message_outcomes WHERE created_at < ?", (before,)
            ).rowcount
        return removed
