"""Claims and attempts in SQL: leasing due deliveries, handing leases back,
and writing what attempts came to (with the endpoint's state and the
operational events it decides).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any, ClassVar

import msgspec
from msgspec import UNSET

from ..events import OperationalEventType
from ..payloads import OperationalEvent, new_webhook_id
from ..settings import DEFAULT_ORDERING_MAX_WAIT, WebhookSettings
from ._plumbing import Plumbing, _body, _event_type, _json_encode, log
from .base import FAILING_SHARES, AttemptResult, ClaimedDelivery, NewDelivery

__all__ = ["AttemptsSQL"]

#: the operational event types, as SQL: never held
_OPERATIONAL = ",".join(f"'{kind}'" for kind in OperationalEventType)


def _head_deadline(
    row: Sequence[Any], settings: WebhookSettings | None, start: float
) -> float | None:
    """For an ordered delivery, until when (monotonic, from ``start``) it may
    keep failing at its conversation's head: ``ordering_max_wait`` less how long
    the database says it has been the head."""
    if not row[8]:
        return None
    max_wait = DEFAULT_ORDERING_MAX_WAIT if settings is None else settings.ordering_max_wait
    held_for = row[9] if isinstance(row[9], int | float) else 0.0
    return start + max_wait - max(0.0, held_for)


class AttemptsSQL(Plumbing):
    """The claims and the attempts' results."""

    #: lease due deliveries; parameters: lease_seconds, owner, skip..., limit.
    #: Every time in it is the database's (``{now}``), never a process's own:
    #: a host whose clock is ahead cannot take leases that are still running.
    _CLAIM: ClassVar[str] = (
        "UPDATE deliveries SET lease_until = {now} + ?, lease_owner = ?,"
        " head_since = COALESCE(head_since, {now}) WHERE id IN ("
        " SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= {now}"
        " AND lease_until <= {now}{skip}{in_turn} ORDER BY next_attempt_at LIMIT ?)"
        " RETURNING id, webhook_id, agent_id, event_type, body, created_at, attempts,"
        " round_start, ordered, {now} - head_since"
    )
    #: an ordered delivery is claimed only at the head of its conversation: no
    #: earlier one of the same agent and conversation is still pending (being
    #: sent, or waiting for a retry). Derived from the rows at each claim, so
    #: there is no "whose turn" state to keep right across processes.
    _IN_TURN: ClassVar[str] = (
        " AND (ordered = 0 OR NOT EXISTS (SELECT 1 FROM deliveries AS p"
        " WHERE p.agent_id = deliveries.agent_id"
        " AND p.conversation_id = deliveries.conversation_id"
        " AND p.status IN ('pending', 'held') AND p.sequence < deliveries.sequence))"
    )

    def _claim_params(
        self, limit: int, lease_seconds: float, owner: str, skip: tuple[str, ...]
    ) -> tuple[Any, ...]:
        return (lease_seconds, owner, *skip, limit)

    def claim_due(
        self,
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        skip_agents: Sequence[str] = (),
    ) -> list[ClaimedDelivery]:
        skip = f" AND agent_id NOT IN ({','.join('?' * len(skip_agents))})" if skip_agents else ""
        claimed: list[ClaimedDelivery] = []
        poison: list[tuple[Sequence[Any], str]] = []
        # the lease ends on the database's clock; this process counts it from
        # before it asked, on its own monotonic clock (never its wall clock)
        lease_until = time.monotonic() + lease_seconds
        with self._tx(durable=False) as conn:
            params = self._claim_params(limit, lease_seconds, owner, tuple(skip_agents))
            sql = (
                self._CLAIM.replace("{skip}", skip)
                .replace("{in_turn}", self._IN_TURN)
                .replace("{now}", self._NOW)
            )
            rows = self._x(conn, sql, params).fetchall()
            endpoints = self._endpoints(conn, {row[2] for row in rows})
            for row in rows:
                event_type, body = _event_type(row[3]), _body(row[4])
                settings, failing_since = endpoints.get(row[2], (None, None))
                if event_type is None:
                    poison.append((row, f"unknown_event_type: {str(row[3])[:64]!r}"))
                elif body is None:
                    poison.append((row, f"undecodable: the body is {type(row[4]).__name__}"))
                elif not body:
                    poison.append((row, "expired: its payload was purged after the retention"))
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
                            lease_owner=owner,
                            settings=settings,
                            failing_since=failing_since,
                            head_deadline=_head_deadline(
                                row, settings, lease_until - lease_seconds
                            ),
                        )
                    )
            if poison:
                # Rows this version cannot deliver fail here, in the claiming
                # transaction, instead of stopping the engine (or being claimed
                # again and again); the log shows why.
                self._xmany(
                    conn,
                    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,"
                    f" lease_until = 0, lease_owner = NULL, last_error = ?, updated_at = {self._NOW}"
                    " WHERE id = ?",
                    [(reason, row[0]) for row, reason in poison],
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

    def _record(
        self, conn: Any, results: Sequence[AttemptResult]
    ) -> tuple[list[OperationalEvent], list[NewDelivery]]:
        """Write the attempts' results in the caller's transaction; the
        operational events they caused, each decided once here, and their
        deliveries to the agents' ``operations_url`` for the caller to queue in
        the same transaction. One that ends an ordered delivery lets the next of
        its conversation be claimed: other processes are told, as for new
        deliveries."""
        # One statement per kind for the whole batch (executemany): on the
        # delivery hot path, per-row statements cost more than the HTTP call.
        results = self._fenced(conn, results)
        if not results:
            return [], []
        told = self._record_in(conn, results)
        if any(r.ordered and r.status != "pending" for r in results):
            self._after_insert(conn)
        return self._tell(conn, told) if told else ([], [])

    def _fenced(self, conn: Any, results: Sequence[AttemptResult]) -> Sequence[AttemptResult]:
        """The results whose attempt still holds its delivery's lease (read under
        lock, in the writing transaction). A result made under a lease another
        dispatcher has taken over since (this one stalled past its end) is
        dropped and logged: the new holder's attempt decides."""
        fenced = {r.delivery_id: r.lease_owner for r in results if r.lease_owner is not None}
        if not fenced:
            return results
        holders: dict[int, Any] = {}
        ids = sorted(fenced)  # rows locked in one order
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            holders.update(
                self._x(
                    conn,
                    "SELECT id, lease_owner FROM deliveries"
                    f" WHERE id IN ({','.join('?' * len(chunk))}){self._LOCK_ROW}",
                    chunk,
                ).fetchall()
            )
        stale = {i for i, owner in fenced.items() if holders.get(i, owner) != owner}
        if not stale:
            return results
        for r in results:
            if r.delivery_id in stale:
                log.warning(
                    "attempt.result_dropped",
                    delivery_id=r.delivery_id,
                    agent_id=r.agent_id,
                    attempt=r.attempt,
                    reason="its lease was taken over by another dispatcher",
                )
        return [r for r in results if r.delivery_id not in stale]

    def _record_in(
        self, conn: Any, results: Sequence[AttemptResult]
    ) -> list[tuple[OperationalEventType, str, str, AttemptResult | None]]:
        failing_since: dict[str, float | None] = {}  # per agent, after this batch
        disable: dict[str, str] = {}
        #: the failing shares reached, per agent, and the spell they were seen in
        levels: dict[str, tuple[int, float | None]] = {}
        told: list[tuple[OperationalEventType, str, str, AttemptResult | None]] = []
        for r in results:
            if r.operations:  # never about the operations URL itself: no loops
                continue
            if r.sent and r.status != "succeeded" and r.failing_level:
                if r.failing_level > levels.get(r.agent_id, (0, None))[0]:
                    levels[r.agent_id] = (r.failing_level, r.failing_since)
            if r.status == "failed" and r.sent:
                told.append((OperationalEventType.DELIVERY_EXHAUSTED, r.agent_id, r.error or "", r))
            if r.sent:
                if r.status == "succeeded":
                    failing_since[r.agent_id] = None
                elif failing_since.get(r.agent_id) is None:
                    failing_since[r.agent_id] = r.started_at
            if r.disable_reason:
                disable[r.agent_id] = r.disable_reason
        results = self._still_held(conn, results, set(disable))
        self._xmany(
            conn,
            "UPDATE deliveries SET attempts = attempts + ?, status = ?,"
            " next_attempt_at = ?, lease_until = 0, lease_owner = NULL,"
            " head_since = CASE WHEN status = 'held' THEN NULL ELSE head_since END,"
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
            " duration_ms, status_code, error, response_excerpt, url, response_headers,"
            " trigger) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT round_trigger FROM"
            " deliveries WHERE id = ? AND round_start + 1 = ?))"
            " ON CONFLICT (delivery_id, attempt)"
            " DO UPDATE SET started_at = excluded.started_at,"
            " duration_ms = excluded.duration_ms, status_code = excluded.status_code,"
            " error = excluded.error, response_excerpt = excluded.response_excerpt,"
            " url = excluded.url, response_headers = excluded.response_headers",
            [
                (
                    r.delivery_id,
                    r.attempt,
                    r.started_at,
                    r.duration_ms,
                    r.status_code,
                    r.error,
                    r.response_excerpt,
                    r.url,
                    r.response_headers,
                    r.delivery_id,
                    r.attempt,
                )
                for r in results
                if r.sent
            ],
        )
        # every agent's settings row changed in one order (agent id): two
        # recorders never lock two rows in opposite orders
        for agent_id in sorted(failing_since.keys() | levels.keys() | disable.keys()):
            self._record_endpoint(
                conn,
                agent_id,
                told,
                failing=failing_since.get(agent_id, ...),
                level=levels.get(agent_id),
                reason=disable.get(agent_id),
            )
        return told

    def _record_endpoint(
        self,
        conn: Any,
        agent_id: str,
        told: list[tuple[OperationalEventType, str, str, AttemptResult | None]],
        *,
        failing: float | EllipsisType | None,
        level: tuple[int, float | None] | None,
        reason: str | None,
    ) -> None:
        """What a batch's attempts say about one agent's endpoint: its failing
        spell (``failing``: ``None`` after a success, the first failure's start,
        or ``...`` for no change), the failing shares reached (``level``, in
        the spell it was seen in), and whether it is disabled (``reason``).
        Each operational event is decided by a compare-and-set, here."""
        if failing is None:
            # a success: recovered, if a failing spell or a disabling was told
            # (-1: enabled again after one, nothing told since)
            if self._x(
                conn,
                "UPDATE webhook_settings SET failing_notified = 0"
                " WHERE agent_id = ? AND failing_notified <> 0",
                (agent_id,),
            ).rowcount:
                told.append(
                    (
                        OperationalEventType.ENDPOINT_RECOVERED,
                        agent_id,
                        "a delivery succeeded",
                        None,
                    )
                )
            self._x(
                conn,
                "UPDATE webhook_settings SET failing_since = NULL"
                " WHERE agent_id = ? AND failing_since IS NOT NULL",
                (agent_id,),
            )
        elif failing is not ...:
            self._x(
                conn,
                "UPDATE webhook_settings SET failing_since = ?"
                " WHERE agent_id = ? AND failing_since IS NULL",
                (failing, agent_id),
            )
        if level is not None:
            # each share once per spell: the first transaction to reach it says
            # so, and only in the spell its attempt saw (not one a success ended)
            reached, spell = level
            if self._x(
                conn,
                "UPDATE webhook_settings SET failing_notified = ?"
                " WHERE agent_id = ? AND failing_notified < ? AND failing_since = ?",
                (reached, agent_id, reached, spell),
            ).rowcount:
                share = FAILING_SHARES[reached - 1]
                told.append(
                    (
                        OperationalEventType.ENDPOINT_FAILING,
                        agent_id,
                        f"failing without a success for {share:.0%} of the auto-disable window",
                        None,
                    )
                )
        if reason is not None:
            if self._x(
                conn,
                "UPDATE webhook_settings SET disabled = 1, disabled_reason = ?,"
                " failing_notified = ? WHERE agent_id = ? AND disabled = 0",
                (reason, len(FAILING_SHARES) + 1, agent_id),
            ).rowcount:
                told.append((OperationalEventType.ENDPOINT_DISABLED, agent_id, reason, None))
            # its queued deliveries are held from now on (those leased to a
            # dispatcher are held when their attempt ends); never an operational
            # event: it may be the one saying "disabled"
            self._x(
                conn,
                "UPDATE deliveries SET status = 'held', next_attempt_at = NULL, head_since = NULL,"
                f" last_error = ?, updated_at = {self._NOW} WHERE agent_id = ?"
                f" AND status = 'pending' AND lease_until <= {self._NOW}"
                f" AND event_type NOT IN ({_OPERATIONAL})",
                (f"endpoint_disabled: {reason}", agent_id),
            )

    def _still_held(
        self, conn: Any, results: Sequence[AttemptResult], disabling: set[str]
    ) -> Sequence[AttemptResult]:
        """The results, those ``held`` turned back to ``pending`` (due now) when
        their endpoint is enabled by the time this transaction writes: its
        settings rows are locked first, so a settings save that enables it
        either came before (and this sees it) or waits for this to commit (and
        then finds these held, and sends them)."""
        agents = sorted({r.agent_id for r in results if r.status == "held"} - disabling)
        if not agents:
            return results
        disabled = {
            row[0]
            for row in self._x(
                conn,
                "SELECT agent_id, disabled FROM webhook_settings"
                f" WHERE agent_id IN ({','.join('?' * len(agents))}) ORDER BY agent_id"
                + self._LOCK_ROW,
                agents,
            ).fetchall()
            if row[1]
        }
        return [
            msgspec.structs.replace(r, status="pending", next_attempt_at=r.started_at)
            if r.status == "held" and r.agent_id not in disabled | disabling
            else r
            for r in results
        ]

    def _tell(
        self, conn: Any, told: Sequence[tuple[OperationalEventType, str, str, AttemptResult | None]]
    ) -> tuple[list[OperationalEvent], list[NewDelivery]]:
        """The operational events, and their deliveries to the agents'
        ``operations_url`` (for those who have one)."""
        endpoints = self._endpoints(conn, {agent_id for _, agent_id, _, _ in told})
        now = time.time()
        at = datetime.fromtimestamp(now, UTC)
        events: list[OperationalEvent] = []
        queued: list[NewDelivery] = []
        for kind, agent_id, reason, result in told:
            settings = endpoints.get(agent_id, (None, None))[0]
            event = OperationalEvent(
                event_type=kind,
                agent_id=agent_id,
                url=(settings.url if settings else None) or "",
                reason=reason,
                created_at=at,
                delivery_id=UNSET if result is None else result.delivery_id,
                webhook_id=UNSET if result is None else result.webhook_id,
            )
            events.append(event)
            if settings is not None and settings.operations_url:
                queued.append(
                    NewDelivery(
                        webhook_id=new_webhook_id(),
                        agent_id=agent_id,
                        event_type=kind,
                        body=_json_encode(event),
                        created_at=now,
                        next_attempt_at=now,
                    )
                )
        return events, queued

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
