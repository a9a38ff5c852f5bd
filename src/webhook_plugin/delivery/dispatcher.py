"""The dispatcher: claims due deliveries, hands them to workers, records every attempt.

A fixed pool of worker tasks (``concurrency`` of them) takes deliveries from
a memory-object stream; one claim loop keeps a local backlog filled, leasing
due deliveries in batches (one thread hop fetches many), so a worker never
waits for a claim to start its next attempt. Concurrency is capped overall
(the pool) and per endpoint, by caps that shrink for endpoints that time out
(:mod:`.lanes`), so that endpoints that never answer hold only their own
slots. What one attempt is (sign, POST, classify, log) is :mod:`.attempt`'s;
nothing one delivery does can end a loop. Results go to a :class:`Batcher`,
so that recording thousands of attempts costs a handful of transactions.

The loops coordinate through memory-object streams only: the jobs stream
(a delivery goes in only for a free worker, so handing over never waits), a
one-token stream that wakes the claim loop (a wake-up that comes while it
claims is kept, and many are one), and a one-token stream that tells
:meth:`Dispatcher.stop` the last attempt in flight has ended.

A lease is always longer than an attempt can take (``2 x timeout + 5 s``) and a
delivery whose lease would run out before its attempt could finish (it waited
too long for its endpoint's slot) is released unsent, so that two dispatchers
never send the same delivery at once.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable

import anyio
import anyio.abc
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from ..events import OperationalEventType
from ..exceptions import StorageError
from ..storage.base import AttemptResult, ClaimedDelivery, Handoff, Store
from ._streams import Stream, signal, wait
from .attempt import attempt, give_up
from .client import HttpClient
from .lanes import Backlog, EndpointLanes, Lane
from .retry import RetryPolicy

__all__ = ["Dispatcher"]

log = structlog.get_logger("webhook_plugin.delivery")


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
        self.lanes = EndpointLanes(
            ceiling=per_endpoint,
            start=4,
            slow_slots=concurrency // 4,
            new_slots=concurrency // 2,
        )
        #: claimed deliveries not yet handed to a worker
        self.backlog = Backlog(self.lanes)
        #: deliveries handed to a worker and not yet done
        self._in_flight: set[int] = set()
        #: leases stop() hands back for the next start
        self._left: list[int] = []
        #: attempts cancelled mid-way by a crash of the loop (released for the next claim)
        self._unfinished: list[int] = []
        #: workers with no attempt in flight and none queued for them
        self._free = concurrency
        self._next_retry_at: float | None = None
        self._stopping = False
        #: the last claim found no more due (nothing to ask for until woken)
        self._drained = False
        #: endpoints the last claim left out, full then: one that can start again
        #: wakes the claim loop (their work may wait in the store)
        self._skipped: set[str] = set()
        #: the endpoints a claim skipped, and until when (monotonic), if it found
        #: no one else's work: until something new may be due, a claim that skips
        #: them too would find none either, only read every row they have waiting
        self._barren: tuple[frozenset[str], float] | None = None
        #: counts wake(): a claim says it found nothing only if none came meanwhile
        self._wakes = 0
        #: fresh deliveries the store leases to us as it inserts them (run() sets it)
        self._handoff: Handoff | None = None
        # The coordination, made in run() (memory-object streams need a running
        # loop): attempts handed to the workers (one buffered per free worker, so
        # handing one over never waits); a wake-up for the claim loop (one token:
        # wakes that come while it claims are not lost, and many are one); a
        # token for stop() when the last attempt in flight ends.
        self._jobs: Stream[tuple[ClaimedDelivery, Lane]] | None = None
        self._wakeups: Stream[None] | None = None
        self._idle: Stream[None] | None = None
        self._workers_scope: anyio.CancelScope | None = None

    # signals from the engine ---------------------------------------------------------------

    def wake(self) -> None:
        """New deliveries may be due: look now rather than at the next poll."""
        self._drained = False
        self._barren = None
        self._wakes += 1
        self._take_handed()
        signal(self._wakeups)

    def stored(self) -> None:
        """This process queued deliveries: take those the store leased to us as it
        inserted them, and claim the others (if there are any)."""
        if self._handoff is None or self._take_handed():
            self.wake()

    def _take_handed(self) -> bool:
        """Into the backlog with the deliveries handed to us; whether the store
        queued others meanwhile that no one has leased."""
        if self._handoff is None:
            return False
        taken, unleased = self._handoff.take()
        if taken:
            self.backlog.ready.extend(taken)
            self._hand_over()
        return unleased

    def _capacity(self) -> int:
        """How many deliveries we hold at most: two rounds of work (called from
        the writing thread, under the handoff's lock)."""
        return 0 if self._stopping else 2 * self._concurrency

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
        if self._stopping:  # restarted (after a crash) once stop() had begun
            task_status.started()
            return
        self._jobs = Stream.open(self._concurrency)
        self._wakeups = Stream.open(1)
        self._idle = Stream.open(1)
        if hasattr(self._store, "handoff"):  # a store of ours: fresh work comes straight here
            self._handoff = Handoff(
                self.owner,
                lease_seconds=self.lease_seconds,
                capacity=self._capacity,
                clock=self._clock,
                held=self.backlog.waiting(),  # kept after a crash
            )
            self._store.handoff = self._handoff
        try:
            async with anyio.create_task_group() as tg:
                self._workers_scope = tg.cancel_scope
                for _ in range(self._concurrency):
                    tg.start_soon(self._worker, self._jobs.receive)
                task_status.started()
                self._hand_over()  # after a restart, the backlog kept from the crash
                await self._claim_loop()
                # the workers finish their attempts and return once the jobs
                # stream is closed (stop() closes it too), or stop() cancels them
                self._jobs.send.close()
        finally:
            # a crash: what was handed over and not taken goes back to the
            # front of the queue, for the restarted loop
            self.backlog.ready.extendleft(reversed(self._take_back()))
            self.backlog.ready.extend(self._close_handoff())
            for stream in (self._jobs, self._wakeups, self._idle):
                stream.close()
            # no worker is left: whatever a cancelled hand-over lost, every slot is
            # free, and the attempts cancelled mid-way are for the next claim
            self._in_flight.clear()
            self.backlog.reset_slots()
            self._free = self._concurrency
            unfinished, self._unfinished = self._unfinished, []
            if unfinished and not self._stopping:
                await self._release(unfinished)

    async def _claim_loop(self) -> None:
        assert self._wakeups is not None
        wakeups, backlog = self._wakeups.receive, self.backlog
        # keep up to two rounds of work at hand; claim again below one round
        target, low = 2 * self._concurrency, self._concurrency
        while not self._stopping:
            if len(backlog) >= low:
                # the workers ask for more once below, unless the last claim found
                # no more (then only the engine's wake-ups, or the next poll)
                await wait(wakeups, self._poll_interval)
                continue
            # what the store handed us first: claiming for an endpoint it already
            # gave work to would only park more under our lease
            if self._take_handed():  # and it queued others, for anyone
                self._barren = None
            now = self._clock()
            # endpoints that may start no more are full: claim for the others,
            # so a slow endpoint cannot crowd them out (and no worker hoards its
            # backlog under lease)
            skip = tuple(backlog.full())
            if skip and (left := self._found_none_besides(skip, now)) is not None:
                self._drained, self._skipped = True, set(skip)
                await wait(wakeups, min(left, self._nothing_due_for(now)))
                continue
            if self._next_retry_at is not None and self._next_retry_at <= now:
                self._next_retry_at = None  # this claim takes it
                self._barren = None  # (or leaves it for the next, if it fills up)
            limit = max(1, min(target - len(backlog), self._claim_batch))
            wakes = self._wakes
            try:
                claimed = await anyio.to_thread.run_sync(
                    functools.partial(
                        self._store.claim_due,
                        limit=limit,
                        lease_seconds=self.lease_seconds,
                        owner=self.owner,
                        skip_agents=skip,
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
            # fewer than asked: none left to claim until something wakes us; the
            # endpoints skipped may have more, for when one of them can start again
            partial = len(claimed) < limit
            self._drained = partial
            self._skipped = set(skip) if partial else set()
            if skip and not claimed and wakes == self._wakes:
                self._barren = (frozenset(skip), anyio.current_time() + self._poll_interval)
            if claimed and self._in_flight:
                # ours already (a lease that ran out while we held it): the
                # attempt under way decides, never a second copy of it
                claimed = [d for d in claimed if d.id not in self._in_flight]
            if claimed:
                claimed = await self._keep(claimed)
            if self._stopping:  # stop() came during the claim: hand these back
                if claimed:
                    await self._release([d.id for d in claimed])
                return
            if claimed:
                if self._handoff is not None:
                    self._handoff.hold(len(claimed))
                backlog.ready.extend(claimed)
                self._hand_over()
            if partial:  # wait for new work, a free slot, a retry or the next poll
                await wait(wakeups, self._nothing_due_for(now))

    async def _keep(self, claimed: list[ClaimedDelivery]) -> list[ClaimedDelivery]:
        """What to keep of a claim. One that raced the store handing us the same
        endpoint's fresh work (committed while the claim waited for the write
        lock) may leave us more than two rounds: what would only wait parked
        goes back, for another worker to take."""
        handoff = self._handoff
        if handoff is None:
            return claimed
        self._take_handed()
        excess = handoff.held + len(claimed) - self._capacity()
        if excess <= 0:
            return claimed
        full = set(self.backlog.full())
        back = [d for d in reversed(claimed) if d.agent_id in full][:excess]
        if not back:
            return claimed
        self._skipped.update(d.agent_id for d in back)  # theirs wait in the store
        self._barren = None  # and they may be no one's the last claim skipped
        returned = {d.id for d in back}
        await self._release(list(returned))
        return [d for d in claimed if d.id not in returned]

    async def _release(self, ids: list[int]) -> None:
        """Hand these leases back (shielded); a failure is logged: they run out."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(
                    self._store.release, ids, self.owner, limiter=self._limiter
                )
            except Exception as exc:
                log.warning(
                    "dispatcher.release_failed", deliveries=len(ids), error_type=type(exc).__name__
                )
            else:
                log.info("dispatcher.released", deliveries=len(ids))

    def _found_none_besides(self, skip: tuple[str, ...], now: float) -> float | None:
        """How long a claim skipping ``skip`` would surely find nothing, or ``None``
        if it may find something: one that skipped no more than these found no
        one else's work, and since then no wake-up came (work queued, here or by
        another process), no retry fell due and no poll interval passed (the
        work of leases that ran out)."""
        if self._barren is None:
            return None
        skipped, until = self._barren
        left = until - anyio.current_time()
        retry_due = self._next_retry_at is not None and self._next_retry_at <= now
        if retry_due or left <= 0 or not skipped.issubset(skip):
            return None
        return left

    def _nothing_due_for(self, now: float) -> float:
        """How long to wait when nothing is due: until the next retry, at most a poll."""
        if self._next_retry_at is None:
            return self._poll_interval
        return max(0.0, min(self._poll_interval, self._next_retry_at - now))

    def _hand_over(self) -> None:
        """Give free workers the next deliveries their endpoints may start, and ask
        the claim loop for more when the queue runs low."""
        if self._stopping or self._jobs is None:
            return
        while self._free and (taken := self.backlog.next()) is not None:
            self._free -= 1
            self._in_flight.add(taken[0].id)
            self._jobs.send.send_nowait(taken)  # room for one per free worker
        if len(self.backlog) < self._concurrency and not self._drained:
            signal(self._wakeups)

    def _close_handoff(self) -> list[ClaimedDelivery]:
        """No more fresh deliveries for us; those handed and not yet taken."""
        handoff = self._handoff
        if handoff is None:
            return []
        self._handoff = None
        taken = handoff.close()
        if getattr(self._store, "handoff", None) is handoff:
            setattr(self._store, "handoff", None)  # noqa: B010  # not on every store
        return taken

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
            self.backlog.release(delivery.agent_id, lane)
            taken_back.append(delivery)

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
            except BaseException:  # cancelled: the attempt did not finish
                self._unfinished.append(delivery.id)
                raise
            finally:
                if self._handoff is not None:
                    self._handoff.let_go(1)
                self._in_flight.discard(delivery.id)
                self._free += 1
                self.backlog.done(delivery.agent_id, lane)
                self._hand_over()
                if delivery.agent_id in self._skipped and not self.backlog.is_full(
                    delivery.agent_id
                ):
                    # an endpoint the last claim skipped can start again: claim
                    # its work waiting in the store
                    self._skipped.discard(delivery.agent_id)
                    self._drained = False
                    signal(self._wakeups)
                if self._stopping and not self._in_flight:
                    signal(self._idle)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give attempts in flight ``grace`` seconds, then cancel them
        and release their leases (and those of work not started) for the next start."""
        self._stopping = True
        left = self._left
        left += [d.id for d in self._close_handoff()]
        left += [d.id for d in self._take_back()]
        left += self.backlog.clear()
        if self._jobs is not None:
            self._jobs.send.close()  # idle workers return; busy ones after their attempt
        signal(self._wakeups)  # the claim loop sees the stop
        if self._in_flight and self._idle is not None:
            await wait(self._idle.receive, grace)
        left += self._in_flight
        if self._in_flight and self._workers_scope is not None:
            self._workers_scope.cancel()
        if left:
            await self._release(left)

    # one delivery ---------------------------------------------------------------------------

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        settings = delivery.settings
        url = None
        if delivery.event_type in OperationalEventType:
            # to the operations URL, without the owner's webhook header (it is
            # for the webhook's receiver); sent whether the endpoint is disabled
            url = settings.operations_url if settings is not None else None
            if settings is None or url is None:
                reason = "endpoint_removed: the agent has no operations URL"
                self._record(give_up(delivery, reason, now=self._clock()))
                return
            settings = msgspec.structs.replace(settings, header=None)
        elif settings is None or settings.url is None:
            reason = "endpoint_removed: the agent has no webhook URL"
            self._record(give_up(delivery, reason, now=self._clock()))
            return
        elif settings.disabled:
            reason = f"endpoint_disabled: {settings.disabled_reason or 'disabled'}"
            self._record(give_up(delivery, reason, now=self._clock(), status="held"))
            return
        if settings.signing_secret is None:  # a row written by hand or by another program
            reason = "endpoint_unsigned: the agent's settings have no signing secret"
            self._record(give_up(delivery, reason, now=self._clock()))
            return
        if time.monotonic() + self._timeout > delivery.lease_until:
            # Waited too long for its endpoint: another dispatcher may take it
            # once the lease runs out; do not race it.
            return
        done = await attempt(
            delivery,
            settings,
            client=self._client,
            timeout=self._timeout,
            policy=self._policy,
            clock=self._clock,
            url=url,
        )
        self.lanes.observe(
            delivery.agent_id, slow=done.timed_out or done.duration > self._timeout / 2
        )
        if done.outcome.next_attempt_at is not None:
            self.retry_scheduled(done.outcome.next_attempt_at)
        self._record(done.result)
