"""The delivery engine: its parts, started and stopped as one unit.

A host app (or the reference runtime) builds one engine, enters it in its
lifespan and hands it to :class:`~webhook_plugin.plugin.WebhookPlugin`::

    engine = DeliveryEngine(SQLiteStore("webhooks.db"), DeliveryConfig())
    async with engine:
        pm.register(WebhookPlugin(engine))
        ...

The parts, each in a module of its own: the outbox the hooks write to
(:mod:`.outbox`), the dispatcher that makes the attempts
(:mod:`.dispatcher`, its claim decisions in :mod:`.claims`), the endpoints'
settings (:mod:`.endpoints`), the delivery log (:mod:`.log`), the metrics
(:mod:`.metrics`) and the supervisor that keeps the loops running
(:mod:`.supervisor`). This module wires them, runs their lifecycle, and
carries what crosses them: an event from the hooks to the outbox (or into a
caller's transaction, :meth:`DeliveryEngine.collecting`), what a write
leased to the dispatcher, the attempts' results to the store and the
operational events they decide to the hooks; the store's blocking calls go
through one helper and its write lane (:mod:`._blocking`). Leaving the
``async with`` stops claiming, gives attempts in flight ``shutdown_grace``
seconds, writes everything queued, hands back the leases left and closes the
store; whatever was not delivered stays stored for the next start.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Self, Unpack

import anyio
import anyio.abc
import structlog

from .._version import __version__
from ..events import OperationalEventType, WebhookEventType
from ..exceptions import StorageError
from ..models import Agent
from ..payloads import OperationalEvent, encode, example_payload
from ..settings import WebhookSettings
from ..storage.base import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    DeliveryRecord,
    HeldEvents,
    Lease,
    LogFilters,
    NewDelivery,
    Store,
)
from ._blocking import Blocking
from .client import Http11Client, HttpClient
from .config import DeliveryConfig
from .dispatcher import Dispatcher
from .endpoints import Endpoints, EndpointTest
from .log import DeliveryLog
from .metrics import DeliveryMetrics
from .netguard import NetworkGuard
from .outbox import Batcher, Collected, Ticket
from .signing import new_webhook_id
from .supervisor import Supervisor

__all__ = ["DeliveryConfig", "DeliveryEngine", "EndpointTest"]

log = structlog.get_logger("webhook_plugin.delivery")


#: the hook that hears of each kind of operational event
_HOOKS: dict[OperationalEventType, str] = {
    OperationalEventType.ENDPOINT_FAILING: "on_endpoint_failing",
    OperationalEventType.ENDPOINT_DISABLED: "on_endpoint_disabled",
    OperationalEventType.ENDPOINT_RECOVERED: "on_endpoint_recovered",
    OperationalEventType.DELIVERY_EXHAUSTED: "on_delivery_exhausted",
}


class DeliveryEngine:
    """Owns a store and delivers what the outbox holds.

    :param store: an unopened store; the engine opens and closes it.
    :param config: tuning.
    :param client: the HTTP client seam (default: :class:`Http11Client` with the
        config's network guard).
    :param clock: Unix time, injectable for tests.
    """

    def __init__(
        self,
        store: Store,
        config: DeliveryConfig | None = None,
        *,
        client: HttpClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config = config or DeliveryConfig()
        self.guard = NetworkGuard(config.allow_private_hosts or ())
        self.client: HttpClient = client or Http11Client(
            self.guard, user_agent=f"webhook-plugin/{__version__}"
        )
        self.clock = clock
        self.policy = config.policy()
        self.metrics = DeliveryMetrics(store.backlog, clock)
        self.supervisor = Supervisor()
        #: the one helper for the store's blocking calls: reads, and the write lane
        self.blocking = self._blocking = blocking = Blocking(
            threads=4, writers=getattr(store, "writers", 1)
        )
        self.endpoints = Endpoints(
            store,
            blocking,
            self.client,
            policy=self.policy,
            timeout=config.timeout,
            rotation_grace=config.secret_rotation_grace,
            requeue_rate=config.requeue_rate,
            clock=clock,
        )
        self.outbox: Batcher[NewDelivery] = Batcher(
            self._insert,
            limiter=blocking.writes,
            on_written=self._stored,
            on_failed=self._write_failed,
        )
        # Nobody awaits attempt results: a failed write is retried, since a
        # result that is never written leaves its delivery leased (and sent
        # again) until the lease runs out.
        #: operational events the recorder's transactions decided, for the hooks
        self._told: deque[OperationalEvent] = deque()
        self._hook: Any = None
        self.recorder: Batcher[AttemptResult] = Batcher(
            self._record_attempts,
            limiter=blocking.writes,
            on_written=self._recorded,
            on_failed=self._write_failed,
            retries=8,
            # one result the database refuses must not lose the others with it
            # (their deliveries would be sent again once their leases ran out)
            isolate=lambda r: {"delivery_id": r.delivery_id, "agent_id": r.agent_id},
        )
        self.dispatcher = Dispatcher(
            store,
            self.client,
            self.recorder.submit,
            policy=self.policy,
            timeout=config.timeout,
            concurrency=config.concurrency,
            per_endpoint=config.per_endpoint_concurrency,
            poll_interval=config.poll_interval,
            clock=clock,
            limiter=blocking.writes,  # a claim is a write (it leases)
        )
        self.log = DeliveryLog(store, blocking, wake=self.dispatcher.wake, clock=clock)
        self._collecting: ContextVar[Collected | None] = ContextVar(
            f"webhook_plugin_collecting_{id(self)}", default=None
        )
        self._background_scope: anyio.CancelScope | None = None
        #: when the database was last asked about its health, and what it said
        self._db_checked: tuple[float, str | None] = (-1e9, None)
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._blocking(self.store.open)
        try:
            await self.endpoints.reload()
            self._background_scope = anyio.CancelScope()
            async with AsyncExitStack() as stack:
                tg = await stack.enter_async_context(anyio.create_task_group())
                run = self.supervisor.run
                await tg.start(run, "outbox", self.outbox.run)
                await tg.start(run, "recorder", self.recorder.run)
                if self.config.workers:
                    await tg.start(run, "dispatcher", self.dispatcher.run)
                tg.start_soon(self._run_background)
                self._tg = tg
                self._stack = stack.pop_all()
        except BaseException:
            await self._blocking(self.store.close)
            raise
        log.info("engine.started", store=repr(self.store), workers=self.config.workers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None and self._tg is not None
        stack = self._stack
        try:
            with anyio.CancelScope(shield=True):
                if self.config.workers:
                    await self.dispatcher.stop(self.config.shutdown_grace)
                # the batchers' run() returns once everything queued is written
                self.outbox.close()
                self.recorder.close()
                assert self._background_scope is not None
                self._background_scope.cancel()
            await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = self._stack = None
            with anyio.CancelScope(shield=True):
                try:
                    # what the last writes leased to the stopped dispatcher: handed back
                    self.dispatcher.take_leased()
                    await self.dispatcher.release_left()
                finally:
                    await self.client.aclose()
                    await self._blocking(self.store.close)
            log.info("engine.stopped")

    def health(self) -> str | None:
        """Why the engine is not healthy now, or ``None`` when it is.

        Not healthy: not running, one of its loops failed within the last
        minute (it is restarted with backoff meanwhile), or its last write to
        the database failed.
        """
        if self._tg is None:
            return "the delivery engine is not running"
        return self.supervisor.problem()

    async def check_health(self, *, timeout: float = 2.0) -> str | None:
        """:meth:`health`, whether the database answers a query, and whether a
        write could begin (no other process holding the write lock), within
        ``timeout``."""
        problem = self.health()
        if problem is not None:
            return problem
        # the database is asked at most once a second, however often health is
        # (an unauthenticated /healthz flood must not become a write flood)
        now = anyio.current_time()
        if now - self._db_checked[0] < 1.0:
            return self._db_checked[1]
        problem = None
        try:
            with anyio.fail_after(timeout):
                await self._blocking(self.store.ping)
        except (StorageError, TimeoutError):
            problem = "the database is unavailable"
        ping_write = getattr(self.store, "ping_write", None)  # a store of another kind
        if problem is None and ping_write is not None:
            try:
                with anyio.fail_after(timeout):
                    await self._blocking(ping_write, timeout / 2)
            except (StorageError, TimeoutError):
                problem = "the database cannot be written now (its write lock is held)"
        self._db_checked = (anyio.current_time(), problem)
        return problem

    # loops that only stop when the engine does -----------------------------------------------

    async def _run_background(self) -> None:
        assert self._background_scope is not None
        with self._background_scope:
            await self.supervisor.run("background", self._background)

    async def _background(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.config.settings_refresh > 0:
                tg.start_soon(self._refresh_loop)
            if self.config.workers and self.store.supports_notify:
                tg.start_soon(self._listen_loop)
            if self.config.workers:
                tg.start_soon(self._purge_loop)

    async def _listen_loop(self) -> None:
        """Wake the dispatcher when another process queues deliveries."""
        while True:
            try:
                woken = await anyio.to_thread.run_sync(self.store.wait_for_new, 0.25)
            except StorageError as exc:  # the poll interval still finds the work
                log.warning("listen.failed", error=str(exc))
                await anyio.sleep(self.config.poll_interval)
                continue
            if woken:
                self.dispatcher.wake()

    async def _purge_loop(self) -> None:
        """The log's retention, and the held deliveries' bounds."""
        config = self.config
        while True:
            try:
                if config.retention > 0:
                    await self.purge_log()
                await self._blocking.write(
                    functools.partial(
                        self.store.expire_held,
                        max_count=config.held_max,
                        max_age=config.held_max_age,
                        now=self.clock(),
                    )
                )
            except StorageError as exc:  # the next round tries again
                log.warning("log.purge_failed", error=str(exc))
            await anyio.sleep(config.purge_interval)

    async def _refresh_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.settings_refresh)
            try:
                await self.endpoints.reload()
            except StorageError as exc:  # keep the old cache; try again next time
                log.warning("settings.refresh_failed", error=str(exc))

    # the hook path (no I/O) ------------------------------------------------------------------

    def settings_for(self, agent_id: str) -> WebhookSettings | None:
        return self.endpoints.cached(agent_id)

    def enqueue(
        self,
        agent_id: str,
        event_type: WebhookEventType,
        body: bytes,
        conversation_id: str | None = None,
    ) -> Ticket:
        now = self.clock()
        webhook_id = new_webhook_id()
        settings = self.endpoints.cached(agent_id)
        delivery = NewDelivery(
            webhook_id=webhook_id,
            agent_id=agent_id,
            event_type=event_type,
            body=body,
            created_at=now,
            next_attempt_at=now + self.policy.first_delay(),
            conversation_id=conversation_id,
            ordered=conversation_id is not None and settings is not None and settings.ordered,
        )
        collected = self._collecting.get()
        if collected is not None:
            collected.items.append(delivery)
            return Ticket(event_type, webhook_id, collected.batch)
        return Ticket(event_type, webhook_id, self.outbox.submit(delivery))

    @contextmanager
    def collecting(self) -> Iterator[Collected]:
        """Within this block (in this task), events queued by the hooks are
        collected rather than written by the outbox, so that the caller can
        write them in the same transaction as the rest of what it changes
        (:meth:`~webhook_plugin.storage.base.Store.write_messages`), then call
        :meth:`written`. Their tickets are stored once that is done."""
        collected = Collected()
        token = self._collecting.set(collected)
        try:
            yield collected
        finally:
            self._collecting.reset(token)

    def written(
        self, collected: Collected, error: BaseException | None = None, *, leased: bool = False
    ) -> None:
        """The caller's transaction with ``collected`` committed (or failed with
        ``error``): settle their tickets and let the dispatcher know. ``leased``:
        the caller's write leased what it could (:meth:`lease`, :meth:`leased`);
        otherwise the dispatcher claims them."""
        collected.batch.finish(error)
        if error is None and collected.items:
            if not leased:  # queued in the caller's transaction for a claim
                self.dispatcher.wake()
            self._stored(collected.items)
        else:
            self.dispatcher.take_leased()

    def lease(self) -> Lease | None:
        """How a write of this process (in its thread) leases the due deliveries
        it queues straight to the dispatcher (None: it leases none); say what
        it leased with :meth:`leased`."""
        if not self.config.workers or not getattr(self.store, "leases_on_insert", False):
            return None  # no dispatcher here, or a store of another kind
        return self.dispatcher.lease()

    def leased(self, claimed: Sequence[ClaimedDelivery] | None, queued: int) -> None:
        """From the writing thread, once its transaction committed: it leased
        ``claimed`` of the ``queued`` (see :meth:`Dispatcher.leased
        <.dispatcher.Dispatcher.leased>`)."""
        self.dispatcher.leased(claimed or (), queued)

    def _insert(self, items: Sequence[NewDelivery]) -> None:
        lease = self.lease()
        if lease is None:
            self.leased(self.store.insert_deliveries(items), len(items))
        else:
            self.leased(self.store.insert_deliveries(items, lease), len(items))

    def _write_failed(self, exc: BaseException) -> None:
        self.supervisor.failed("storage", "the database cannot be written")
        self.dispatcher.take_leased()  # a chunk that committed before the failure

    def _stored(self, items: Sequence[NewDelivery]) -> None:
        self.supervisor.recovered("storage")
        self.metrics.stored(items)
        self.dispatcher.take_leased()

    def report_to(self, hook: Any) -> None:
        """Call the operational hooks (``on_endpoint_disabled``...) of this relay
        (``pm.hook``) for the operational events this process's attempts cause."""
        self._hook = hook

    def _record_attempts(self, results: Sequence[AttemptResult]) -> None:
        """The recorder's write (in a worker thread): the events it decided wait
        for :meth:`_recorded`, on the event loop."""
        # a store written before operational events returns None
        self._told.extend(self.store.record_attempts(results) or ())

    def _recorded(self, results: Sequence[AttemptResult]) -> None:
        self.supervisor.recovered("storage")
        self.metrics.recorded(results)
        self.endpoints.disabled_by(results)
        told = False
        while self._told:
            told = True
            self._tell(self._told.popleft())
        if told or any(r.ordered and r.status != "pending" for r in results):
            # the next of those conversations may go now; events for an operations URL
            self.dispatcher.wake()

    def _tell(self, event: OperationalEvent) -> None:
        """One operational event to the hooks; what a plugin raises is logged."""
        log.warning(
            "endpoint.event", event_type=str(event.event_type), agent_id=event.agent_id,
            reason=event.reason,
        )  # fmt: skip
        if self._hook is None:
            return
        name = _HOOKS[event.event_type]
        try:
            getattr(self._hook, name)(event=event)
        except Exception:
            log.exception("hook.failed", hook=name, agent_id=event.agent_id)

    # the endpoints' settings and the delivery log (see endpoints.py and log.py) --------------

    async def get_settings(self, agent_id: str) -> WebhookSettings | None:
        return await self.endpoints.get(agent_id)

    async def save_settings(
        self, agent_id: str, settings: WebhookSettings, *, held_events: HeldEvents = "send"
    ) -> WebhookSettings:
        """:meth:`save_settings_reporting`, without its report."""
        return (await self.save_settings_reporting(agent_id, settings, held_events=held_events))[0]

    async def save_settings_reporting(
        self, agent_id: str, settings: WebhookSettings, *, held_events: HeldEvents = "send"
    ) -> tuple[WebhookSettings, str | None]:
        """:meth:`Endpoints.save_reporting <.endpoints.Endpoints.save_reporting>`:
        also the signing secret this save generated (the agent's first), if it did.
        What was held while the endpoint was disabled is sent (or discarded)."""
        saved = await self.endpoints.save_reporting(agent_id, settings, held_events=held_events)
        self.dispatcher.wake()  # what was held may be due now
        return saved

    async def rotate_secret(self, agent_id: str, *, grace: float | None = None) -> str:
        """:meth:`Endpoints.rotate_secret <.endpoints.Endpoints.rotate_secret>`."""
        return await self.endpoints.rotate_secret(agent_id, grace=grace)

    async def send_example(self, agent: Agent, event_type: WebhookEventType) -> str:
        """Queue one example event of ``event_type`` (:func:`~webhook_plugin.payloads.example_payload`,
        conversation ``example``) to the agent's URL: delivered, retried and
        logged like any other; its ``webhook-id``. Whatever the agent's event
        filter says: the owner asked for this one."""
        body = encode(example_payload(event_type, agent))
        ticket = self.enqueue(agent.id, event_type, body, "example")
        await ticket
        return ticket.webhook_id

    async def test_endpoint(self, agent_id: str, *, slow_after: float = 5.0) -> EndpointTest:
        """:meth:`Endpoints.test <.endpoints.Endpoints.test>`."""
        return await self.endpoints.test(agent_id, slow_after=slow_after)

    async def render_metrics(self) -> str:
        """This process's counters and the store's backlog, for Prometheus."""
        return await self._blocking(self.metrics.render)

    async def list_deliveries(self, **filters: Unpack[LogFilters]) -> list[DeliveryRecord]:
        """The delivery log, newest first, filtered (see
        :meth:`~webhook_plugin.storage.base.DeliveryStore.list_deliveries`)."""
        return await self.log.find(**filters)

    async def count_deliveries(self, agent_id: str | None = None) -> dict[str, int]:
        """How many deliveries are in each state (of one agent's, or all)."""
        return await self._blocking(self.store.count_deliveries, agent_id)

    async def get_delivery(self, delivery_id: int, agent_id: str | None = None) -> DeliveryRecord:
        return await self.log.get(delivery_id, agent_id)

    async def list_attempts(self, delivery_id: int) -> list[AttemptRecord]:
        return await self.log.attempts(delivery_id)

    async def redeliver(self, delivery_id: int, agent_id: str | None = None) -> DeliveryRecord:
        """Queue a delivery again, with its original ``webhook-id``."""
        return await self.log.redeliver(delivery_id, agent_id)

    async def redeliver_failed(self, *, agent_id: str | None = None, since: float = 0.0) -> int:
        """Queue again every failed delivery created at or after ``since``."""
        return await self.log.redeliver_failed(agent_id=agent_id, since=since)

    async def recover(
        self,
        agent_id: str,
        *,
        since: float,
        until: float | None = None,
        event_types: Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Queue again the agent's ``failed`` and ``held`` deliveries created in
        ``[since, until)``, oldest first, at the config's ``requeue_rate``; how
        many (``dry_run``: how many would be). Idempotent: what is pending
        already is not queued twice."""
        queued = await self._blocking.write(
            functools.partial(
                self.store.recover,
                agent_id,
                since=since,
                until=until,
                event_types=event_types,
                rate=self.config.requeue_rate,
                dry_run=dry_run,
            )
        )
        if queued and not dry_run:
            self.dispatcher.wake()
        return queued

    async def purge_log(self, older_than: float | None = None) -> int:
        """Delete finished deliveries older than ``older_than`` seconds
        (default: the configured retention). Pending ones are kept."""
        return await self.log.purge(self.config.retention if older_than is None else older_than)
