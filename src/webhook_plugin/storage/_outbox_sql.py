"""The outbox's inserts in SQL: plain, or leased at once to a dispatcher.

An insert given a :class:`~webhook_plugin.storage.base.Lease` (its
dispatcher runs in this process) leases up to ``lease.most`` of the due
deliveries to it in the inserting transaction and returns them: the caller
hands them over once that commits, and they start with no claim query in
between. The rest are inserted plain and claimed as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import msgspec

from ..events import OperationalEventType
from ._plumbing import Plumbing
from .base import ClaimedDelivery, Lease, NewDelivery

__all__ = ["OutboxSQL"]


def with_sequence(body: bytes, sequence: int) -> bytes:
    """A JSON object's bytes with ``"sequence"`` added as its last member."""
    end = body.rstrip()
    if not end.endswith(b"}"):
        raise ValueError("a delivery's body with a conversation must be a JSON object")
    inner = end[:-1].rstrip()
    sep = b"" if inner.endswith(b"{") else b","
    return b'%s%s"sequence":%d}' % (inner, sep, sequence)


class OutboxSQL(Plumbing):
    """The outbox part of the SQL delivery store, and the seam's transaction."""

    #: how many rows one INSERT ... VALUES carries (11 parameters a row, far
    #: below SQLite's 32,766 and PostgreSQL's 65,535)
    _CHUNK: ClassVar[int] = 500
    #: an insert given a :class:`~.base.Lease` leases (a store of another kind
    #: may not: the engine gives it none)
    leases_on_insert: ClassVar[bool] = True

    @contextmanager
    def transaction(self, *, wait: float | None = None) -> Iterator[Any]:
        """One write transaction (yields a connection), serialised with the others;
        ``wait`` bounds its wait for a lock (see :meth:`_tx`)."""
        with self._tx(wait=wait) as conn:
            yield conn

    def queue_deliveries(
        self, conn: Any, items: Sequence[NewDelivery], lease: Lease | None = None
    ) -> list[ClaimedDelivery]:
        """Queue deliveries in a transaction the caller holds (see
        :meth:`transaction`); with ``lease``, return those leased to its owner
        (the caller hands them over once the transaction commits)."""
        if not items:
            return []
        items = self._numbered(conn, items)
        claimed: list[ClaimedDelivery] = []
        if lease is not None and lease.most > 0:
            claimed, items = self._insert_leased(conn, items, lease)
        if items:
            self._insert_plain(conn, items, self._disabled(conn, items))
            # others may claim these (another process, or our claim loop);
            # the leased ones are ours alone, and wake no one
            self._after_insert(conn)
        return claimed

    def insert_deliveries(
        self, items: Sequence[NewDelivery], lease: Lease | None = None
    ) -> list[ClaimedDelivery]:
        with self.transaction() as conn:
            return self.queue_deliveries(conn, items, lease)

    def _insert_leased(
        self, conn: Any, items: Sequence[NewDelivery], lease: Lease
    ) -> tuple[list[ClaimedDelivery], list[NewDelivery]]:
        """Insert and lease up to ``lease.most`` of ``items`` that are due and
        whose endpoint reads well; return them, and the others (not yet inserted)."""
        now, room = lease.now, lease.most
        endpoints = self._endpoints(conn, {d.agent_id for d in items})
        leased: list[NewDelivery] = []
        rest: list[NewDelivery] = []
        for d in items:
            settings = endpoints.get(d.agent_id, (None, None))[0]
            # an ordered one waits for its turn, which a claim decides
            due = d.next_attempt_at <= now and not d.ordered
            # a disabled endpoint's are inserted plain, and held
            if len(leased) < room and settings is not None and due and not settings.disabled:
                leased.append(d)
            else:
                rest.append(d)
        # the lease ends on the database's clock (see _CLAIM), from this
        # statement (its transaction may have waited for locks); here, counted
        # from before it on the monotonic clock, so never later than there
        lease_until = time.monotonic() + lease.seconds
        row_sql = f"(?, ?, ?, ?, ?, ?, ?, {self._STATEMENT_NOW} + ?, ?, ?, ?)"
        claimed: list[ClaimedDelivery] = []
        for start in range(0, len(leased), self._CHUNK):
            chunk = leased[start : start + self._CHUNK]
            params: list[Any] = []
            for d in chunk:
                params += (d.webhook_id, d.agent_id, d.event_type.value, d.body, d.created_at)
                params += (d.next_attempt_at, d.created_at, lease.seconds, lease.owner)
                params += (d.conversation_id, d.sequence)
            rows = self._x(
                conn,
                "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
                " next_attempt_at, updated_at, lease_until, lease_owner, conversation_id,"
                " sequence) VALUES "
                + ",".join([row_sql] * len(chunk))
                + " RETURNING id, webhook_id",
                params,
            ).fetchall()
            ids = {webhook_id: delivery_id for delivery_id, webhook_id in rows}
            for d in chunk:
                settings, failing_since = endpoints[d.agent_id]
                claimed.append(
                    ClaimedDelivery(
                        id=ids[d.webhook_id],
                        webhook_id=d.webhook_id,
                        agent_id=d.agent_id,
                        event_type=d.event_type,
                        body=d.body,
                        created_at=d.created_at,
                        attempts=0,
                        round_attempts=0,
                        lease_until=lease_until,
                        lease_owner=lease.owner,
                        settings=settings,
                        failing_since=failing_since,
                    )
                )
        return claimed, rest

    def _disabled(self, conn: Any, items: Sequence[NewDelivery]) -> dict[str, str]:
        """The disabled endpoints among ``items``' agents, and why: read once per
        insert, under a share lock where the database has one (PostgreSQL), so a
        save that enables one waits for this commit (and then sends what this
        held) or came first (and this sees it enabled). SQLite's writes are one
        at a time already."""
        agents = sorted({d.agent_id for d in items})
        rows = self._x(
            conn,
            "SELECT agent_id, disabled_reason FROM webhook_settings WHERE disabled = 1"
            f" AND agent_id IN ({','.join('?' * len(agents))}) ORDER BY agent_id{self._SHARE_ROW}",
            agents,
        ).fetchall()
        return {agent_id: reason or "disabled" for agent_id, reason in rows}

    def _insert_plain(
        self, conn: Any, items: Sequence[NewDelivery], disabled: dict[str, str]
    ) -> None:
        """Insert ``items``: held, and why, for a ``disabled`` endpoint (never an
        operational event: it may be the one saying "disabled")."""
        rows = []
        for d in items:
            why = disabled.get(d.agent_id) if d.event_type not in OperationalEventType else None
            rows.append(
                (
                    d.webhook_id,
                    d.agent_id,
                    d.event_type.value,
                    d.body,
                    d.created_at,
                    d.next_attempt_at,
                    d.created_at,
                    d.conversation_id,
                    d.sequence,
                    1 if d.ordered else 0,
                    "pending" if why is None else "held",
                    None if why is None else f"endpoint_disabled: {why}",
                )
            )
        self._xmany(
            conn,
            "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
            " next_attempt_at, updated_at, conversation_id, sequence, ordered, status,"
            " last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _numbered(self, conn: Any, items: Sequence[NewDelivery]) -> list[NewDelivery]:
        """``items`` with their conversation's ``sequence`` written into their
        bodies: the next numbers of each agent's conversation, counted in this
        transaction (its counter row stays locked until it commits, so numbers
        follow commit order, with no gaps)."""
        counts: dict[tuple[str, str], int] = {}
        for d in items:
            if d.conversation_id is not None:
                lane = (d.agent_id, d.conversation_id)
                counts[lane] = counts.get(lane, 0) + 1
        if not counts:
            return list(items)
        last: dict[tuple[str, str], int] = {}
        lanes = sorted(counts)  # every transaction locks counters in one order
        for start in range(0, len(lanes), self._CHUNK):
            chunk = lanes[start : start + self._CHUNK]
            params = [v for lane in chunk for v in (*lane, counts[lane])]
            rows = self._x(
                conn,
                "INSERT INTO conversation_sequences (agent_id, conversation_id, last) VALUES "
                + ",".join(["(?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (agent_id, conversation_id)"
                " DO UPDATE SET last = conversation_sequences.last + excluded.last"
                " RETURNING agent_id, conversation_id, last",
                params,
            ).fetchall()
            last.update(((a, c), n) for a, c, n in rows)
        numbered: list[NewDelivery] = []
        for d in items:
            if d.conversation_id is None:
                numbered.append(d)
                continue
            lane = (d.agent_id, d.conversation_id)
            sequence = last[lane] - counts[lane] + 1
            counts[lane] -= 1
            numbered.append(
                msgspec.structs.replace(d, body=with_sequence(d.body, sequence), sequence=sequence)
            )
        return numbered
