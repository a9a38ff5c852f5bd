"""The delivery engine: outbox, dispatcher, recorder and settings, as one unit.

A host app (or the reference runtime) builds one engine, enters it in its
lifespan and hands it to :class:`~webhook_plugin.plugin.WebhookPlugin`::

    engine = DeliveryEngine(SQLiteStore("webhooks.db"), DeliveryConfig())
    async with engine:
        pm.register(WebhookPlugin(engine))
        ...

Leaving the ``async with`` stops claiming, gives attempts in flight
``shutdown_grace`` seconds, writes everything queued and closes the store;
whatever was not delivered stays stored for the next start.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self

import anyio
import anyio.abc
import msgspec
import structlog

from .._version import __version__
from ..events import WebhookEventType
from ..exceptions import NotFound, StorageError, TransportError
from ..payloads import WebhookTest
from ..settings import WebhookSettings, generate_secret
from ..storage.base import (
    AttemptRecord,
    AttemptResult,
    DeliveryRecord,
    DeliveryStatus,
    NewDelivery,
    Store,
)
from .client import Http11Client, HttpClient
from .config import DeliveryConfig
from .dispatcher import Dispatcher, signed_headers
from .metrics import DeliveryMetrics
from .netguard import NetworkGuard
from .outbox import Batcher, Collected, Ticket
from .outcome import classify
from .signing import new_webhook_id

__all__ = ["DeliveryConfig", "DeliveryEngine", "EndpointTest"]

log = structlog.get_logger("webhook_plugin.delivery")

#: seconds before a failed loop is restarted: the first wait, and the longest
_RESTART_BACKOFF: Final = (0.1, 30.0)
#: seconds the engine reports a loop's failure as unhealthy
_UNHEALTHY_FOR: Final = 60.0


def _root_cause(exc: BaseException) -> BaseException:
    """The one exception inside task groups' exception groups, if there is one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _StartedOnce:
    """A task status that passes on only the first ``started()``."""

    __slots__ = ("_inner", "done")

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self._inner.started(value)


class EndpointTest(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """How a settings test went (:meth:`DeliveryEngine.test_endpoint`).

    ``status`` is ``ok`` (a 2xx answer in time), ``slow`` (a 2xx answer, but
    later than the test's ``slow_after``) or ``unreachable`` (no 2xx answer:
    refused or blocked address, TLS or connection error, timeout, or another
    status, given in ``status_code``). ``error`` says why, never with a header
    value in it.
    """

    status: Literal["ok", "slow", "unreachable"]
    status_code: int | None
    duration_ms: float
    error: str | None


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
        self.guard = NetworkGuard(config.allow_private_hosts)
        self.client: HttpClient = client or Http11Client(
            self.guard, user_agent=f"webhook-plugin/{__version__}"
        )
        self.clock = clock
        self.policy = config.policy()
        self.metrics = DeliveryMetrics(store.backlog, clock)
        self._db = anyio.CapacityLimiter(4)
        self._settings: dict[str, WebhookSettings] = {}
        self.outbox: Batcher[NewDelivery] = Batcher(
            store.insert_deliveries, on_written=self._stored, on_failed=self._write_failed
        )
        # Nobody awaits attempt results: a failed write is retried, since a
        # result that is never written leaves its delivery leased (and sent
        # again) until the lease runs out.
        self.recorder: Batcher[AttemptResult] = Batcher(
            store.record_attempts,
            on_written=self._recorded,
            on_failed=self._write_failed,
            retries=8,
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
        )
        self._background_scope: anyio.CancelScope | None = None
        self._collecting: ContextVar[Collected | None] = ContextVar(
            f"webhook_plugin_collecting_{id(self)}", default=None
        )
        #: held while settings are written and cached, so the cache follows the database
        self._settings_lock = anyio.Lock()
        #: the last failure of each loop: (anyio time, reason)
        self._failures: dict[str, tuple[float, str]] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._run_sync(self.store.open)
        try:
            self._settings = await self._run_sync(self.store.all_settings)
            self._background_scope = anyio.CancelScope()
            async with AsyncExitStack() as stack:
                tg = await stack.enter_async_context(anyio.create_task_group())
                await tg.start(self._supervise, "outbox", self.outbox.run)
                await tg.start(self._supervise, "recorder", self.recorder.run)
                if self.config.workers:
                    await tg.start(self._supervise, "dispatcher", self.dispatcher.run)
                tg.start_soon(self._run_background)
                self._tg = tg
                self._stack = stack.pop_all()
        except BaseException:
            await self._run_sync(self.store.close)
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
                await self.client.aclose()
                await self._run_sync(self.store.close)
            log.info("engine.stopped")

    async def _supervise(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one of the engine's loops; if it ever raises, restart it with backoff.

        Every loop already turns a delivery's or a database's trouble into a
        recorded outcome; this is the last line, for a bug of ours. The
        process stays up (its API still queues events, durably) and says so:
        :meth:`health` reports the failure, so that ``/healthz`` answers 503
        and an orchestrator can see it, or replace the process.
        """
        once = _StartedOnce(task_status)
        once.done = task_status is anyio.TASK_STATUS_IGNORED  # nobody waits for it
        delay = _RESTART_BACKOFF[0]
        logged: set[str] = set()
        while True:
            began = anyio.current_time()
            try:
                if once.done:
                    await run()
                else:
                    await run(task_status=once)
                return
            except Exception as exc:
                if not once.done:
                    raise  # it never started: starting the engine fails
                kind = type(_root_cause(exc)).__name__
                self._failures[name] = (anyio.current_time(), f"{name} failed ({kind})")
                if kind in logged:  # the traceback was logged already
                    log.error("engine.task_failed", task=name, error_type=kind, retry_in=delay)
                else:
                    logged.add(kind)
                    log.error(
                        "engine.task_failed",
                        task=name,
                        error_type=kind,
                        retry_in=delay,
                        exc_info=exc,
                    )
            if anyio.current_time() - began > _RESTART_BACKOFF[1]:
                delay = _RESTART_BACKOFF[0]  # it ran well for a while: start over
            await anyio.sleep(delay)
            delay = min(delay * 2, _RESTART_BACKOFF[1])
            log.info("engine.task_restarted", task=name)

    def health(self) -> str | None:
        """Why the engine is not healthy now, or ``None`` when it is.

        Not healthy: not running, one of its loops failed within the last
        minute (it is restarted with backoff meanwhile), or its last write to
        the database failed.
        """
        if self._tg is None:
            return "the delivery engine is not running"
        now = anyio.current_time()
        for at, reason in self._failures.values():
            if now - at < _UNHEALTHY_FOR:
                return reason
        return None

    async def check_health(self, *, timeout: float = 2.0) -> str | None:
        """:meth:`health`, and whether the database answers a query within ``timeout``."""
        problem = self.health()
        if problem is not None:
            return problem
        try:
            with anyio.fail_after(timeout):
                await self._run_sync(self.store.ping)
        except (StorageError, TimeoutError):
            return "the database is unavailable"
        return None

    async def _run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._db)

    async def _run_background(self) -> None:
        assert self._background_scope is not None
        with self._background_scope:
            await self._supervise("background", self._background)

    async def _background(self) -> None:
        """Loops that only stop when the engine does."""
        async with anyio.create_task_group() as tg:
            if self.config.settings_refresh > 0:
                tg.start_soon(self._refresh_loop)
            if self.config.workers and self.store.supports_notify:
                tg.start_soon(self._listen_loop)
            if self.config.workers and self.config.retention > 0:
                tg.start_soon(self._purge_loop)

    async def _listen_loop(self) -> None:
        """Wake the dispatcher when another process queues deliveries."""
        while True:
            try:
                woken = await anyio.to_thread.run_sync(self.store.wait_for_new, 0.25)
            except Exception as exc:  # the poll interval still finds the work
                log.warning("listen.failed", error=str(exc))
                await anyio.sleep(self.config.poll_interval)
                continue
            if woken:
                self.dispatcher.wake()

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge_log()
            except Exception as exc:  # the next round tries again
                log.warning("log.purge_failed", error=str(exc))
            await anyio.sleep(self.config.purge_interval)

    async def purge_log(self, older_than: float | None = None) -> int:
        """Delete finished deliveries older than ``older_than`` seconds
        (default: the configured retention). Pending ones are kept."""
        age = self.config.retention if older_than is None else older_than
        removed = await self._run_sync(lambda: self.store.purge(before=self.clock() - age))
        if removed:
            log.info("log.purged", deliveries=removed)
        return removed

    async def _refresh_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.settings_refresh)
            try:
                async with self._settings_lock:  # never older than a save just made
                    self._settings = await self._run_sync(self.store.all_settings)
            except Exception as exc:  # keep the old cache; try again next time
                log.warning("settings.refresh_failed", error=str(exc))

    # the hook path (no I/O) ------------------------------------------------------------------

    def settings_for(self, agent_id: str) -> WebhookSettings | None:
        return self._settings.get(agent_id)

    def enqueue(self, agent_id: str, event_type: WebhookEventType, body: bytes) -> Ticket:
        now = self.clock()
        webhook_id = new_webhook_id()
        delivery = NewDelivery(
            webhook_id=webhook_id,
            agent_id=agent_id,
            event_type=event_type,
            body=body,
            created_at=now,
            next_attempt_at=now + self.policy.first_delay(),
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

    def written(self, collected: Collected, error: BaseException | None = None) -> None:
        """The caller's transaction with ``collected`` committed (or failed with
        ``error``): settle their tickets and let the dispatcher know."""
        collected.batch.finish(error)
        if error is None and collected.items:
            self._stored(collected.items)

    def _write_failed(self, exc: BaseException) -> None:
        self._failures["storage"] = (anyio.current_time(), "the database cannot be written")

    def _stored(self, items: Sequence[NewDelivery]) -> None:
        self._failures.pop("storage", None)
        self.metrics.stored(items)
        self.dispatcher.wake()

    def _recorded(self, results: Sequence[AttemptResult]) -> None:
        self._failures.pop("storage", None)
        self.metrics.recorded(results)
        for r in results:
            if r.disable_reason:
                current = self._settings.get(r.agent_id)
                if current is not None:
                    self._settings[r.agent_id] = msgspec.structs.replace(
                        current, disabled=True, disabled_reason=r.disable_reason
                    )

    # settings -------------------------------------------------------------------------------

    async def get_settings(self, agent_id: str) -> WebhookSettings | None:
        return await self._run_sync(self.store.get_settings, agent_id)

    async def save_settings(self, agent_id: str, settings: WebhookSettings) -> WebhookSettings:
        """Store an agent's settings (enabling its endpoint again) and use them at once.

        A settings object without a signing secret keeps the current one (and a
        rotation's grace period with it), or gets a new one when there is none.
        A *different* secret replaces the current one at once, with no grace
        period: the way to cut off a secret that leaked. The current secret is
        read in the same transaction that writes, so a rotation running at the
        same time is never undone.
        """

        def change(current: WebhookSettings | None) -> WebhookSettings:
            secret = settings.signing_secret
            if secret is None and current is not None:
                secret = current.signing_secret
            if current is not None and secret is not None and secret == current.signing_secret:
                previous = current.previous_signing_secret
                expires_at = current.previous_secret_expires_at
            else:
                previous = expires_at = None
            return msgspec.structs.replace(
                settings,
                signing_secret=secret or generate_secret(),
                previous_signing_secret=previous,
                previous_secret_expires_at=expires_at,
                disabled=False,
                disabled_reason=None,
            )

        async with self._settings_lock:  # the cache is written in the database's order
            saved: WebhookSettings = await self._run_sync(
                self.store.update_settings, agent_id, change
            )
            self._settings[agent_id] = saved
        log.info("settings.saved", agent_id=agent_id, url_set=saved.url is not None)
        return saved

    async def rotate_secret(self, agent_id: str, *, grace: float | None = None) -> str:
        """Give the agent a new signing secret; later attempts are signed with it.

        For ``grace`` seconds (default: the config's ``secret_rotation_grace``)
        they carry a second signature made with the old secret, as Standard
        Webhooks allows, so a receiver still checking the old secret accepts them
        until it is updated. ``grace=0`` drops the old secret at once. One
        transaction reads and writes the settings: a settings save running at
        the same time cannot write the old secret back.
        """
        grace = self.config.secret_rotation_grace if grace is None else grace
        secret = generate_secret()
        now = self.clock()

        def change(current: WebhookSettings | None) -> WebhookSettings:
            if current is None:
                raise NotFound(f"agent {agent_id!r} has no webhook settings")
            return msgspec.structs.replace(
                current,
                signing_secret=secret,
                previous_signing_secret=current.signing_secret if grace > 0 else None,
                previous_secret_expires_at=now + grace if grace > 0 else None,
            )

        async with self._settings_lock:
            updated: WebhookSettings = await self._run_sync(
                self.store.update_settings, agent_id, change
            )
            self._settings[agent_id] = updated
        log.info("settings.secret_rotated", agent_id=agent_id)
        return secret

    async def test_endpoint(self, agent_id: str, *, slow_after: float = 5.0) -> EndpointTest:
        """Send the agent's URL one signed test request, as a settings page does on save.

        The body is ``{"eventType": "WEBHOOK_TEST", "agentId", "createdAt"}``,
        signed and sent with the agent's header like any delivery, within the
        attempt timeout, through the network guard. It is not queued, retried or
        written to the delivery log.

        :raises NotFound: when the agent has no webhook URL.
        """
        settings = await self.get_settings(agent_id)
        if settings is None or settings.url is None:
            raise NotFound(f"agent {agent_id!r} has no webhook URL")
        now = self.clock()
        body = msgspec.json.encode(
            WebhookTest(agent_id=agent_id, created_at=datetime.fromtimestamp(now, UTC))
        )
        response = error = None
        t0 = time.perf_counter()
        try:
            headers = signed_headers(settings, new_webhook_id(), now, body)
            response = await self.client.post(
                settings.url, headers, body, timeout=self.config.timeout, max_body=512
            )
        except Exception as exc:
            error = exc
            if not isinstance(exc, TransportError):
                log.error(
                    "endpoint.test_internal_error",
                    agent_id=agent_id,
                    error_type=type(exc).__name__,
                    exc_info=exc,
                )
        outcome = classify(
            response=response,
            error=error,
            started=now,
            round_attempts=0,
            failing_since=None,
            policy=self.policy,
        )
        status_code, error_text = outcome.status_code, outcome.error
        seconds = time.perf_counter() - t0
        status: Literal["ok", "slow", "unreachable"] = (
            "unreachable"
            if outcome.status != "succeeded"
            else "slow"
            if seconds > slow_after
            else "ok"
        )
        result = EndpointTest(
            status=status,
            status_code=status_code,
            duration_ms=round(seconds * 1000, 1),
            error=error_text,
        )
        log.info(
            "endpoint.tested",
            agent_id=agent_id,
            status=status,
            status_code=status_code,
            duration_ms=result.duration_ms,
        )
        return result

    async def render_metrics(self) -> bytes:
        """This process's counters and the store's backlog, for Prometheus."""
        rendered: bytes = await self._run_sync(self.metrics.render)
        return rendered

    # the delivery log -----------------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        agent_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[DeliveryRecord]:
        return await self._run_sync(
            lambda: self.store.list_deliveries(
                agent_id=agent_id, status=status, limit=limit, before_id=before_id
            )
        )

    async def get_delivery(self, delivery_id: int, agent_id: str | None = None) -> DeliveryRecord:
        record = await self._run_sync(self.store.get_delivery, delivery_id)
        if agent_id is not None and record.agent_id != agent_id:
            raise NotFound(f"delivery {delivery_id} does not exist for agent {agent_id!r}")
        return record

    async def list_attempts(self, delivery_id: int) -> list[AttemptRecord]:
        return await self._run_sync(self.store.list_attempts, delivery_id)

    async def redeliver(self, delivery_id: int, agent_id: str | None = None) -> DeliveryRecord:
        """Queue a delivery again, with its original ``webhook-id``."""
        await self.get_delivery(delivery_id, agent_id)
        record = await self._run_sync(lambda: self.store.redeliver(delivery_id, now=self.clock()))
        self.dispatcher.wake()
        return record

    async def redeliver_failed(self, *, agent_id: str | None = None, since: float = 0.0) -> int:
        """Queue again every failed delivery created at or after ``since``."""
        count = await self._run_sync(
            lambda: self.store.redeliver_failed(agent_id=agent_id, since=since, now=self.clock())
        )
        self.dispatcher.wake()
        return count
