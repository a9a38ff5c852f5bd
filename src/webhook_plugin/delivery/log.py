"""The delivery log: what was sent, how each attempt went, and sending again.

Reads of the log and the two ways to queue a delivery again (one, or every
failed one since a time), each with its original ``webhook-id``; and the
purge of finished deliveries past their retention.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Unpack

import structlog

from ..exceptions import NotFound
from ..storage.base import AttemptRecord, DeliveryRecord, LogFilters, Store
from ._blocking import Blocking

__all__ = ["DeliveryLog"]

log = structlog.get_logger("webhook_plugin.delivery")


class DeliveryLog:
    """The delivery log of a store.

    :param wake: called when deliveries were queued again (the dispatcher looks).
    """

    def __init__(
        self,
        store: Store,
        blocking: Blocking,
        *,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._blocking = blocking
        self._wake = wake
        self._clock = clock

    async def find(self, **filters: Unpack[LogFilters]) -> list[DeliveryRecord]:
        return await self._blocking(functools.partial(self._store.list_deliveries, **filters))

    async def get(self, delivery_id: int, agent_id: str | None = None) -> DeliveryRecord:
        """:raises NotFound: when there is no such delivery (for that agent)."""
        record = await self._blocking(self._store.get_delivery, delivery_id)
        if agent_id is not None and record.agent_id != agent_id:
            raise NotFound(f"delivery {delivery_id} does not exist for agent {agent_id!r}")
        return record

    async def attempts(self, delivery_id: int) -> list[AttemptRecord]:
        return await self._blocking(self._store.list_attempts, delivery_id)

    async def redeliver(self, delivery_id: int, agent_id: str | None = None) -> DeliveryRecord:
        """Queue a delivery again, with its original ``webhook-id``."""
        await self.get(delivery_id, agent_id)
        record = await self._blocking.write(self._store.redeliver, delivery_id, now=self._clock())
        self._wake()
        return record

    async def redeliver_failed(self, *, agent_id: str | None = None, since: float = 0.0) -> int:
        """Queue again every failed delivery created at or after ``since``."""
        count = await self._blocking.write(
            self._store.redeliver_failed, agent_id=agent_id, since=since, now=self._clock()
        )
        self._wake()
        return count

    async def purge(self, older_than: float) -> int:
        """Delete finished deliveries older than ``older_than`` seconds; pending
        ones are kept."""
        removed = await self._blocking.write(self._store.purge, before=self._clock() - older_than)
        if removed:
            log.info("log.purged", deliveries=removed)
        return removed
