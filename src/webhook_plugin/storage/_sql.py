"""What the SQLite and PostgreSQL delivery stores share: the SQL of every operation.

Statements are written once, with ``?`` placeholders and SQL that both
databases accept (``ON CONFLICT``, ``RETURNING``); a backend supplies its
connections and transactions, its placeholder style and the few statements
that differ (claiming, which PostgreSQL does with ``FOR UPDATE SKIP LOCKED``).

The delivery store owns its tables (deliveries, attempts, webhook settings)
and their migrations. Another store may keep its own tables in the same
database (the reference runtime's chat store does): the *SQL seam* below
lends it the connections, one transaction for both, its own migrations
(``schema_versions`` holds a version per component), and
:meth:`SQLStore.queue_deliveries`, so that a chat message and the events it
queued commit together.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

import msgspec
import structlog

from ..events import WebhookEventType
from ..exceptions import NotFound
from ..settings import WebhookSettings
from .base import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    DeliveryRecord,
    DeliveryStatus,
    NewDelivery,
)

__all__ = ["SQLStore"]

T = TypeVar("T")

log = structlog.get_logger("webhook_plugin.storage")

_json_encode = msgspec.json.Encoder().encode
_settings_decoder = msgspec.json.Decoder(WebhookSettings)

_DELIVERY_COLUMNS = (
    "id, webhook_id, agent_id, event_type, status, attempts, last_status_code, "
    "last_error, created_at, next_attempt_at, body"
)


def _event_type(value: Any) -> WebhookEventType | None:
    """The stored event type, or None when this version does not know it."""
    try:
        return WebhookEventType(value)
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


class SQLStore(ABC):
    """The operations of :class:`~webhook_plugin.storage.base.Store` in portable SQL."""

    #: the function that picks the larger of two values
    _GREATEST: ClassVar[str] = "MAX"
    #: appended to a SELECT that must hold its row until the transaction ends
    #: (SQLite's BEGIN IMMEDIATE already holds the whole database)
    _LOCK_ROW: ClassVar[str] = ""
    #: lease due deliveries; parameters: lease_until, owner, now, now, limit
    _CLAIM: ClassVar[str] = (
        "UPDATE deliveries SET lease_until = ?, lease_owner = ? WHERE id IN ("
        " SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
        " AND lease_until <= ?{skip} ORDER BY next_attempt_at LIMIT ?)"
        " RETURNING id, webhook_id, agent_id, event_type, body, created_at, attempts,"
        " round_start"
    )

    @abstractmethod
    def _tx(self, *, durable: bool = True) -> AbstractContextManager[Any]:
        """One write transaction; yields a connection.

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

    #: whether :meth:`wait_for_new` can wake a worker in another process
    supports_notify: ClassVar[bool] = False

    def _claim_params(
        self, now: float, limit: int, lease_until: float, owner: str, skip: tuple[str, ...]
    ) -> tuple[Any, ...]:
        return (lease_until, owner, now, now, *skip, limit)

    def _after_insert(self, conn: Any) -> None:  # noqa: B027 - optional hook, empty by default
        """Called in the transaction that queued new deliveries."""

    def ping(self) -> None:
        """Raise :class:`StorageError` when the database does not answer a query."""
        self._query(lambda c: self._x(c, "SELECT 1").fetchone())

    # the SQL seam, for another component's tables in the same database ------------------

    #: ``sqlite`` or ``postgresql``: which DDL a component's migrations use
    dialect: ClassVar[str]

    def transaction(self) -> AbstractContextManager[Any]:
        """One write transaction (yields a connection), serialised with the others."""
        return self._tx()

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` for a read."""
        return self._query(fn)

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """One statement with ``?`` placeholders; the cursor."""
        return self._x(conn, sql, params)

    def execute_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._xmany(conn, sql, rows)

    def queue_deliveries(self, conn: Any, items: Sequence[NewDelivery]) -> None:
        """Queue deliveries in a transaction the caller holds (see :meth:`transaction`)."""
        self._insert_deliveries(conn, items)

    @abstractmethod
    def migrate(self, component: str, scripts: Sequence[str]) -> None:
        """Bring ``component``'s tables to ``len(scripts)``: run the scripts after
        the version stored for it, each with the version it reaches, in one
        transaction, serialised with every other process doing the same."""

    def wait_for_new(self, timeout: float) -> bool:
        """Block until another process queues deliveries (backends with notify only)."""
        raise NotImplementedError

    # outbox and delivery log ---------------------------------------------------------

    def insert_deliveries(self, items: Sequence[NewDelivery]) -> None:
        with self._tx() as conn:
            self._insert_deliveries(conn, items)

    def _insert_deliveries(self, conn: Any, items: Sequence[NewDelivery]) -> None:
        if not items:
            return
        self._xmany(
            conn,
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
        self._after_insert(conn)

    def claim_due(
        self,
        *,
        now: float,
        limit: int,
        lease_until: float,
        owner: str,
        skip_agents: Sequence[str] = (),
    ) -> list[ClaimedDelivery]:
        skip = f" AND agent_id NOT IN ({','.join('?' * len(skip_agents))})" if skip_agents else ""
        claimed: list[ClaimedDelivery] = []
        poison: list[tuple[Sequence[Any], str]] = []
        with self._tx(durable=False) as conn:
            params = self._claim_params(now, limit, lease_until, owner, tuple(skip_agents))
            rows = self._x(conn, self._CLAIM.replace("{skip}", skip), params).fetchall()
            endpoints = self._endpoints(conn, {row[2] for row in rows})
            for row in rows:
                event_type, body = _event_type(row[3]), _body(row[4])
                settings, failing_since = endpoints.get(row[2], (None, None))
                if event_type is None:
                    poison.append((row, f"unknown_event_type: {str(row[3])[:64]!r}"))
                elif body is None:
                    poison.append((row, f"undecodable: the body is {type(row[4]).__name__}"))
                elif row[2] in endpoints and settings is None:
                    poison.append((row, "undecodable: the agent's webhook settings"))
                else:
                    claimed.append(
                        ClaimedDelivery(
                            id=row[0],
                            webhook_id=row[1],
                            agent_id=row[2],
                            event_type=event_type,
                            body=body,
                            created_at=row[5],
                            attempts=row[6],
                            round_attempts=row[6] - row[7],
                            lease_until=lease_until,
                            settings=settings,
                            failing_since=failing_since,
                        )
                    )
            if poison:
                # Rows this version cannot deliver fail here, in the claiming
                # transaction, instead of stopping the engine (or being claimed
                # again and again); the log shows why.
                self._xmany(
                    conn,
                    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,"
                    " lease_until = 0, lease_owner = NULL, last_error = ?, updated_at = ?"
                    " WHERE id = ?",
                    [(reason, now, row[0]) for row, reason in poison],
                )
        for row, reason in poison:
            log.warning(
                "delivery.quarantined",
                delivery_id=row[0],
                agent_id=row[2],
                webhook_id=row[1],
                reason=reason,
            )
        return claimed

    def _endpoints(
        self, conn: Any, agent_ids: set[str]
    ) -> dict[str, tuple[WebhookSettings | None, float | None]]:
        """The agents' settings and ``failing_since``; settings of None for an
        agent whose row this version cannot decode (absent: no row)."""
        if not agent_ids:
            return {}
        marks = ",".join("?" * len(agent_ids))
        rows = self._x(
            conn,
            "SELECT agent_id, data, disabled, disabled_reason, failing_since"
            f" FROM webhook_settings WHERE agent_id IN ({marks})",
            tuple(agent_ids),
        ).fetchall()
        return {row[0]: (_decode_settings(row[0], row[1:4]), row[4]) for row in rows}

    def record_attempts(self, results: Sequence[AttemptResult]) -> None:
        # One statement per kind for the whole batch (executemany): on the
        # delivery hot path, per-row statements cost more than the HTTP call.
        failing_since: dict[str, float | None] = {}  # per agent, after this batch
        disable: dict[str, str] = {}
        for r in results:
            if r.sent:
                if r.status == "succeeded":
                    failing_since[r.agent_id] = None
                elif failing_since.get(r.agent_id) is None:
                    failing_since[r.agent_id] = r.started_at
            if r.disable_reason:
                disable[r.agent_id] = r.disable_reason
        with self._tx(durable=False) as conn:
            self._xmany(
                conn,
                "UPDATE deliveries SET attempts = attempts + ?, status = ?,"
                " next_attempt_at = ?, lease_until = 0, lease_owner = NULL,"
                " last_status_code = COALESCE(?, last_status_code), last_error = ?,"
                " updated_at = ? WHERE id = ?",
                [
                    (
                        1 if r.sent else 0,
                        r.status,
                        r.next_attempt_at,
                        r.status_code,
                        r.error,
                        r.started_at,
                        r.delivery_id,
                    )
                    for r in results
                ],
            )
            self._xmany(
                conn,
                "INSERT INTO attempts (delivery_id, attempt, started_at,"
                " duration_ms, status_code, error, response_excerpt)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt)"
                " DO UPDATE SET started_at = excluded.started_at,"
                " duration_ms = excluded.duration_ms, status_code = excluded.status_code,"
                " error = excluded.error, response_excerpt = excluded.response_excerpt",
                [
                    (
                        r.delivery_id,
                        r.attempt,
                        r.started_at,
                        r.duration_ms,
                        r.status_code,
                        r.error,
                        r.response_excerpt,
                    )
                    for r in results
                    if r.sent
                ],
            )
            for agent_id, since in failing_since.items():
                if since is None:
                    self._x(
                        conn,
                        "UPDATE webhook_settings SET failing_since = NULL"
                        " WHERE agent_id = ? AND failing_since IS NOT NULL",
                        (agent_id,),
                    )
                else:
                    self._x(
                        conn,
                        "UPDATE webhook_settings SET failing_since = ?"
                        " WHERE agent_id = ? AND failing_since IS NULL",
                        (since, agent_id),
                    )
            for agent_id, reason in disable.items():
                self._x(
                    conn,
                    "UPDATE webhook_settings SET disabled = 1, disabled_reason = ?"
                    " WHERE agent_id = ?",
                    (reason, agent_id),
                )

    def release(self, delivery_ids: Sequence[int], owner: str) -> None:
        if not delivery_ids:
            return
        with self._tx(durable=False) as conn:
            self._xmany(
                conn,
                "UPDATE deliveries SET lease_until = 0, lease_owner = NULL"
                " WHERE id = ? AND lease_owner = ? AND status = 'pending'",
                [(i, owner) for i in delivery_ids],
            )

    def list_deliveries(
        self,
        *,
        agent_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[DeliveryRecord]:
        where: list[str] = []
        args: list[object] = []
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
        return self._query(lambda c: [_delivery(r) for r in self._x(c, sql, args)])

    def get_delivery(self, delivery_id: int) -> DeliveryRecord:
        row = self._query(
            lambda c: self._x(
                c, f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return _delivery(row)

    def list_attempts(self, delivery_id: int) -> list[AttemptRecord]:
        rows = self._query(
            lambda c: self._x(
                c,
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

    def attempt_stats(
        self, agent_id: str, *, since: float, bucket_seconds: float, buckets: int
    ) -> list[tuple[int, int, int, float, float]]:
        """The attempts sent to an agent's endpoint since ``since``, per time bucket
        (``buckets`` of ``bucket_seconds``): ``(bucket, attempts, succeeded,
        average ms, longest ms)``, oldest first; buckets without attempts are
        left out. A 2xx answer is a success. Read-only (the console's health strip)."""
        # bucket edges as parameters: portable, where FLOOR and integer casts differ
        case = " ".join(f"WHEN a.started_at < ? THEN {i}" for i in range(buckets))
        sql = (
            f"SELECT CASE {case} ELSE {buckets - 1} END AS bucket, COUNT(*),"
            " SUM(CASE WHEN a.status_code >= 200 AND a.status_code < 300 THEN 1 ELSE 0 END),"
            " AVG(a.duration_ms), MAX(a.duration_ms)"
            " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
            # updated_at is the start of a delivery's last attempt (or later)
            " WHERE d.agent_id = ? AND d.updated_at >= ? AND a.started_at >= ?"
            " GROUP BY bucket ORDER BY bucket"
        )
        args: list[object] = [since + (i + 1) * bucket_seconds for i in range(buckets)]
        args += [agent_id, since, since]
        rows = self._query(lambda c: self._x(c, sql, args).fetchall())
        return [(int(r[0]), int(r[1]), int(r[2] or 0), float(r[3]), float(r[4])) for r in rows]

    def redeliver(self, delivery_id: int, *, now: float) -> DeliveryRecord:
        with self._tx() as conn:
            row = self._x(
                conn,
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
            count: int = self._x(conn, sql, args).rowcount
        return count

    def purge(self, *, before: float, batch: int = 1000) -> int:
        """Delete finished deliveries (and their attempts) created before ``before``.

        Pending deliveries are never purged. Works in small transactions so
        that writers are not held up.
        """
        removed = 0
        while True:
            with self._tx() as conn:
                ids = [
                    row[0]
                    for row in self._x(
                        conn,
                        "SELECT id FROM deliveries WHERE status <> 'pending' AND created_at < ?"
                        " ORDER BY id LIMIT ?",
                        (before, batch),
                    ).fetchall()
                ]
                if not ids:
                    return removed
                self._xmany(conn, "DELETE FROM attempts WHERE delivery_id = ?", [(i,) for i in ids])
                self._xmany(conn, "DELETE FROM deliveries WHERE id = ?", [(i,) for i in ids])
            removed += len(ids)

    def backlog(self) -> tuple[int, float | None]:
        row = self._query(
            lambda c: self._x(
                c, "SELECT COUNT(*), MIN(created_at) FROM deliveries WHERE status = 'pending'"
            ).fetchone()
        )
        return int(row[0]), row[1]

    def count_deliveries(self) -> dict[str, int]:
        rows = self._query(
            lambda c: self._x(
                c, "SELECT status, COUNT(*) FROM deliveries GROUP BY status"
            ).fetchall()
        )
        counts = {"pending": 0, "succeeded": 0, "failed": 0}
        counts.update(dict(rows))
        return counts

    # settings --------------------------------------------------------------------------

    def get_settings(self, agent_id: str) -> WebhookSettings | None:
        """The agent's settings; None when it has none, or none this version can decode."""
        row = self._query(
            lambda c: self._x(
                c,
                "SELECT data, disabled, disabled_reason FROM webhook_settings WHERE agent_id = ?",
                (agent_id,),
            ).fetchone()
        )
        return None if row is None else _decode_settings(agent_id, row)

    def put_settings(self, agent_id: str, settings: WebhookSettings) -> None:
        with self._tx() as conn:
            self._write_settings(conn, agent_id, settings)

    def update_settings(
        self,
        agent_id: str,
        change: Callable[[WebhookSettings | None], WebhookSettings],
    ) -> WebhookSettings:
        """Read an agent's settings, ``change`` them and write the result, in one
        transaction that holds the row: two updates at once (a secret rotation
        and a settings save) run one after the other, so neither undoes the
        other. Whatever ``change`` raises rolls the transaction back."""
        with self._tx() as conn:
            row = self._x(
                conn,
                "SELECT data, disabled, disabled_reason FROM webhook_settings WHERE agent_id = ?"
                + self._LOCK_ROW,
                (agent_id,),
            ).fetchone()
            settings = change(None if row is None else _decode_settings(agent_id, row))
            self._write_settings(conn, agent_id, settings)
        return settings

    def _write_settings(self, conn: Any, agent_id: str, settings: WebhookSettings) -> None:
        data = _json_encode(msgspec.structs.replace(settings, disabled=False, disabled_reason=None))
        self._x(
            conn,
            "INSERT INTO webhook_settings (agent_id, data, disabled, disabled_reason,"
            " failing_since, updated_at) VALUES (?, ?, ?, ?, NULL, ?)"
            " ON CONFLICT (agent_id) DO UPDATE SET data = excluded.data,"
            " disabled = excluded.disabled, disabled_reason = excluded.disabled_reason,"
            " failing_since = NULL, updated_at = excluded.updated_at",
            (agent_id, data, int(settings.disabled), settings.disabled_reason, time.time()),
        )

    def all_settings(self) -> dict[str, WebhookSettings]:
        """Every agent's settings, leaving out (with a warning) rows this version
        cannot decode: one bad row must not keep the engine from starting."""
        rows = self._query(
            lambda c: self._x(
                c, "SELECT agent_id, data, disabled, disabled_reason FROM webhook_settings"
            ).fetchall()
        )
        decoded = {row[0]: _decode_settings(row[0], row[1:]) for row in rows}
        return {agent_id: s for agent_id, s in decoded.items() if s is not None}
