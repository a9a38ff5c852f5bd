"""The dispatcher: claims due deliveries, POSTs them, records every attempt.

A fixed pool of worker tasks (``concurrency`` of them) takes deliveries from
a local queue; one claim loop keeps that queue filled, leasing due deliveries
in batches (one thread hop fetches many), so a worker never waits for a claim
to start its next attempt. Concurrency is capped overall (the pool) and per
endpoint, by caps that shrink for endpoints that time out
(:mod:`.lanes`), so that endpoints that never answer hold only their own
slots. Each attempt's outcome is decided by :func:`.outcome.classify`, and
nothing one delivery does (whatever its receiver answers, whatever an attempt
raises) can end a loop. Results go to a :class:`Batcher`, so that recording
thousands of attempts costs a handful of transactions.

A lease is always longer than an attempt can take (``2 x timeout + 5 s``) and a
delivery whose lease would run out before its attempt could finish (it waited
too long for its endpoint's slot) is released unsent, so that two dispatchers
never send the same delivery at once.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..exceptions import RequestTimeout, StorageError, TransportError
from ..settings import WebhookSettings
from ..storage.base import AttemptResult, ClaimedDelivery, Store
from .client import HttpClient
from .lanes import EndpointLanes, Lane
from .outcome import classify
from .redaction import redact, secrets_of
from .retry import RetryPolicy
from .signing import signed_headers

__all__ = ["Dispatcher"]

log = structlog.get_logger("webhook_plugin.delivery")

_EXCERPT_BYTES: Final = 512

T = TypeVar("T")


class Dispatcher:
    """Sends due deliveries until stopped.

    :param store: where deliveries are claimed from.
    :param client: the HTTP client seam.
    :param record: takes each attempt's result (the engine's recorder).
    :param policy: retry schedule and endpoint disabling.
    :param timeout: seconds for one attempt.
    :param concurrency: attempts in flight at most, overall.
    :param per_endpoint: attempts in flight at most, per agent endpoint (an
        endpoint that times out gets fewer, see :mod:`.lanes`).
    :param poll_interval: how often to look for due deliveries when nothing woke us.
    :param clock: wall-clock time in Unix seconds (injected in tests).
    """

    def __init__(
        self,
        store: Store,
        client: HttpClient,
        record: Callable[[AttemptResult], object],
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
        #: attempts in flight per endpoint (agent), capped by ``self.lanes``
        self._busy: dict[str, int] = {}
        self.lanes = EndpointLanes(
            ceiling=per_endpoint,
            start=4,
            slow_slots=concurrency // 4,
            new_slots=concurrency // 2,
        )
        #: claimed deliveries waiting for their endpoint to have a free slot
        self._parked: dict[str, deque[ClaimedDelivery]] = {}
        #: deliveries claimed and not yet taken by a worker
        self._ready: deque[ClaimedDelivery] = deque()
        #: deliveries handed to a worker and not yet done
        self._in_flight: set[int] = set()
        #: leases stop() hands back for the next start
        self._left: list[int] = []
        #: workers with no attempt in flight and none queued for them
        self._free = concurrency
        self._next_retry_at: float | None = None
        self._stopping = False
        # The coordination, made in run() (memory-object streams need a running
        # loop): attempts handed to the workers (one buffered per free worker, so
        # handing one over never waits); a wake-up for the claim loop (one token:
        # wakes that come while it claims are not lost, and many are one); a
        # token for stop() when the last attempt in flight ends.
        self._jobs: _Stream[tuple[ClaimedDelivery, Lane]] | None = None
        self._wakeups: _Stream[None] | None = None
        self._idle: _Stream[None] | None = None
        self._workers_scope: anyio.CancelScope | None = None

    # signals from the engine ---------------------------------------------------------------

    def wake(self) -> None:
        """New deliveries may be due: look now rather than at the next poll."""
        _signal(self._wakeups)

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
        self._jobs = _Stream.open(self._concurrency)
        self._wakeups = _Stream.open(1)
        self._idle = _Stream.open(1)
        try:
            async with anyio.create_task_group() as tg:
                self._workers_scope = tg.cancel_scope
                for _ in range(self._concurrency):
                    tg.start_soon(self._worker, self._jobs.receive)
                task_status.started()
                await self._claim_loop()
                # the workers finish their attempts and return once stop() has
                # closed the jobs stream, or stop() cancels them
        finally:
            # a crash: what was handed over and not taken goes back to the
            # front of the queue, for the restarted loop
            self._ready.extendleft(reversed(self._take_back()))
            for stream in (self._jobs, self._wakeups, self._idle):
                stream.close()
            # no worker is left: whatever a cancelled hand-over lost, every slot is free
            self._in_flight.clear()
            self._busy.clear()
            self.lanes.busy.update(dict.fromkeys(self.lanes.busy, 0))
            self._free = self._concurrency

    async def _claim_loop(self) -> None:
        assert self._wakeups is not None
        wakeups, ready = self._wakeups.receive, self._ready
        # keep up to two rounds of work at hand; claim again below one round
        target, low = 2 * self._concurrency, self._concurrency
        while not self._stopping:
            if len(ready) >= low:
                await _wait(wakeups)  # the workers ask for more (or the engine wakes us)
                continue
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
            except Exception:  # a bug of ours: log it, and claim again later
                log.exception("dispatcher.claim_crashed")
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
                self._hand_over()
            else:  # nothing due: wait for new work, a retry or the next poll
                await _wait(wakeups, self._nothing_due_for(now))

    def _nothing_due_for(self, now: float) -> float:
        delay = self._poll_interval
        if self._next_retry_at is not None:
            delay = max(0.0, min(delay, self._next_retry_at - now))
            if self._next_retry_at <= now + delay:
                self._next_retry_at = None
        return delay

    def _hand_over(self) -> None:
        """Give free workers the next deliveries their endpoints may start, and ask
        the claim loop for more when the queue runs low."""
        if self._stopping or self._jobs is None:
            return
        while self._free:
            taken = self._next()
            if taken is None and not (self._parked and self._unpark_stalled()):
                break
            if taken is not None:
                self._free -= 1
                self._in_flight.add(taken[0].id)
                self._jobs.send.send_nowait(taken)  # room for one per free worker
        if len(self._ready) < self._concurrency:
            _signal(self._wakeups)

    def _take_back(self) -> list[ClaimedDelivery]:
        """The deliveries handed to workers and not yet taken, their slots freed."""
        taken_back: list[ClaimedDelivery] = []
        if self._jobs is None:
            return taken_back
        while True:
            try:
                delivery, lane = self._jobs.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return taken_back
            self._free += 1
            self._in_flight.discard(delivery.id)
            self._release_slot(delivery.agent_id, lane)
            taken_back.append(delivery)

    def _next(self) -> tuple[ClaimedDelivery, Lane] | None:
        """The next delivery whose endpoint may start an attempt, and its lane.
        Others are parked, so that a slow endpoint holds its own slots and
        never a worker."""
        ready, lanes = self._ready, self.lanes
        while ready:
            delivery = ready.popleft()
            agent_id = delivery.agent_id
            busy = self._busy.get(agent_id, 0)
            if not lanes.may_start(agent_id, busy):
                self._parked.setdefault(agent_id, deque()).append(delivery)
                continue
            self._busy[agent_id] = busy + 1
            lane = lanes.lane(agent_id)
            lanes.busy[lane] += 1
            return delivery, lane
        return None

    def _release_slot(self, agent_id: str, lane: Lane) -> int:
        left = self._busy[agent_id] - 1
        if left:
            self._busy[agent_id] = left
        else:
            del self._busy[agent_id]
        self.lanes.busy[lane] -= 1
        return left

    def _slot_freed(self, agent_id: str, lane: Lane) -> None:
        left = self._release_slot(agent_id, lane)
        # as many of its parked deliveries as its cap now allows (a probe that
        # went well opens several slots at once)
        room = max(1, self.lanes.cap(agent_id) - left)
        self._unpark(agent_id, room)
        if lane == "quick":
            return
        # a slot of a shared lane is free: another endpoint may wait for it
        # (this one may have moved to another lane with the attempt that ended)
        for other in self._parked:
            if other != agent_id and self.lanes.lane(other) == lane and self._unpark(other):
                return

    def _unpark_stalled(self) -> bool:
        """Give a turn to a parked endpoint with nothing in flight: no slot of its
        own will free up to wake it."""
        for agent_id in self._parked:
            if not self._busy.get(agent_id) and self.lanes.may_start(agent_id, 0):
                return self._unpark(agent_id)
        return False

    def _unpark(self, agent_id: str, count: int = 1) -> bool:
        parked = self._parked.get(agent_id)
        if not parked:
            return False
        taken = [parked.popleft() for _ in range(min(count, len(parked)))]
        self._ready.extendleft(reversed(taken))  # their turn comes first, in order
        if not parked:
            del self._parked[agent_id]
        return True

    async def _worker(self, jobs: MemoryObjectReceiveStream[tuple[ClaimedDelivery, Lane]]) -> None:
        async for delivery, lane in jobs:
            try:
                if self._stopping:  # handed over as stop() came: leave it for the next start
                    self._left.append(delivery.id)
                else:
                    await self._deliver(delivery)
            except Exception:
                # Nothing one delivery does may end a worker. Its lease runs
                # out and it is claimed again.
                log.exception(
                    "delivery.crashed", agent_id=delivery.agent_id, webhook_id=delivery.webhook_id
                )
            finally:
                self._in_flight.discard(delivery.id)
                self._free += 1
                self._slot_freed(delivery.agent_id, lane)
                self._hand_over()
                if self._stopping and not self._in_flight:
                    _signal(self._idle)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give attempts in flight ``grace`` seconds, then cancel them
        and release their leases (and those of work not started) for the next start."""
        self._stopping = True
        left = self._left
        left += [d.id for d in self._take_back()]
        left += [d.id for d in self._ready]
        left += [d.id for q in self._parked.values() for d in q]
        self._ready.clear()
        self._parked.clear()
        if self._jobs is not None:
            self._jobs.send.close()  # idle workers return; busy ones after their attempt
        _signal(self._wakeups)  # the claim loop sees the stop
        if self._in_flight and self._idle is not None:
            await _wait(self._idle.receive, grace)
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
        assert settings.url is not None
        started = self._clock()
        attempt = d.attempts + 1
        t0 = time.perf_counter()
        response = error = None
        try:
            headers = signed_headers(settings, d.webhook_id, started, d.body)
            response = await self._client.post(
                settings.url, headers, d.body, timeout=self._timeout, max_body=_EXCERPT_BYTES
            )
        except Exception as exc:
            error = exc
            if not isinstance(exc, TransportError):
                # A bug of ours costs one attempt, recorded and retried like
                # any failure; never the worker and every delivery behind it.
                log.error(
                    "delivery.internal_error",
                    agent_id=d.agent_id,
                    webhook_id=d.webhook_id,
                    error_type=type(exc).__name__,
                    exc_info=exc,
                )
        duration = time.perf_counter() - t0
        outcome = classify(
            response=response,
            error=error,
            started=started,
            round_attempts=d.round_attempts,
            failing_since=d.failing_since,
            policy=self._policy,
        )
        self.lanes.observe(
            d.agent_id,
            slow=isinstance(error, RequestTimeout) or duration > self._timeout / 2,
        )
        fields = {
            "agent_id": d.agent_id,
            "event_type": str(d.event_type),
            "webhook_id": d.webhook_id,
            "attempt": attempt,
            "status": outcome.status_code,
            "duration_ms": round(duration * 1000, 1),
        }
        if outcome.status == "succeeded":
            log.info("delivery.succeeded", **fields)
        elif outcome.status == "pending":
            assert outcome.next_attempt_at is not None
            self.retry_scheduled(outcome.next_attempt_at)
            log.info(
                "delivery.retry_scheduled",
                error=outcome.error,
                retry_in=round(outcome.next_attempt_at - started, 3),
                **fields,
            )
        else:
            log.warning("delivery.failed", error=outcome.error, **fields)
        if outcome.disable_reason:
            log.warning("endpoint.disabled", agent_id=d.agent_id, reason=outcome.disable_reason)
        excerpt = None
        if response is not None and response.body:
            # a receiver that echoes requests (as httpbin does) must not put our
            # header or secret into the delivery log
            excerpt = redact(response.body.decode("utf-8", "replace"), secrets_of(settings))
        return AttemptResult(
            delivery_id=d.id,
            agent_id=d.agent_id,
            attempt=attempt,
            started_at=started,
            duration_ms=duration * 1000,
            status_code=outcome.status_code,
            error=outcome.error,
            response_excerpt=excerpt,
            status=outcome.status,
            next_attempt_at=outcome.next_attempt_at,
            disable_reason=outcome.disable_reason,
        )


class _Stream(Generic[T]):
    """Both ends of one memory-object stream."""

    __slots__ = ("receive", "send")

    def __init__(
        self, send: MemoryObjectSendStream[T], receive: MemoryObjectReceiveStream[T]
    ) -> None:
        self.send, self.receive = send, receive

    @classmethod
    def open(cls, size: int) -> _Stream[T]:
        send, receive = anyio.create_memory_object_stream[T](size)
        return cls(send, receive)

    def close(self) -> None:
        self.send.close()
        self.receive.close()


def _signal(stream: _Stream[None] | None) -> None:
    """Leave a token (one is enough: a second one is dropped)."""
    if stream is not None:
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            stream.send.send_nowait(None)


async def _wait(tokens: MemoryObjectReceiveStream[None], timeout: float | None = None) -> None:
    """Take a token, or return after ``timeout`` seconds or once the stream is closed."""
    with anyio.move_on_after(timeout):
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            await tokens.receive()
