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

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import msgspec

from ...exceptions import WebhookPluginError
from ...storage._sql import SQLStore
from ...storage.base import ClaimedDelivery, Lease, NewDelivery
from .schema import MIGRATIONS

__all__ = [
    "Answer",
    "ChatStore",
    "Conflict",
    "ConversationRecord",
    "IdempotencyMismatch",
    "MessageRecord",
    "MessageWrite",
    "SQLChatStore",
    "fingerprint",
]

#: seconds a message's commit waits for the database's write lock (another
#: process holding it) before it fails: its client is answered 503, not kept
#: waiting; a retry with the same messageId is safe
WRITE_WAIT = 5.0

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


def _blob(value: object) -> bytes:
    """A stored binary value; one stored in another shape (a text written by
    hand or by another program, a number) as its UTF-8, or nothing."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return value.encode("utf-8", "replace") if isinstance(value, str) else b""


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
    #: its last message's ``seq`` (as listed by ``list_conversations``)
    last_seq: int = 0
    #: a group conversation's name (its last group message's)
    group_name: str | None = None

    @property
    def cursor(self) -> str:
        """Where a listing that ended with this conversation goes on from."""
        return f"{self.last_seq}:{self.id}"


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
    #: its place in the database (0 until stored): the Inbox's paging cursor
    seq: int = 0


class Conflict(WebhookPluginError):
    """The request contradicts what is stored (another agent's conversation, say)."""

    code = "conflict"


class IdempotencyMismatch(Conflict):
    """A ``messageId`` already answered for another request (another agent,
    channel, text or group): never that request's answer."""

    code = "idempotency_mismatch"

    @classmethod
    def of(cls, message_id: str) -> IdempotencyMismatch:
        return cls(
            f"message {message_id!r} was already answered for another request (another"
            " agent, channel, text or group): a messageId identifies one message; send a"
            " new one"
        )


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What a user message with a ``messageId`` was answered: a retry of it gets
    ``body`` again, if it is the same request (``fingerprint``)."""

    conversation_id: str
    message_id: str
    #: what identifies the request (see :func:`fingerprint`)
    fingerprint: str
    body: bytes


def fingerprint(agent_id: str, channel: str, text: str, group_id: str | None) -> str:
    """What a ``messageId`` is bound to: the same key with another agent,
    channel, text or group is another request (:class:`IdempotencyMismatch`)."""
    return hashlib.sha256(_json_encode([agent_id, channel, text, group_id])).hexdigest()[:32]


class MessageWrite(msgspec.Struct, kw_only=True):
    """Everything one chat message changed, written in one transaction; what the
    database decided about it is set by :meth:`ChatStore.write_messages`."""

    conversation: ConversationRecord | None = None
    messages: list[MessageRecord] = msgspec.field(default_factory=list)
    deliveries: list[NewDelivery] = msgspec.field(default_factory=list)
    #: the answer of a user message with a ``messageId``, stored with it
    answer: Answer | None = None
    #: set when another request with the same ``messageId`` was answered first:
    #: its answer, which this one gets too (nothing of this write is stored)
    earlier: bytes | None = None
    #: set when the database refused the write (nothing of it is stored)
    refused: Conflict | None = None


class ChatStore(Protocol):
    """What the chat pipeline keeps: agents, conversations, messages, answers."""

    #: whether :meth:`get_conversation` and :meth:`get_answer` may be called on
    #: the event loop (lookups by key that never wait for a writer), rather
    #: than in a thread
    reads_inline: bool

    def open(self) -> None:
        """Create or migrate the chat tables (the delivery store is open already)."""
        ...

    def get_agent(self, agent_id: str) -> dict[str, object] | None: ...
    def put_agent(
        self, agent_id: str, *, name: str | None, organization_id: str | None, ai_enabled: bool
    ) -> None: ...
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...
    def set_ai_enabled(self, conversation_id: str, enabled: bool) -> ConversationRecord | None:
        """Switch AI for a conversation (``None``: no such conversation)."""
        ...

    def get_answer(self, conversation_id: str, message_id: str) -> tuple[bytes, str | None] | None:
        """The stored answer of a message and its request's fingerprint (``None``
        for an answer stored before fingerprints were kept)."""
        ...

    def purge_answers(self, *, before: float) -> int: ...
    def session_key(self, api_token: str | None) -> bytes:
        """The console's session signing key: the stored one if it was made under
        ``api_token``, else a new random one (stored, so that every server on
        the database shares it; a changed token ends every session)."""
        ...

    def write_messages(
        self, writes: Sequence[MessageWrite], lease: Lease | None = None
    ) -> list[ClaimedDelivery]:
        """Store what chat messages changed, each whole or not at all, in one
        transaction, and say on each write what the database decided; with
        ``lease``, return the deliveries leased to its owner as they were queued."""
        ...

    def list_messages(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[MessageRecord]:
        """The newest ``limit`` messages stored before the one at ``before`` (its
        ``seq``), oldest first."""
        ...

    def list_agents(self, *, after: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        """Agents by name, then id, from the one after agent ``after``."""
        ...

    def list_conversations(
        self,
        *,
        agent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
        ai_off: bool = False,
        blocked: bool = False,
    ) -> list[tuple[ConversationRecord, MessageRecord | None]]:
        """Conversations, the most recently active first, each with its last
        message, from the one after conversation ``before``; ``ai_off``: only
        those waiting for an operator; ``blocked``: only those whose last
        message the channel blocked."""
        ...

    def last_seq(self, conversation_id: str) -> int | None:
        """Where a conversation's messages are at (it grows with each one); None
        when there is no such conversation. A point read."""
        ...

    def agent_names(self, agent_ids: Sequence[str]) -> dict[str, str | None]:
        """The names of these agents (``None``: it has none)."""
        ...


_CONVERSATION_COLUMNS = (
    "id, agent_id, channel, ai_enabled, contact, created_at, last_user_message_at, group_name"
)


def _conversation(row: Sequence[Any], last_seq: int = 0) -> ConversationRecord:
    return ConversationRecord(
        last_seq=last_seq,
        id=row[0],
        agent_id=row[1],
        channel=row[2],
        ai_enabled=bool(row[3]),
        contact=_contact(row[4]),
        created_at=row[5],
        last_user_message_at=row[6],
        group_name=row[7] if isinstance(row[7], str) else None,
    )


def _key(w: MessageWrite) -> tuple[str, str]:
    assert w.answer is not None
    return w.answer.conversation_id, w.answer.message_id


class SQLChatStore:
    """The chat store on the delivery store's database (SQLite or PostgreSQL).

    :param db: the delivery store, opened first: its connections, transactions
        and SQL dialect serve these tables too.
    """

    #: rows one multi-row INSERT carries (5 parameters a row)
    _CHUNK = 500

    #: its writes lease what they queue to the dispatcher (see :class:`Lease`)
    leases_on_insert: ClassVar[bool] = True

    def __init__(self, db: SQLStore) -> None:
        self._db = db
        self.reads_inline = db.point_reads_inline

    def __repr__(self) -> str:
        return f"SQLChatStore({self._db!r})"

    def open(self) -> None:
        self._db.migrate("chat", MIGRATIONS[self._db.dialect])

    def write_messages(
        self, writes: Sequence[MessageWrite], lease: Lease | None = None
    ) -> list[ClaimedDelivery]:
        """Everything some chat messages changed, in one transaction: their
        conversations, messages, queued webhook deliveries and answers. A
        message is stored whole or not at all, and many share one commit.

        The database decides, in this transaction, what a message that raced
        another may do; each write says so afterwards (``earlier``,
        ``refused``):

        - a ``messageId`` is taken by the first commit of its key (``INSERT ...
          ON CONFLICT DO NOTHING``); a later one stores nothing and gets the
          first one's answer, or :class:`IdempotencyMismatch` if it is another
          request under the same key;
        - a conversation is created once, and a message for it is refused
          (:class:`Conflict`) unless its agent and channel are the stored ones;
          its contact is merged and its last user message moved, never its AI
          switch (an operator's, which a message in flight must not undo).

        Rows are locked in one order (answers by key, then conversations by
        id) whatever order the messages came in: two servers writing the same
        ones must not deadlock.
        """
        for w in writes:
            w.earlier = w.refused = None
        with self._db.transaction(wait=WRITE_WAIT) as conn:
            twins = self._take_keys(conn, writes)
            waiting = {id(w) for w, _ in twins}  # decided by their first, below
            self._check_conversations(
                conn, [w for w in writes if _live(w) and id(w) not in waiting]
            )
            for w, first in twins:  # a twin in this batch gets what its first got
                assert w.answer is not None and first.answer is not None
                if w.answer.fingerprint != first.answer.fingerprint:
                    w.refused = IdempotencyMismatch.of(w.answer.message_id)
                elif first.refused is not None:
                    w.refused = first.refused
                else:
                    w.earlier = first.earlier or first.answer.body
            live = [w for w in writes if _live(w)]
            messages = [m for w in live for m in w.messages]
            if messages:
                self._add_messages(conn, messages)
                # the Inbox's order (locked above, in the order of their ids)
                self._db.execute_many(
                    conn,
                    "UPDATE conversations SET last_seq ="
                    " (SELECT MAX(seq) FROM messages WHERE conversation_id = ?) WHERE id = ?",
                    [(c, c) for c in sorted({m.conversation_id for m in messages})],
                )
            return self._db.queue_deliveries(conn, [d for w in live for d in w.deliveries], lease)

    def _take_keys(
        self, conn: Any, writes: Sequence[MessageWrite]
    ) -> list[tuple[MessageWrite, MessageWrite]]:
        """Store the answers whose keys are free; mark the others. Returns the
        writes whose key a write before them in this batch took (and that one)."""
        keyed = sorted((w for w in writes if w.answer is not None), key=_key)
        if not keyed:
            return []
        first: dict[tuple[str, str], MessageWrite] = {}
        for w in keyed:
            first.setdefault(_key(w), w)
        takers = list(first.values())
        now = time.time()
        won: set[tuple[str, str]] = set()
        for start in range(0, len(takers), self._CHUNK):
            chunk = takers[start : start + self._CHUNK]
            params: list[Any] = []
            for w in chunk:
                a = w.answer
                assert a is not None
                params += (a.conversation_id, a.message_id, a.body, a.fingerprint, now)
            rows = self._db.execute(
                conn,
                "INSERT INTO message_outcomes (conversation_id, message_id, outcome,"
                " fingerprint, created_at) VALUES "
                + ",".join(["(?, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (conversation_id, message_id) DO NOTHING"
                " RETURNING conversation_id, message_id",
                params,
            ).fetchall()
            won.update((r[0], r[1]) for r in rows)
        for w in takers:
            if _key(w) not in won:
                self._lost(conn, w)
        return [(w, first[_key(w)]) for w in keyed if first[_key(w)] is not w]

    def _lost(self, conn: Any, w: MessageWrite) -> None:
        """Another request's commit took ``w``'s key first: its answer, if the
        request is the same."""
        a = w.answer
        assert a is not None
        row = self._db.execute(
            conn,
            "SELECT outcome, fingerprint FROM message_outcomes"
            " WHERE conversation_id = ? AND message_id = ?",
            (a.conversation_id, a.message_id),
        ).fetchone()
        stored = b"" if row is None else _blob(row[0])
        if not stored:  # purged meanwhile, or an older version's mark
            w.refused = Conflict(
                f"message {a.message_id!r} is being processed by an earlier request;"
                " retry later for its answer"
            )
        elif row[1] is not None and row[1] != a.fingerprint:
            w.refused = IdempotencyMismatch.of(a.message_id)
        else:
            w.earlier = stored

    def _check_conversations(self, conn: Any, writes: Sequence[MessageWrite]) -> None:
        """Create the conversations that do not exist; refuse the writes that
        contradict a stored one; merge the others' contacts (under the row's lock)."""
        by_id: dict[str, list[MessageWrite]] = {}
        for w in writes:
            if w.conversation is not None:
                by_id.setdefault(w.conversation.id, []).append(w)
        others = {m.conversation_id for w in writes for m in w.messages} - set(by_id)
        for conversation_id in sorted(by_id.keys() | others):
            if conversation_id in others:  # an operator's message: its row, locked
                self._locked(conn, conversation_id)
                continue
            group = by_id[conversation_id]
            created = self._insert_conversation(conn, group[0].conversation)  # type: ignore[arg-type]
            stored = group[0].conversation if created else self._locked(conn, conversation_id)
            assert stored is not None
            contact, last = stored.contact, stored.last_user_message_at
            group_name = stored.group_name
            for w in group:
                c = w.conversation
                assert c is not None
                if c.agent_id != stored.agent_id:
                    w.refused = Conflict(f"conversation {c.id!r} belongs to another agent")
                elif c.channel != stored.channel:
                    w.refused = Conflict(f"conversation {c.id!r} is on channel {stored.channel!r}")
                else:
                    contact = {**contact, **{k: v for k, v in c.contact.items() if v}}
                    if c.last_user_message_at is not None:
                        last = max(last or 0.0, c.last_user_message_at)
                    group_name = c.group_name or group_name
                    continue
                if w.answer is not None and w.earlier is None:  # its key is free again
                    self._db.execute(
                        conn,
                        "DELETE FROM message_outcomes WHERE conversation_id = ? AND message_id = ?",
                        _key(w),
                    )
            if (
                contact != stored.contact
                or last != stored.last_user_message_at
                or group_name != stored.group_name
            ):
                self._db.execute(
                    conn,
                    "UPDATE conversations SET contact = ?, last_user_message_at = ?,"
                    " group_name = ? WHERE id = ?",
                    (_json_encode(contact), last, group_name, conversation_id),
                )

    def _insert_conversation(self, conn: Any, c: ConversationRecord) -> bool:
        """Create ``c`` unless it exists; whether it was created."""
        return (
            self._db.execute(
                conn,
                f"INSERT INTO conversations ({_CONVERSATION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING RETURNING id",
                (
                    c.id,
                    c.agent_id,
                    c.channel,
                    int(c.ai_enabled),
                    _json_encode(c.contact),
                    c.created_at,
                    c.last_user_message_at,
                    c.group_name,
                ),
            ).fetchone()
            is not None
        )

    def _locked(self, conn: Any, conversation_id: str) -> ConversationRecord | None:
        row = self._db.execute(
            conn,
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?" + self._db.lock_row,
            (conversation_id,),
        ).fetchone()
        return None if row is None else _conversation(row)

    def session_key(self, api_token: str | None) -> bytes:
        # The database decides: a key is created once (DO NOTHING) and replaced
        # only over the check it was read with (compare-and-set), so servers
        # starting together end up with the one key that was stored.
        with self._db.transaction(wait=WRITE_WAIT) as conn:
            row = self._db.execute(
                conn,
                "SELECT signing_key, salt, token_check FROM console_keys WHERE id = 1"
                + self._db.lock_row,
            ).fetchone()
            # a row in another shape (written by hand, another program) is no key
            if (
                row is not None
                and len(_blob(row[0])) >= 32
                and hmac.compare_digest(_token_check(api_token, _blob(row[1])), _blob(row[2]))
            ):
                return _blob(row[0])
            key, salt = secrets.token_bytes(32), secrets.token_bytes(16)
            made = (key, salt, _token_check(api_token, salt))
            if row is None:
                self._db.execute(
                    conn,
                    "INSERT INTO console_keys (id, signing_key, salt, token_check)"
                    " VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    made,
                )
            else:
                self._db.execute(
                    conn,
                    "UPDATE console_keys SET signing_key = ?, salt = ?, token_check = ?"
                    " WHERE id = 1 AND token_check = ?",
                    (*made, row[2]),
                )
            stored = self._db.execute(
                conn, "SELECT signing_key FROM console_keys WHERE id = 1"
            ).fetchone()
        return _blob(stored[0]) or key

    def get_answer(self, conversation_id: str, message_id: str) -> tuple[bytes, str | None] | None:
        row = self._db.point_read(
            lambda c: self._db.execute(
                c,
                "SELECT outcome, fingerprint FROM message_outcomes"
                " WHERE conversation_id = ? AND message_id = ?",
                (conversation_id, message_id),
            ).fetchone()
        )
        if row is None:
            return None
        return _blob(row[0]), row[1] if isinstance(row[1], str) else None

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
        with self._db.transaction(wait=WRITE_WAIT) as conn:
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
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
        )
        return None if row is None else _conversation(row)

    def set_ai_enabled(self, conversation_id: str, enabled: bool) -> ConversationRecord | None:
        with self._db.transaction(wait=WRITE_WAIT) as conn:
            row = self._db.execute(
                conn,
                f"UPDATE conversations SET ai_enabled = ? WHERE id = ? RETURNING"
                f" {_CONVERSATION_COLUMNS}",
                (int(enabled), conversation_id),
            ).fetchone()
        return None if row is None else _conversation(row)

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

    def list_messages(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[MessageRecord]:
        rows = self._db.read(
            lambda c: self._db.execute(
                c,
                "SELECT id, conversation_id, author, text, created_at, status, attachments, seq"
                " FROM messages WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (conversation_id, _MAX_SEQ if before is None else before, limit),
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
                seq=r[7],
            )
            for r in reversed(rows)
        ]

    def list_agents(self, *, after: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        """Agents (as :meth:`get_agent` gives one), by name, then id, from the one
        after agent ``after`` (keyset paging: no page reads the ones before it).
        Read-only."""
        where = ""
        args: list[object] = [limit]
        if after is not None:
            where = (
                " WHERE (COALESCE(name, id) > (SELECT COALESCE(name, id) FROM agents WHERE id = ?)"
                " OR (COALESCE(name, id) = (SELECT COALESCE(name, id) FROM agents WHERE id = ?)"
                " AND id > ?))"
            )
            args = [after, after, after, limit]
        rows = self._db.read(
            lambda c: self._db.execute(
                c,
                "SELECT id, name, organization_id, ai_enabled FROM agents"
                f"{where} ORDER BY COALESCE(name, id), id LIMIT ?",
                args,
            ).fetchall()
        )
        return [
            {"id": r[0], "name": r[1], "organization_id": r[2], "ai_enabled": bool(r[3])}
            for r in rows
        ]

    def last_seq(self, conversation_id: str) -> int | None:
        row = self._db.point_read(
            lambda c: self._db.execute(
                c, "SELECT last_seq FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        )
        return None if row is None else int(row[0] or 0)

    def list_conversations(
        self,
        *,
        agent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
        ai_off: bool = False,
        blocked: bool = False,
    ) -> list[tuple[ConversationRecord, MessageRecord | None]]:
        """Conversations, the most recently active first (by their last stored
        message), each with that message (its text cut to 200 characters), after
        the cursor ``before`` (:attr:`ConversationRecord.cursor` of the last one a page
        listed; keyset paging by the index on ``last_seq``: no page reads more
        than its rows, and one that moved meanwhile is not listed twice).
        Read-only."""
        where: list[str] = []
        args: list[object] = []
        if agent_id is not None:
            where.append("c.agent_id = ?")
            args.append(agent_id)
        if ai_off:
            where.append("c.ai_enabled = 0")
        if blocked:
            where.append("m.status = 'blocked'")
        if before is not None:  # the cursor: "<last_seq>:<id>" of the last one listed
            text, _, after_id = before.partition(":")
            seq = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0
            where.append("(c.last_seq < ? OR (c.last_seq = ? AND c.id < ?))")
            args += [seq, seq, after_id]
        sql = (
            "SELECT c.id, c.agent_id, c.channel, c.ai_enabled, c.contact, c.created_at,"
            " c.last_user_message_at, c.group_name, m.id, m.author, SUBSTR(m.text, 1, 200),"
            " m.created_at, m.status, c.last_seq FROM conversations c LEFT JOIN messages m ON m.seq = c.last_seq"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.last_seq DESC, c.id DESC LIMIT ?"
        )
        args.append(limit)
        rows = self._db.read(lambda c: self._db.execute(c, sql, args).fetchall())
        return [
            (
                _conversation(r, last_seq=r[13]),
                None
                if r[8] is None
                else MessageRecord(
                    id=r[8],
                    conversation_id=r[0],
                    author=r[9],
                    text=r[10],
                    created_at=r[11],
                    status=r[12],
                ),
            )
            for r in rows
        ]

    def agent_names(self, agent_ids: Sequence[str]) -> dict[str, str | None]:
        ids = sorted(set(agent_ids))[:1000]
        if not ids:
            return {}
        rows = self._db.read(
            lambda c: self._db.execute(
                c, f"SELECT id, name FROM agents WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
        )
        return {r[0]: r[1] for r in rows}

    def purge_answers(self, *, before: float) -> int:
        """Forget the answers of messages stored before ``before`` (a retry that
        late is a new message)."""
        with self._db.transaction(wait=WRITE_WAIT) as conn:
            removed: int = self._db.execute(
                conn, "DELETE FROM message_outcomes WHERE created_at < ?", (before,)
            ).rowcount
        return removed


#: above any message's ``seq`` (a signed 64-bit integer)
_MAX_SEQ = 2**63 - 1


def _token_check(api_token: str | None, salt: bytes) -> bytes:
    """A slow KDF of the token (scrypt, ~50 ms): the stored check tells nothing
    about the token that a guesser could test quickly."""
    return hashlib.scrypt((api_token or "").encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _live(w: MessageWrite) -> bool:
    return w.earlier is None and w.refused is None
