"""The dispatcher: claims due deliveries, POSTs them, records every attempt.

A fixed pool of worker tasks (``concurrency`` of them) takes deliveries from
a local queue; one claim loop keeps that queue filled, leasing due deliveries
in batches (one thread hop fetches many), so a worker never waits for a claim
to start its next attempt. Concurrency is capped overall (the pool) and per
endpoint (a semaphore each). Results go to a :class:`Batcher`, so that
recording thousands of attempts costs a handful of transactions.

A lease is always longer than an attempt can take (``2 x timeout + 5 s``) and a
delivery whose lease would run out before its attempt could finish (it waited
too long for its endpoint's slot) is released unsent, so that two dispatchers
never send the same delivery at once.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc
import structlog

from ..exceptions import StorageError, TransportError
from ..settings import WebhookSettings, parse_header, secret_key
from ..storage.base import AttemptResult, ClaimedDelivery, Store
from .client import HttpClient
from .retry import RetryPolicy, parse_retry_after
from .signing import sign

__all__ = ["Dispatcher", "signed_headers"]

log = structlog.get_logger("webhook_plugin.delivery")

_EXCERPT_BYTES: Final = 512


# Settings are validated when saved; decoding the same secret and splitting the
# same header for every attempt is work the hot path need not repeat.
_key = functools.lru_cache(maxsize=4096)(secret_key)
_header = functools.lru_cache(maxsize=4096)(parse_header)


def signed_headers(
    settings: WebhookSettings, webhook_id: str, now: float, body: bytes
) -> list[tuple[str, str]]:
    """The request headers of one attempt: Standard Webhooks signature (one per
    secret in use, space-separated, during a rotation's grace period), then the
    agent's own header verbatim."""
    assert settings.signing_secret is not None
    timestamp = int(now)
    signature = " ".join(
        sign(_key(secret), webhook_id, timestamp, body) for secret in settings.signing_secrets(now)
    )
    headers = [
        ("content-type", "application/json"),
        ("webhook-id", webhook_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature),
    ]
    if settings.header:
        headers.append(_header(settings.header))
    return headers


class Dispatcher:
    """Sends due deliveries until stopped.

    :param store: where deliveries are claimed from.
    :param client: the HTTP client seam.
    :param record: takes each attempt's result (the engine's recorder).
    :param policy: retry schedule and endpoint disabling.
    :param timeout: seconds for one attempt.
    :param concurrency: attempts in flight at most, overall.
    :param per_endpoint: attempts in flight at most, per agent endpoint.
    :param poll_interval: how often to look for due deliveries when nothing woke us.
    :param clock: wall-clock time in Unix seconds (injected in tests).
    """

    def __init__(
        self,
        store: Store,
        client: HttpClient,
        record: Callable[[AttemptResult], None],
        *,
        policy: RetryPolicy,
        timeout: float = 15.0,
        concurrency: int = 64,
        per_endpoint: int = 16,
        poll_interval: float = 1.0,
        claim_batch: int = 256,
        clock: Callable[[], float] = time.time,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._record = record
        self._policy = policy
        self._timeout = timeout
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._poll_interval = poll_interval
        self._claim_batch = claim_batch
        self._clock = clock
        self._limiter = limiter or anyio.CapacityLimiter(1)
        self.owner = uuid.uuid4().hex
        self.lease_seconds = 2 * timeout + 5.0
        #: attempts in flight per endpoint (agent), capped at ``per_endpoint``
        self._busy: dict[str, int] = {}
        #: claimed deliveries waiting for their endpoint to have a free slot
        self._parked: dict[str, deque[ClaimedDelivery]] = {}
        #: deliveries claimed and not yet taken by a worker
        self._ready: deque[ClaimedDelivery] = deque()
        #: deliveries a worker is attempting
        self._in_flight: set[int] = set()
        self._work: anyio.Event | None = None  # made in run(): it needs a running loop
        self._wake_event: anyio.Event | None = None
        self._low_event: anyio.Event | None = None
        self._idle_event: anyio.Event | None = None
        self._workers_scope: anyio.CancelScope | None = None
        self._woken = False
        self._next_retry_at: float | None = None
        self._stopping = False

    # signals from the engine ---------------------------------------------------------------

    def wake(self) -> None:
        """New deliveries may be due: look now rather than at the next poll."""
        self._woken = True
        if self._wake_event is not None:
            self._wake_event.set()

    def retry_scheduled(self, at: float) -> None:
        """A retry falls due at ``at``: make sure the claim loop looks then."""
        if self._next_retry_at is None or at < self._next_retry_at:
            self._next_retry_at = at
            self.wake()

    # the loop -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Claim and deliver until :meth:`stop`."""
        self._work = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._workers_scope = tg.cancel_scope
            for _ in range(self._concurrency):
                tg.start_soon(self._worker)
            task_status.started()
            await self._claim_loop()
            # the workers finish their attempts, or stop() cancels them

    async def _claim_loop(self) -> None:
        ready = self._ready
        # keep up to two rounds of work at hand; claim again below one round
        target, low = 2 * self._concurrency, self._concurrency
        while not self._stopping:
            if len(ready) >= low:
                self._low_event = anyio.Event()
                await self._low_event.wait()
                self._low_event = None
                continue
            self._woken = False
            now = self._clock()
            limit = max(1, min(target - len(ready), self._claim_batch))
            try:
                claimed = await anyio.to_thread.run_sync(
                    functools.partial(
                        self._store.claim_due,
                        now=now,
                        limit=limit,
                        lease_until=now + self.lease_seconds,
                        owner=self.owner,
                        # endpoints with work waiting aside are full: claim for
                        # the others, so a slow endpoint cannot crowd them out
                        # (and no worker hoards its backlog under lease)
                        skip_agents=tuple(self._parked),
                    ),
                    limiter=self._limiter,
                )
            except StorageError as exc:  # the database hiccuped: try again later
                log.warning("dispatcher.claim_failed", error=str(exc))
                await anyio.sleep(self._poll_interval)
                continue
            if self._stopping:  # stop() came during the claim: hand these back
                if claimed:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(
                            self._store.release,
                            [d.id for d in claimed],
                            self.owner,
                            limiter=self._limiter,
                        )
                return
            if claimed:
                ready.extend(claimed)
                self._work_arrived()
            elif not self._stopping:
                await self._sleep(now)  # nothing due: wait for new work or a retry

    def _work_arrived(self) -> None:
        work, self._work = self._work, anyio.Event()
        if work is not None:
            work.set()

    def _next(self) -> ClaimedDelivery | None:
        """The next delivery whose endpoint has a free slot. Others are parked, so
        that a slow endpoint holds its own slots and never a worker."""
        ready = self._ready
        while ready:
            delivery = ready.popleft()
            agent_id = delivery.agent_id
            if self._busy.get(agent_id, 0) >= self._per_endpoint:
                self._parked.setdefault(agent_id, deque()).append(delivery)
                continue
            self._busy[agent_id] = self._busy.get(agent_id, 0) + 1
            return delivery
        return None

    def _slot_freed(self, agent_id: str) -> None:
        left = self._busy[agent_id] - 1
        if left:
            self._busy[agent_id] = left
        else:
            del self._busy[agent_id]
        parked = self._parked.get(agent_id)
        if parked:
            self._ready.appendleft(parked.popleft())  # its turn comes first
            if not parked:
                del self._parked[agent_id]
            self._work_arrived()

    async def _worker(self) -> None:
        while True:
            delivery = self._next()
            if len(self._ready) < self._concurrency and self._low_event is not None:
                self._low_event.set()  # time to claim more
            if delivery is None:
                if self._stopping:
                    return
                work = self._work
                assert work is not None
                await work.wait()
                continue
            self._in_flight.add(delivery.id)
            try:
                await self._deliver(delivery)
            finally:
                self._in_flight.discard(delivery.id)
                self._slot_freed(delivery.agent_id)
                if self._idle_event is not None and not self._in_flight:
                    self._idle_event.set()

    async def _sleep(self, now: float) -> None:
        if self._woken:  # something arrived while we were claiming
            return
        delay = self._poll_interval
        if self._next_retry_at is not None:
            delay = max(0.0, min(delay, self._next_retry_at - now))
            if self._next_retry_at <= now + delay:
                self._next_retry_at = None
        self._wake_event = anyio.Event()
        with anyio.move_on_after(delay):
            await self._wake_event.wait()
        self._wake_event = None

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give attempts in flight ``grace`` seconds, then cancel them
        and release their leases (and those of work not started) for the next start."""
        self._stopping = True
        self.wake()
        if self._low_event is not None:
            self._low_event.set()
        left = [d.id for d in self._ready]
        left += [d.id for q in self._parked.values() for d in q]
        self._ready.clear()
        self._parked.clear()
        self._work_arrived()  # idle workers see the stop and return
        if self._in_flight:
            self._idle_event = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle_event.wait()
        left += self._in_flight
        if self._in_flight and self._workers_scope is not None:
            self._workers_scope.cancel()
        if left:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    self._store.release, left, self.owner, limiter=self._limiter
                )
            log.info("dispatcher.released", deliveries=len(left))

    # one delivery ---------------------------------------------------------------------------

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        settings = delivery.settings
        if settings is None or settings.url is None:
            self._give_up(delivery, "endpoint_removed: the agent has no webhook URL")
            return
        if settings.disabled:
            self._give_up(delivery, f"endpoint_disabled: {settings.disabled_reason or 'disabled'}")
            return
        if self._clock() + self._timeout > delivery.lease_until:
            # Waited too long for its endpoint: another dispatcher may take it
            # once the lease runs out; do not race it.
            return
        self._record(await self._attempt(delivery, settings))

    def _give_up(self, delivery: ClaimedDelivery, error: str) -> None:
        log.warning(
            "delivery.failed",
            agent_id=delivery.agent_id,
            event_type=str(delivery.event_type),
            webhook_id=delivery.webhook_id,
            error=error,
        )
        self._record(
            AttemptResult(
                delivery_id=delivery.id,
                agent_id=delivery.agent_id,
                attempt=delivery.attempts,
                started_at=self._clock(),
                duration_ms=0.0,
                status_code=None,
                error=error,
                response_excerpt=None,
                status="failed",
                next_attempt_at=None,
                sent=False,
            )
        )

    async def _attempt(self, d: ClaimedDelivery, settings: WebhookSettings) -> AttemptResult:
        assert settings.url is not None and settings.signing_secret is not None
        started = self._clock()
        headers = signed_headers(settings, d.webhook_id, started, d.body)
        attempt = d.attempts + 1
        t0 = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        excerpt: str | None = None
        retry_after: float | None = None
        try:
            response = await self._client.post(
                settings.url, headers, d.body, timeout=self._timeout, max_body=_EXCERPT_BYTES
            )
        except TransportError as exc:
            error = f"{exc.code}: {exc}"
        except Exception as exc:
            # A bug of ours must cost one attempt, not the worker and every
            # delivery behind it: record it and retry like any failed attempt.
            error = f"internal_error: {type(exc).__name__}"
            log.exception("delivery.internal_error", agent_id=d.agent_id, webhook_id=d.webhook_id)
        else:
            status_code = response.status_code
            excerpt = response.body.decode("utf-8", "replace") or None
            retry_after = parse_retry_after(response.headers.get("retry-after"), started)
            if not 200 <= status_code < 300:
                error = f"http_{status_code}"
        duration_ms = (time.perf_counter() - t0) * 1000
        fields = {
            "agent_id": d.agent_id,
            "event_type": str(d.event_type),
            "webhook_id": d.webhook_id,
            "attempt": attempt,
            "status": status_code,
            "duration_ms": round(duration_ms, 1),
        }
        disable_reason = None
        next_attempt_at = None
        if error is None:
            status = "succeeded"
            log.info("delivery.succeeded", **fields)
        elif status_code == 410:
            status = "failed"
            disable_reason = "the receiver answered 410 Gone"
        else:
            delay = self._policy.next_delay(d.round_attempts + 1, retry_after)
            failing_for = started - d.failing_since if d.failing_since is not None else 0.0
            if failing_for >= self._policy.disable_after:
                disable_reason = f"failing without a success for {failing_for / 3600:.0f} h"
            if delay is None or disable_reason:
                status = "failed"
            else:
                status = "pending"
                next_attempt_at = started + delay
                self.retry_scheduled(next_attempt_at)
                log.info(
                    "delivery.retry_scheduled", error=error, retry_in=round(delay, 3), **fields
                )
        if status == "failed":
            log.warning("delivery.failed", error=error, **fields)
        if disable_reason:
            log.warning("endpoint.disabled", agent_id=d.agent_id, reason=disable_reason)
        return AttemptResult(
            delivery_id=d.id,
            agent_id=d.agent_id,
            attempt=attempt,
            started_at=started,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error,
            response_excerpt=excerpt,
            status=status,
            next_attempt_at=next_attempt_at,
            disable_reason=disable_reason,
        )
