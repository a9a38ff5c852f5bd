"""What chat messages change, written in shared transactions (group commit).

A message's unit of work (its conversation, its messages, the deliveries of
its events and its stored answer) is handed to :class:`MessageWrites`; the
units of the messages in flight at the same moment go to the database in one
transaction, and each message's caller gets its answer back once its unit is
durable. The outbox does the same for events alone (:mod:`..delivery.outbox`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.abc
import structlog

from ...delivery._blocking import Blocking
from ...delivery.engine import DeliveryEngine
from ...delivery.outbox import Batcher, Collected
from ...exceptions import WebhookPluginError
from .store import ChatStore, MessageWrite

__all__ = ["MessageWrites", "Superseded"]

log = structlog.get_logger("webhook_plugin.runtime")

T = TypeVar("T")


class Superseded(WebhookPluginError):
    """Why the events of a message are not queued: a request with the same
    ``messageId`` was answered first, and its events stand."""

    def __init__(self) -> None:
        super().__init__("another request with the same messageId was answered first")


class MessageWrites:
    """The group commit of messages, and the purge of their stored answers.

    :param store: the chat store that writes them.
    :param engine: the delivery engine whose events are written with them.
    :param blocking: runs a blocking call off the event loop.
    """

    def __init__(
        self,
        store: ChatStore,
        engine: DeliveryEngine,
        blocking: Blocking,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._engine = engine
        self._blocking = blocking
        self._clock = clock
        # Not through the engine's write lane: a client waits on these, and their
        # transaction bounds its own wait (WRITE_WAIT), which a background write
        # ahead of them in the lane (waiting out another process's lock) would
        # not. What a batch leased goes to the dispatcher once it committed,
        # whether or not its waiters are still there to say so.
        self._batcher: Batcher[MessageWrite] = Batcher(
            self._write,
            max_batch=512,
            on_written=lambda _: engine.dispatcher.take_leased(),
            on_failed=lambda _: engine.dispatcher.take_leased(),  # a chunk that committed
        )
        self._running = False

    async def commit(self, write: MessageWrite, collected: Collected) -> None:
        """Store ``write`` and the events ``collected`` with it, in one transaction
        shared with the other messages being committed; return once it is durable.

        What the database decided is on ``write`` (see
        :meth:`~.chat_store.ChatStore.write_messages`): when it says ``earlier``
        or ``refused``, nothing of it was stored and its events are void."""
        write.deliveries = collected.items
        try:
            if self._running:
                await self._batcher.submit(write).wait()
            else:  # nobody runs the group commit (an app that embeds us bare)
                await self._blocking(self._write, [write])
        except BaseException as exc:
            self._engine.written(collected, exc)
            raise
        if write.refused is not None:
            self._engine.written(collected, write.refused)
        elif write.earlier is not None:
            self._engine.written(collected, Superseded())
        else:
            self._engine.written(collected, leased=True)

    def _write(self, writes: Sequence[MessageWrite]) -> None:
        """One transaction (in a worker thread); the due deliveries it queues
        are leased straight to this process's dispatcher, as many as it wants."""
        lease = self._engine.lease() if getattr(self._store, "leases_on_insert", False) else None
        leased = (
            self._store.write_messages(writes)  # a chat store of another kind
            if lease is None
            else self._store.write_messages(writes, lease)
        )
        queued = [w for w in writes if w.earlier is None and w.refused is None]
        self._engine.leased(leased, sum(len(w.deliveries) for w in queued))

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Group-commit messages until :meth:`close` (run it in a task)."""
        self._running = True
        try:
            await self._batcher.run(task_status=task_status)
        finally:
            self._running = False

    def close(self) -> None:
        """Write what was submitted, then let :meth:`run` return."""
        self._batcher.close()

    async def purge_loop(self) -> None:
        """Forget stored answers past the delivery log's retention, every
        ``purge_interval`` (run it in a task; it never returns)."""
        config = self._engine.config
        while config.retention > 0:
            try:
                await self._blocking(
                    functools.partial(
                        self._store.purge_answers, before=self._clock() - config.retention
                    )
                )
            except WebhookPluginError as exc:  # the next round tries again
                log.warning("answers.purge_failed", error=str(exc))
            await anyio.sleep(config.purge_interval)
