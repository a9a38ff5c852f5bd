"""The chat store's tables, per SQL dialect, as migrations (the chat store
keeps its own version in ``schema_versions``, apart from the delivery store's)."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

#: version 2: a stored answer keeps the fingerprint of its request (a messageId
#: sent again with another request is refused, not answered); the marks of
#: the reservations that earlier versions kept while a message was processed
#: (an empty answer) are dropped: the commit decides a messageId now
_ANSWERS_V2 = """
    ALTER TABLE message_outcomes ADD COLUMN fingerprint TEXT;
    DELETE FROM message_outcomes WHERE outcome = '';
"""

#: version 3: the console's session signing key, random, shared by every serve
#: on the database, with a slow-KDF check of the API token it was made under
#: (a server with another token makes a new key: every session ends)
_CONSOLE_KEY_V3 = """
    CREATE TABLE IF NOT EXISTS console_keys (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        signing_key BLOB NOT NULL,
        salt BLOB NOT NULL,
        token_check BLOB NOT NULL
    );
"""

#: version 4: a conversation's last message (``last_seq``), kept by every write
#: of messages, so that the Inbox lists conversations a page at a time by an
#: index rather than by sorting them all
_RECENT_V4 = """
    ALTER TABLE conversations ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;
    UPDATE conversations SET last_seq = COALESCE(
        (SELECT MAX(seq) FROM messages WHERE conversation_id = conversations.id), 0);
    CREATE INDEX IF NOT EXISTS conversations_recent ON conversations (last_seq, id);
    CREATE INDEX IF NOT EXISTS conversations_agent_recent
        ON conversations (agent_id, last_seq, id);
"""

#: version 5: a group conversation's name, as its last message gave it
_GROUP_V5 = """
    ALTER TABLE conversations ADD COLUMN group_name TEXT;
"""

#: the chat tables, per SQL dialect (IF NOT EXISTS: databases made before the
#: stores were split already hold them)
MIGRATIONS: dict[str, list[str]] = {
    "sqlite": [
        """
    CREATE TABLE IF NOT EXISTS agents (
        id TEXT PRIMARY KEY,
        name TEXT,
        organization_id TEXT,
        ai_enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS conversations (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        ai_enabled INTEGER NOT NULL,
        contact BLOB NOT NULL,
        created_at REAL NOT NULL,
        last_user_message_at REAL
    );
    CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        attachments BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation_id, seq);
    CREATE TABLE IF NOT EXISTS message_outcomes (
        conversation_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        outcome BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (conversation_id, message_id)
    );
    CREATE INDEX IF NOT EXISTS message_outcomes_created ON message_outcomes (created_at);
    """,
        _ANSWERS_V2.replace("''", "X''"),
        _CONSOLE_KEY_V3,
        _RECENT_V4,
        _GROUP_V5,
    ],
    "postgresql": [
        """
    CREATE TABLE IF NOT EXISTS agents (
        id TEXT PRIMARY KEY,
        name TEXT,
        organization_id TEXT,
        ai_enabled INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS conversations (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        ai_enabled INTEGER NOT NULL,
        contact BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_user_message_at DOUBLE PRECISION
    );
    CREATE TABLE IF NOT EXISTS messages (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        attachments BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation_id, seq);
    CREATE TABLE IF NOT EXISTS message_outcomes (
        conversation_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        outcome BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (conversation_id, message_id)
    );
    CREATE INDEX IF NOT EXISTS message_outcomes_created ON message_outcomes (created_at);
    """,
        _ANSWERS_V2.replace("''", "''::bytea"),
        _CONSOLE_KEY_V3.replace("BLOB", "BYTEA"),
        _RECENT_V4,
        _GROUP_V5,
    ],
}
