"""The agents' webhook settings in SQL: read, written, and changed in one
transaction (:meth:`SettingsSQL.update_settings`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..settings import WebhookSettings
from ._plumbing import Plumbing, _decode_settings, _json_encode, log
from .base import DEFAULT_REQUEUE_RATE, HeldEvents

#: the last error of a held delivery its owner chose not to send
DISCARDED = "discarded: the endpoint was enabled again with heldEvents=discard"

__all__ = ["SettingsSQL"]


class SettingsSQL(Plumbing):
    """The settings part of the SQL delivery store."""

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

    def update_settings(
        self,
        agent_id: str,
        change: Callable[[WebhookSettings | None], WebhookSettings],
        *,
        held_events: HeldEvents = "send",
        rate: float = DEFAULT_REQUEUE_RATE,
    ) -> WebhookSettings:
        """Read an agent's settings, ``change`` them and write the result, in one
        transaction that holds the row: two updates at once (a secret rotation
        and a settings save) run one after the other, so neither undoes the
        other. Whatever ``change`` raises rolls the transaction back.

        Settings written enabled end the hold on the agent's ``held``
        deliveries, in the same transaction: ``held_events="send"`` queues
        them again, oldest first, ``rate`` per second; ``"discard"`` fails them."""
        with self._tx() as conn:
            row = self._x(
                conn,
                "SELECT data, disabled, disabled_reason FROM webhook_settings WHERE agent_id = ?"
                + self._LOCK_ROW,
                (agent_id,),
            ).fetchone()
            settings = change(None if row is None else _decode_settings(agent_id, row))
            self._write_settings(conn, agent_id, settings, held_events, rate)
        return settings

    def _write_settings(
        self,
        conn: Any,
        agent_id: str,
        settings: WebhookSettings,
        held_events: HeldEvents,
        rate: float,
    ) -> None:
        data = _json_encode(msgspec.structs.replace(settings, disabled=False, disabled_reason=None))
        self._x(
            conn,
            "INSERT INTO webhook_settings (agent_id, data, disabled, disabled_reason,"
            " failing_since, updated_at) VALUES (?, ?, ?, ?, NULL, ?)"
            " ON CONFLICT (agent_id) DO UPDATE SET data = excluded.data,"
            " disabled = excluded.disabled, disabled_reason = excluded.disabled_reason,"
            " failing_since = NULL, updated_at = excluded.updated_at,"
            # a new failing spell starts: its shares are told again, and the
            # next success says "recovered" if anything was told (-1)
            " failing_notified = CASE WHEN webhook_settings.failing_notified > 0 THEN -1"
            " ELSE webhook_settings.failing_notified END",
            (agent_id, data, int(settings.disabled), settings.disabled_reason, time.time()),
        )
        if settings.disabled:
            return
        held = [
            row[0]
            for row in self._x(
                conn,
                "SELECT id FROM deliveries WHERE agent_id = ? AND status = 'held' ORDER BY id"
                + self._LOCK_ROW,
                (agent_id,),
            ).fetchall()
        ]
        if not held:
            return
        if held_events == "send":
            self._requeue(conn, held, rate)
        else:
            self._xmany(
                conn,
                "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,"
                f" last_error = ?, updated_at = {self._NOW} WHERE id = ? AND status = 'held'",
                [(DISCARDED, i) for i in held],
            )
        log.info(
            "deliveries.unheld", agent_id=agent_id, deliveries=len(held), held_events=held_events
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
