"""The embedded backend: one SQLite file in WAL mode, stdlib ``sqlite3``.

One write connection behind a lock (SQLite has one writer anyway) and one
read connection, so the delivery log can be read while a batch commits.
``synchronous=FULL``: an acknowledged event survives a crash of the process
and of the machine. Callers batch their writes (group commit), which is what
makes the ``fsync`` affordable.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..events import WebhookEventType
from ..exceptions import NotFound, StorageError
from ..settings import WebhookSettings
from .base import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    ConversationRecord,
    DeliveryRecord,
    DeliveryStatus,
    MessageRecord,
    NewDelivery,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        webhook_id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        round_start INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_until REAL NOT NULL DEFAULT 0,
        lease_owner TEXT,
        last_status_code INTEGER,
        last_error TEXT,
        updated_at REAL
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
    CREATE INDEX deliveries_agent ON deliveries (agent_id, status, id);
    CREATE INDEX deliveries_status ON deliveries (status, id);
    CREATE TABLE attempts (
        delivery_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        status_code INTEGER,
        error TEXT,
        response_excerpt TEXT,
        PRIMARY KEY (delivery_id, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE webhook_settings (
        agent_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        disabled_reason TEXT,
        failing_since REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        name TEXT,
        organization_id TEXT,
        ai_enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        ai_enabled INTEGER NOT NULL,
        contact BLOB NOT NULL,
        created_at REAL NOT NULL,
        last_user_message_at REAL
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        attachments BLOB NOT NULL
    );
    CREATE INDEX messages_conversation ON messages (conversation_id, seq);
    """,
]

_json_encode = msgspec.json.Encoder().encode
_settings_decoder = msgspec.json.Decoder(WebhookSettings)
_contact_decoder = msgspec.json.Decoder(dict[str, str])
_attachments_decoder = msgspec.json.Decoder(list[dict[str, Any]])

_DELIVERY_COLUMNS = (
    "id, webhook_id, agent_id, event_type, status, attempts, last_status_code, "
    "last_error, created_at, next_attempt_at, body"
)


def _delivery(row: sqlite3.Row | tuple[Any, ...]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row[0],
        webhook_id=row[1],
        agent_id=row[2],
        event_type=WebhookEventType(row[3]),
        status=row[4],
        attempts=row[5],
        last_status_code=row[6],
        last_error=row[7],
        created_at=row[8],
        next_attempt_at=row[9] if row[4] == "pending" else None,
        body=bytes(row[10]),
    )


class SQLiteStore:
    """A :class:`~webhook_plugin.storage.base.Store` on one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # lifecycle -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def open(self) -> None:
        if self._write is not None:
            return
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write = self._connect()
            self._migrate(self._write)
            self._read = self._connect()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {str(self.path)!r}: {exc}") from exc

    def close(self) -> None:
        for conn in (self._read, self._write):
            if conn is not None:
                conn.close()
        self._read = self._write = None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised with every other writer."""
        if self._write is None:
            raise StorageError(f"{self!r} is not open")
        with self._write_lock:
            conn = self._write
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"SQLite write failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._read is None:
            raise StorageError(f"{self!r} is not open")
        with self._read_lock:
            try:
                return fn(self._read)
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite read failed: {exc}") from exc

    # outbox and delivery log ---------------------------------------------------------

    def insert_deliveries(self, items: Sequence[NewDelivery]) -> None:
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
                " next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.webhook_id,
                        d.agent_id,
                        d.event_type.value,
                        d.body,
                        d.created_at,
                        d.next_attempt_at,
                        d.created_at,
                    )
                    for d in items
                ],
            )

    def claim_due(
        self, *, now: float, limit: int, lease_until: float, owner: str
    ) -> list[ClaimedDelivery]:
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE deliveries SET lease_until = ?, lease_owner = ? WHERE id IN ("
                " SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
                " AND lease_until <= ? ORDER BY next_attempt_at LIMIT ?)"
                " RETURNING id, webhook_id, agent_id, event_type, body, created_at, attempts,"
                " round_start",
                (lease_until, owner, now, now, limit),
            ).fetchall()
            endpoints = self._endpoints(conn, {row[2] for row in rows})
        claimed = []
        for row in rows:
            settings, failing_since = endpoints.get(row[2], (None, None))
            claimed.append(
                ClaimedDelivery(
                    id=row[0],
                    webhook_id=row[1],
                    agent_id=row[2],
                    event_type=WebhookEventType(row[3]),
                    body=bytes(row[4]),
                    created_at=row[5],
                    attempts=row[6],
                    round_attempts=row[6] - row[7],
                    lease_until=lease_until,
                    settings=settings,
                    failing_since=failing_since,
                )
            )
        return claimed

    def _endpoints(
        self, conn: sqlite3.Connection, agent_ids: set[str]
    ) -> dict[str, tuple[WebhookSettings, float | None]]:
        if not agent_ids:
            return {}
        marks = ",".join("?" * len(agent_ids))
        rows = conn.execute(
            "SELECT agent_id, data, disabled, disabled_reason, failing_since"
            f" FROM webhook_settings WHERE agent_id IN ({marks})",
            tuple(agent_ids),
        ).fetchall()
        return {row[0]: (self._settings(row[1:4]), row[4]) for row in rows}

    @staticmethod
    def _settings(row: Sequence[Any]) -> WebhookSettings:
        settings = _settings_decoder.decode(row[0])
        return msgspec.structs.replace(settings, disabled=bool(row[1]), disabled_reason=row[2])

    def record_attempts(self, results: Sequence[AttemptResult]) -> None:
        with self._tx() as conn:
            for r in results:
                error = r.error
                (attempts,) = conn.execute(
                    "UPDATE deliveries SET attempts = attempts + ?, status = ?,"
                    " next_attempt_at = ?, lease_until = 0, lease_owner = NULL,"
                    " last_status_code = COALESCE(?, last_status_code), last_error = ?,"
                    " updated_at = ? WHERE id = ? RETURNING attempts",
                    (
                        1 if r.sent else 0,
                        r.status,
                        r.next_attempt_at,
                        r.status_code,
                        error,
                        r.started_at,
                        r.delivery_id,
                    ),
                ).fetchone()
                if r.sent:
                    conn.execute(
                        "INSERT OR REPLACE INTO attempts (delivery_id, attempt, started_at,"
                        " duration_ms, status_code, error, response_excerpt)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            r.delivery_id,
                            attempts,
                            r.started_at,
                            r.duration_ms,
                            r.status_code,
                            r.error,
                            r.response_excerpt,
                        ),
                    )
                    if r.status == "succeeded":
                        conn.execute(
                            "UPDATE webhook_settings SET failing_since = NULL"
                            " WHERE agent_id = ? AND failing_since IS NOT NULL",
                            (r.agent_id,),
                        )
                    else:
                        conn.execute(
                            "UPDATE webhook_settings SET failing_since = ?"
                            " WHERE agent_id = ? AND failing_since IS NULL",
                            (r.started_at, r.agent_id),
                        )
                if r.disable_reason:
                    conn.execute(
                        "UPDATE webhook_settings SET disabled = 1, disabled_reason = ?"
                        " WHERE agent_id = ?",
                        (r.disable_reason, r.agent_id),
                    )

    def release(self, delivery_ids: Sequence[int], owner: str) -> None:
        if not delivery_ids:
            return
        with self._tx() as conn:
            conn.executemany(
                "UPDATE deliveries SET lease_until = 0, lease_owner = NULL"
                " WHERE id = ? AND lease_owner = ? AND status = 'pending'",
                [(i, owner) for i in delivery_ids],
            )

    def next_due_at(self) -> float | None:
        def q(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(MAX(next_attempt_at, lease_until)) FROM deliveries"
                " WHERE status = 'pending'"
            ).fetchone()
            return row[0]

        return self._query(q)

    def list_deliveries(
        self,
        *,
        agent_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[DeliveryRecord]:
        where, args = [], []
        if agent_id is not None:
            where.append("agent_id = ?")
            args.append(agent_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return self._query(lambda c: [_delivery(r) for r in c.execute(sql, args)])

    def get_delivery(self, delivery_id: int) -> DeliveryRecord:
        row = self._query(
            lambda c: c.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return _delivery(row)

    def list_attempts(self, delivery_id: int) -> list[AttemptRecord]:
        rows = self._query(
            lambda c: c.execute(
                "SELECT attempt, started_at, duration_ms, status_code, error, response_excerpt"
                " FROM attempts WHERE delivery_id = ? ORDER BY attempt",
                (delivery_id,),
            ).fetchall()
        )
        return [
            AttemptRecord(
                attempt=r[0],
                started_at=r[1],
                duration_ms=r[2],
                status_code=r[3],
                error=r[4],
                response_excerpt=r[5],
            )
            for r in rows
        ]

    def redeliver(self, delivery_id: int, *, now: float) -> DeliveryRecord:
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?,"
                " round_start = attempts, updated_at = ? WHERE id = ?"
                f" RETURNING {_DELIVERY_COLUMNS}",
                (now, now, delivery_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return _delivery(row)

    def redeliver_failed(self, *, agent_id: str | None, since: float, now: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?,"
            " round_start = attempts, updated_at = ? WHERE status = 'failed' AND created_at >= ?"
        )
        args: list[Any] = [now, now, since]
        if agent_id is not None:
            sql += " AND agent_id = ?"
            args.append(agent_id)
        with self._tx() as conn:
            return conn.execute(sql, args).rowcount

    def count_deliveries(self) -> dict[str, int]:
        rows = self._query(
            lambda c: c.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
        )
        counts = {"pending": 0, "succeeded": 0, "failed": 0}
        counts.update(dict(rows))
        return counts

    # settings --------------------------------------------------------------------------

    def get_settings(self, agent_id: str) -> WebhookSettings | None:
        row = self._query(
            lambda c: c.execute(
                "SELECT data, disabled, disabled_reason FROM webhook_settings WHERE agent_id = ?",
                (agent_id,),
            ).fetchone()
        )
        return None if row is None else self._settings(row)

    def put_settings(self, agent_id: str, settings: WebhookSettings) -> None:
        data = _json_encode(
            msgspec.structs.replace(settings, disabled=False, disabled_reason=None)
        )
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO webhook_settings (agent_id, data, disabled, disabled_reason,"
                " failing_since, updated_at) VALUES (?, ?, ?, ?, NULL, ?)"
                " ON CONFLICT (agent_id) DO UPDATE SET data = excluded.data,"
                " disabled = excluded.disabled, disabled_reason = excluded.disabled_reason,"
                " failing_since = NULL, updated_at = excluded.updated_at",
                (agent_id, data, int(settings.disabled), settings.disabled_reason, time.time()),
            )

    def all_settings(self) -> dict[str, WebhookSettings]:
        rows = self._query(
            lambda c: c.execute(
                "SELECT agent_id, data, disabled, disabled_reason FROM webhook_settings"
            ).fetchall()
        )
        return {row[0]: self._settings(row[1:]) for row in rows}

    # the reference runtime's data ------------------------------------------------------------

    def get_agent(self, agent_id: str) -> dict[str, object] | None:
        row = self._query(
            lambda c: c.execute(
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
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO agents (id, name, organization_id, ai_enabled, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
                " organization_id = excluded.organization_id, ai_enabled = excluded.ai_enabled",
                (agent_id, name, organization_id, int(ai_enabled), time.time()),
            )

    def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = self._query(
            lambda c: c.execute(
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
            contact=_contact_decoder.decode(row[4]),
            created_at=row[5],
            last_user_message_at=row[6],
        )

    def put_conversation(self, conversation: ConversationRecord) -> None:
        c = conversation
        with self._tx() as conn:
            conn.execute(
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
        with self._tx() as conn:
            conn.executemany(
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
        rows = self._query(
            lambda c: c.execute(
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
                attachments=_attachments_decoder.decode(r[6]),
            )
            for r in rows
        ]
