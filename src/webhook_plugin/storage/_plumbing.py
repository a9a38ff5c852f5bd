"""The plumbing every part of the SQL delivery store stands on: a backend's
connections and transactions (abstract here), and how rows become records.

The store is put together from parts that each keep one job: this base,
the inserts (:mod:`._outbox_sql`), the settings (:mod:`._settings_sql`), the
delivery log (:mod:`._log_sql`), and the claims and attempts (:mod:`._sql`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

import msgspec
import structlog

from ..events import OperationalEventType, WebhookEventType
from ..settings import WebhookSettings
from .base import (
    DeliveryRecord,
)

__all__ = ["Plumbing"]

T = TypeVar("T")

log = structlog.get_logger("webhook_plugin.storage")

_json_encode = msgspec.json.Encoder().encode
_settings_decoder = msgspec.json.Decoder(WebhookSettings)

_DELIVERY_COLUMNS = (
    "id, webhook_id, agent_id, event_type, status, attempts, last_status_code, "
    "last_error, created_at, next_attempt_at, body, conversation_id, sequence"
)


def _event_type(value: Any) -> WebhookEventType | OperationalEventType | None:
    """The stored event type, or None when this version does not know it."""
    try:
        return WebhookEventType(value)
    except ValueError:
        pass
    try:
        return OperationalEventType(value)
    except ValueError:
        return None


def _body(value: object) -> bytes | None:
    """The stored body, or None when it is not bytes-like."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _delivery(row: Sequence[Any]) -> DeliveryRecord:
    # The log lists every row, even one this version cannot deliver (written by
    # a newer version, say): its unknown event type is shown as stored.
    event_type = _event_type(row[3])
    return DeliveryRecord(
        id=row[0],
        webhook_id=row[1],
        agent_id=row[2],
        event_type=str(row[3]) if event_type is None else event_type,
        status=row[4],
        attempts=row[5],
        last_status_code=row[6],
        last_error=row[7],
        created_at=row[8],
        next_attempt_at=row[9] if row[4] == "pending" else None,
        body=_body(row[10]) or b"",
        conversation_id=row[11] if isinstance(row[11], str) else None,
        sequence=row[12] if isinstance(row[12], int) else None,
    )


def _decode_settings(agent_id: str, row: Sequence[Any]) -> WebhookSettings | None:
    """An agent's stored settings (``data, disabled, disabled_reason``), or None
    (and a warning) when this version cannot decode them.

    The warning never quotes the row or the decoder's message: settings hold
    secrets. The JSON path of a validation error is kept, as it quotes nothing.
    """
    try:
        settings = _settings_decoder.decode(row[0])
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        _, at, path = str(exc).rpartition(" - at `")
        log.warning(
            "settings.undecodable",
            agent_id=agent_id,
            error=type(exc).__name__,
            at=path.rstrip("`") if at else None,
        )
        return None
    return msgspec.structs.replace(settings, disabled=bool(row[1]), disabled_reason=row[2])


def _time_or_none(value: object) -> float | None:
    """A stored time, or None for one written in another shape (a text, a NaN)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class Plumbing(ABC):
    """What a backend supplies: connections, transactions, its placeholders."""

    #: the function that picks the larger of two values
    _GREATEST: ClassVar[str] = "MAX"
    #: the database's clock, in Unix seconds: what every lease is measured by,
    #: so that processes on hosts whose clocks disagree still agree on leases
    _NOW: ClassVar[str] = "((julianday('now') - 2440587.5) * 86400.0)"
    #: the database's clock when the statement runs (not when its transaction
    #: began): for a lease taken late in a transaction that may have waited
    _STATEMENT_NOW: ClassVar[str] = _NOW
    #: a blob's length in bytes
    _BODY_LENGTH: ClassVar[str] = "length(body)"
    #: appended to a SELECT whose rows must not change until the transaction
    #: ends, while others may read them too
    _SHARE_ROW: ClassVar[str] = ""
    #: appended to a SELECT that must hold its row until the transaction ends
    #: (SQLite's BEGIN IMMEDIATE already holds the whole database)
    _LOCK_ROW: ClassVar[str] = ""

    @abstractmethod
    def _tx(
        self, *, durable: bool = True, wait: float | None = None
    ) -> AbstractContextManager[Any]:
        """One write transaction; yields a connection.

        ``wait`` bounds how long it waits for the database's write lock (or a
        row lock) before it fails with :class:`StorageError`: a request some
        client waits on must not hang while another process holds the lock.

        ``durable=False`` commits without waiting for the disk (SQLite
        ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): for
        writes that a crash of the machine may lose at no cost but a repeat,
        leases and attempt results. A lost result only means the delivery is
        sent again (at least once); every event and every acknowledged chat
        message is written durably.
        """

    @abstractmethod
    def _query(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` for a read."""

    @abstractmethod
    def _x(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement written with ``?`` placeholders; return the cursor."""

    @abstractmethod
    def _xmany(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Execute one statement for many rows."""

    def _after_insert(self, conn: Any) -> None:  # noqa: B027  # most backends have no way
        """Called in a transaction that queued deliveries: tells workers in
        other processes (a backend with a way to)."""

    def _requeue(self, conn: Any, ids: Sequence[int], rate: float) -> None:
        """Queue these deliveries again, in this order, ``rate`` a second from now
        on the database's clock, each starting a new round of attempts."""
        self._xmany(
            conn,
            f"UPDATE deliveries SET status = 'pending', next_attempt_at = {self._NOW} + ?,"
            " round_start = attempts, round_trigger = 'recovery', lease_until = 0,"
            " lease_owner = NULL, head_since = NULL,"
            f" updated_at = {self._NOW} WHERE id = ? AND status IN ('held', 'failed')",
            [(n / rate, i) for n, i in enumerate(ids)],
        )
        self._after_insert(conn)

    def _migrate_in(self, conn: Any, component: str, scripts: Sequence[str]) -> None:
        """In a transaction the caller holds (serialised with other processes):
        run ``component``'s scripts after the version stored for it."""
        self._x(
            conn,
            "CREATE TABLE IF NOT EXISTS schema_versions"
            " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        )
        row = self._x(
            conn, "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(scripts[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    self._x(conn, statement)
            self._x(
                conn,
                "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, number),
            )

    def _endpoints(
        self, conn: Any, agent_ids: set[str]
    ) -> dict[str, tuple[WebhookSettings | None, float | None]]:
        """The agents' settings and ``failing_since``; settings of None for an
        agent whose row this version cannot decode (absent: no row), and a
        ``failing_since`` that is not a time read as None (not failing)."""
        if not agent_ids:
            return {}
        marks = ",".join("?" * len(agent_ids))
        rows = self._x(
            conn,
            "SELECT agent_id, data, disabled, disabled_reason, failing_since"
            f" FROM webhook_settings WHERE agent_id IN ({marks})",
            tuple(agent_ids),
        ).fetchall()
        return {row[0]: (_decode_settings(row[0], row[1:4]), _time_or_none(row[4])) for row in rows}
