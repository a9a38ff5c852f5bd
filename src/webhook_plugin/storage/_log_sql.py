"""The delivery log in SQL: listing, attempts, stats, redelivery, the backlog and
the purge of finished deliveries."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from ..exceptions import Expired, NotFound
from ._plumbing import _DELIVERY_COLUMNS, Plumbing, _delivery, log
from .base import (
    DEFAULT_REQUEUE_RATE,
    DELIVERY_STATUSES,
    AttemptRecord,
    DeliveryRecord,
    DeliveryStatus,
)

__all__ = ["LogSQL"]


class LogSQL(Plumbing):
    """The delivery-log part of the SQL delivery store."""

    def list_deliveries(
        self,
        *,
        agent_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
        event_type: str | None = None,
        conversation_id: str | None = None,
        webhook_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[DeliveryRecord]:
        where: list[str] = []
        args: list[object] = []
        for column, value in (
            ("agent_id", agent_id),
            ("status", status),
            ("event_type", event_type),
            ("conversation_id", conversation_id),
            ("webhook_id", webhook_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
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
                "SELECT attempt, started_at, duration_ms, status_code, error, response_excerpt,"
                " url, response_headers, trigger"
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
                url=r[6] if isinstance(r[6], str) else None,
                response_headers=r[7] if isinstance(r[7], str) else None,
                trigger=r[8] if r[8] in ("manual", "recovery") else "scheduled",
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
                " round_start = attempts, round_trigger = 'manual', head_since = NULL,"
                " updated_at = ? WHERE id = ?"
                f" AND {self._BODY_LENGTH} > 0 RETURNING {_DELIVERY_COLUMNS}",
                (now, now, delivery_id),
            ).fetchone()
        if row is None:
            self.get_delivery(delivery_id)  # NotFound when there is none
            raise Expired(
                f"delivery {delivery_id}'s payload expired after the retention: it cannot be sent again"
            )
        return _delivery(row)

    def redeliver_failed(self, *, agent_id: str | None, since: float, now: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?,"
            " round_start = attempts, round_trigger = 'manual', head_since = NULL, updated_at = ?"
            f" WHERE status = 'failed' AND created_at >= ? AND {self._BODY_LENGTH} > 0"
        )
        args: list[Any] = [now, now, since]
        if agent_id is not None:
            sql += " AND agent_id = ?"
            args.append(agent_id)
        with self._tx() as conn:
            count: int = self._x(conn, sql, args).rowcount
        return count

    def recover(
        self,
        agent_id: str,
        *,
        since: float,
        until: float | None = None,
        event_types: Sequence[str] | None = None,
        rate: float = DEFAULT_REQUEUE_RATE,
        dry_run: bool = False,
    ) -> int:
        sql = (
            "SELECT id FROM deliveries WHERE agent_id = ? AND status IN ('failed', 'held')"
            f" AND created_at >= ? AND {self._BODY_LENGTH} > 0"  # an expired payload cannot go
        )
        args: list[Any] = [agent_id, since]
        if until is not None:
            sql += " AND created_at < ?"
            args.append(until)
        if event_types:
            sql += f" AND event_type IN ({','.join('?' * len(event_types))})"
            args += event_types
        sql += " ORDER BY id"
        if dry_run:
            return len(self._query(lambda c: self._x(c, sql, args).fetchall()))
        with self._tx() as conn:
            # read and changed in one transaction, its rows locked: two recovers
            # at once queue each delivery once
            ids = [row[0] for row in self._x(conn, sql + self._LOCK_ROW, args).fetchall()]
            if ids:
                self._requeue(conn, ids, rate)
        if ids:
            log.info("deliveries.recovered", agent_id=agent_id, deliveries=len(ids))
        return len(ids)

    def expire_held(self, *, max_count: int, max_age: float, now: float) -> int:
        expired: list[tuple[str, int]] = []
        with self._tx() as conn:
            # a held delivery whose endpoint is enabled was missed by the save
            # that enabled it (it can only be a race): it goes now
            self._x(
                conn,
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
                " WHERE status = 'held' AND agent_id IN"
                " (SELECT agent_id FROM webhook_settings WHERE disabled = 0)",
                (now,),
            )
            rows = self._x(
                conn,
                "SELECT id, agent_id, created_at FROM deliveries WHERE status = 'held'"
                " ORDER BY id" + self._LOCK_ROW,  # locked in one order
            ).fetchall()
            kept: dict[str, int] = {}
            for delivery_id, agent_id, created_at in reversed(rows):  # the newest first
                if created_at < now - max_age:
                    expired.append((f"held_expired: held longer than {max_age:g} s", delivery_id))
                elif kept.get(agent_id, 0) >= max_count:
                    expired.append((f"held_limit: more than {max_count} held", delivery_id))
                else:
                    kept[agent_id] = kept.get(agent_id, 0) + 1
            self._xmany(
                conn,
                "UPDATE deliveries SET status = 'failed', last_error = ?, updated_at = ?"
                " WHERE id = ? AND status = 'held'",
                [
                    (why, now, delivery_id)
                    for why, delivery_id in sorted(expired, key=lambda e: e[1])
                ],
            )
        if expired:
            log.warning("deliveries.held_expired", deliveries=len(expired))
        return len(expired)

    def purge(self, *, before: float, batch: int = 1000) -> int:
        """Expire the payloads of finished deliveries created before ``before``:
        their body is emptied and their attempts deleted; the delivery stays in
        the log, its payload read as expired. How many expired.

        Pending and held deliveries are never touched. Candidates are found by
        reads, which never wait for a writer; each batch is then changed in a
        short write transaction of its own that checks them again, so delivery
        writes wait at most one batch; between batches it leaves as long again
        to the others.
        """
        expired, after = 0, 0
        find = (
            "SELECT id FROM deliveries WHERE status IN ('succeeded', 'failed')"
            f" AND id > ? AND created_at < ? AND {self._BODY_LENGTH} > 0 ORDER BY id LIMIT ?"
        )
        while True:
            started = time.monotonic()
            rows = self._query(functools.partial(self._find, find, (after, before, batch)))
            ids = [row[0] for row in rows]
            if not ids:
                return expired
            after = max(ids)
            with self._tx(durable=False) as conn:
                changed = [
                    row[0]
                    for row in self._x(
                        conn,
                        f"UPDATE deliveries SET body = ? WHERE id IN ({','.join('?' * len(ids))})"
                        " AND status IN ('succeeded', 'failed') RETURNING id",
                        (b"", *ids),
                    ).fetchall()
                ]
                self._xmany(
                    conn, "DELETE FROM attempts WHERE delivery_id = ?", [(i,) for i in changed]
                )
            expired += len(changed)
            # as long again for everyone else: delivery writes (and this
            # process's event loop, which shares the interpreter) go first
            time.sleep(min(0.1, time.monotonic() - started))

    def _find(self, sql: str, args: Sequence[Any], conn: Any) -> list[Any]:
        return list(self._x(conn, sql, args).fetchall())

    def backlog(self) -> tuple[int, float | None]:
        row = self._query(
            lambda c: self._x(
                c, "SELECT COUNT(*), MIN(created_at) FROM deliveries WHERE status = 'pending'"
            ).fetchone()
        )
        return int(row[0]), row[1]

    def count_deliveries(self, agent_id: str | None = None) -> dict[str, int]:
        """How many deliveries are in each state (of one agent's, or all)."""
        where, args = ("WHERE agent_id = ? ", (agent_id,)) if agent_id is not None else ("", ())
        rows = self._query(
            lambda c: self._x(
                c, f"SELECT status, COUNT(*) FROM deliveries {where}GROUP BY status", args
            ).fetchall()
        )
        counts: dict[str, int] = dict.fromkeys(DELIVERY_STATUSES, 0)
        counts.update(dict(rows))
        return counts
