"""The outbox: the hook path hands events here and never waits on I/O.

:class:`Batcher` collects items on the event loop and writes them in batches,
one worker-thread hop and one transaction per batch (group commit): while a
batch is being written, the next one fills up. Every submitted item belongs to
a batch that can be awaited; :class:`Ticket` is what the hooks return, and
awaiting it returns once the event is durably stored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import anyio
import structlog

from ..events import WebhookEventType
from ..exceptions import StorageError
from ..settings import WebhookSettings

__all__ = ["Batcher", "Collected", "Outbox", "Ticket"]

log = structlog.get_logger("webhook_plugin.delivery")

T = TypeVar("T")


class _Batch:
    __slots__ = ("_done", "error", "finished", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.finished = False
        self.error: BaseException | None = None
        self._done: anyio.Event | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.finished = True
        if self._done is not None:
            self._done.set()

    async def wait(self) -> None:
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        if self.error is not None:
            raise StorageError(f"the outbox could not store the event: {self.error}")


class Ticket:
    """A queued webhook delivery (a :class:`~webhook_plugin.hookspecs.QueuedEvent`).

    ``await ticket`` returns once the event is durably stored, or raises
    :class:`~webhook_plugin.exceptions.StorageError`.
    """

    __slots__ = ("_batch", "event_type", "webhook_id")

    def __init__(self, event_type: WebhookEventType, webhook_id: str, batch: _Batch) -> None:
        self.event_type = event_type
        self.webhook_id = webhook_id
        self._batch = batch

    def __repr__(self) -> str:
        state = "stored" if self._batch.finished and not self._batch.error else "queued"
        return f"<Ticket {self.event_type} {self.webhook_id} {state}>"

    @property
    def stored(self) -> bool:
        return self._batch.finished and self._batch.error is None

    def __await__(self) -> Generator[Any, None, None]:
        return self._batch.wait().__await__()


class Collected:
    """Events queued while a caller collects them
    (:meth:`~webhook_plugin.delivery.engine.DeliveryEngine.collecting`): the caller
    writes them in its own transaction, with whatever else they belong to, then
    says so with :meth:`~webhook_plugin.delivery.engine.DeliveryEngine.written`.
    Their tickets are stored once that transaction is."""

    __slots__ = ("batch", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.batch = _Batch()

    def holds(self, value: object) -> bool:
        """Whether ``value`` is the ticket of an event collected here."""
        return isinstance(value, Ticket) and value._batch is self.batch


class Outbox(Protocol):
    """What :class:`~webhook_plugin.plugin.WebhookPlugin` needs from the delivery side."""

    def settings_for(self, agent_id: str) -> WebhookSettings | None:
        """The agent's current settings, from memory (no I/O)."""
        ...

    def enqueue(
        self,
        agent_id: str,
        event_type: WebhookEventType,
        body: bytes,
        conversation_id: str | None = None,
    ) -> Ticket:
        """Queue one encoded event (a JSON object) for delivery; never blocks.
        With ``conversation_id``, the stored body gets the event's ``sequence``
        in that conversation."""
        ...


class Batcher(Generic[T]):
    """Writes submitted items in batches from one background task.

    :param write: a blocking function that stores a batch in one transaction;
        it runs in a worker thread.
    :param limiter: bounds the worker threads this batcher may occupy.
    :param on_written: called on the event loop after each successful batch.
    :param on_failed: called on the event loop with the error of each failed write.
    :param max_batch: the most items written in one transaction.
    :param retries: how often a failed write is tried again (with backoff)
        before the batch's waiters get the error.
    :param isolate: for a batch nobody waits on item by item: once its retries
        failed, write it by halves, so that the items the store refuses (a row
        another version wrote, say) are left out, each logged with
        ``isolate(item)``, and the others are written. When the first four
        such writes fail, the store refuses everything alike (it is down): the
        batch fails whole, as without ``isolate``.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], object],
        *,
        limiter: anyio.CapacityLimiter | None = None,
        on_written: Callable[[Sequence[T]], None] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
        max_batch: int = 5000,
        retries: int = 0,
        isolate: Callable[[T], dict[str, object]] | None = None,
    ) -> None:
        self._write = write
        self._limiter = limiter or anyio.CapacityLimiter(1)
        self._on_written = on_written
        self._on_failed = on_failed
        self._max_batch = max_batch
        self._retries = retries
        self._describe = isolate
        self._current = _Batch()
        self._wake: anyio.Event | None = None
        self._closing = False

    def __len__(self) -> int:
        return len(self._current.items)

    def submit(self, item: T) -> _Batch:
        """Add an item to the batch being filled; return that batch (awaitable)."""
        if self._closing:
            raise StorageError("the outbox is shut down; the event was not queued")
        batch = self._current
        batch.items.append(item)
        if self._wake is not None:
            self._wake.set()
        return batch

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write batches until :meth:`close` is called and everything is written."""
        task_status.started()
        while True:
            if not self._current.items:
                if self._closing:
                    return
                self._wake = anyio.Event()
                await self._wake.wait()
                self._wake = None
                continue
            batch, self._current = self._current, _Batch()
            # Once a batch is taken, it is written even if we are cancelled:
            # its submitters were promised an answer.
            with anyio.CancelScope(shield=True):
                await self._flush(batch)

    async def _flush(self, batch: _Batch) -> None:
        items = batch.items
        written = [0]  # items committed so far: a retry starts after them
        for attempt in range(self._retries + 1):
            try:
                await anyio.to_thread.run_sync(
                    self._write_chunks, items, written, limiter=self._limiter
                )
                break
            except Exception as exc:
                if self._on_failed is not None:
                    self._on_failed(exc)
                if attempt == self._retries:
                    left = len(items) - written[0]
                    if self._describe is not None and left > 1:
                        if await self._isolate(batch, items, written[0]):
                            return
                    which = self._describe(items[-1]) if self._describe and left == 1 else {}
                    log.error("batch.write_failed", items=left, error=str(exc), **which)
                    batch.finish(exc)
                    return
                log.warning(
                    "batch.write_retry", items=len(items), attempt=attempt + 1, error=str(exc)
                )
                await anyio.sleep(min(0.05 * 2**attempt, 2.0))
        batch.finish()
        if self._on_written is not None:
            self._on_written(items)

    async def _isolate(self, batch: _Batch, items: list[T], committed: int) -> bool:
        """Write ``items[committed:]`` leaving out those the store refuses; whether
        it could tell them apart (the batch is then finished)."""
        assert self._describe is not None
        written, refused, left = await anyio.to_thread.run_sync(
            self._write_halves, items[committed:], limiter=self._limiter
        )
        if not written:
            return False  # the store refuses them all alike: it is down
        for item, exc in refused:
            log.error("batch.item_refused", error=str(exc), **self._describe(item))
        if left:
            log.error("batch.write_failed", items=len(left), error=str(left[0][1]))
        errors = [exc for _, exc in refused + left]
        batch.finish(errors[0] if errors else None)
        if self._on_written is not None:
            self._on_written(items[:committed] + written)
        return True

    def _write_halves(
        self, items: list[T]
    ) -> tuple[list[T], list[tuple[T, Exception]], list[tuple[T, Exception]]]:
        """Write ``items`` by halves, a half that fails by its halves in turn,
        breadth first: (written, refused alone, left unwritten). It gives up,
        leaving the rest, when its first four writes fail (the store is down,
        not picky: two refused items cannot fail more than three at the start)
        or after more failures than finding a few refused items takes."""
        written: list[T] = []
        refused: list[tuple[T, Exception]] = []
        failures, budget = 0, 8 + 2 * len(items).bit_length()
        todo = deque([items[: len(items) // 2], items[len(items) // 2 :]])
        while todo:
            part = todo.popleft()
            try:
                self._write(part)
            except Exception as exc:
                failures += 1
                if (failures >= 4 and not written) or failures > budget:
                    return written, refused, [(item, exc) for p in (part, *todo) for item in p]
                if len(part) == 1:
                    refused.append((part[0], exc))
                else:
                    todo += [part[: len(part) // 2], part[len(part) // 2 :]]
            else:
                written.extend(part)
        return written, refused, []

    def _write_chunks(self, items: list[T], written: list[int]) -> None:
        # One transaction per chunk; written[0] moves only once a chunk committed.
        while written[0] < len(items):
            chunk = items[written[0] : written[0] + self._max_batch]
            self._write(chunk)
            written[0] += len(chunk)

    def close(self) -> None:
        """Stop accepting items; :meth:`run` returns once the last batch is written."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
