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
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from ..exceptions import StorageError
from ..storage.base import AttemptResult, ClaimedDelivery, Lease, Store
from ._streams import Stream, signal, wait
from .attempt import attempt, destination
from .claims import ClaimPlan, Wait
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
        self._plan = ClaimPlan(concurrency, claim_batch, poll_interval)
        #: claimed deliveries not yet handed to a worker
        self.backlog = Backlog(self.lanes)
        #: deliveries handed to a worker and not yet done
        self._in_flight: set[int] = set()
        #: how many more a write of this process may lease to us as it inserts
        #: (two rounds of work in all; read from the writing thread)
        self.room = 0
        #: what writes of this process leased to us, and how many each queued:
        #: appended by the writing threads, taken on the event loop
        self._mailbox: deque[tuple[Sequence[ClaimedDelivery], int]] = deque()
        #: leases to hand back: work that came as stop() began, or after it
        self._left: list[int] = []
        #: attempts cancelled mid-way by a crash of the loop (released for the next claim)
        self._unfinished: list[int] = []
        #: workers with no attempt in flight and none queued for them
        self._free = concurrency
        self._stopping = False
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
        self._plan.woken()
        signal(self._wakeups)

    def lease(self) -> Lease | None:
        """How a write of this process may lease fresh deliveries to us as it
        inserts them (no claim query for them), or None when we want none.
        Called from the writing thread: it reads one number, so that two writes
        at once may together lease us a little more than two rounds."""
        room = self.room
        return Lease(self.owner, self.lease_seconds, room, self._clock()) if room > 0 else None

    def leased(self, claimed: Sequence[ClaimedDelivery], queued: int) -> None:
        """From the writing thread, once its transaction committed: it leased us
        ``claimed`` of the ``queued`` deliveries. They are taken on the event
        loop (:meth:`take_leased`): by the writer's caller at once, or by the
        claim loop's next pass at the latest."""
        self._mailbox.append((claimed, queued))
        # what a next write of the same batch may lease (the loop recomputes it)
        self.room -= len(claimed)

    def take_leased(self, *, signal_loop: bool = True) -> None:
        """On the event loop: into the backlog with what writes leased us; a
        claim for what they queued and could not lease (the claim loop's own
        call, ``signal_loop=False``, is about to claim anyway)."""
        others = taken = False
        while self._mailbox:
            claimed, queued = self._mailbox.popleft()
            others = others or len(claimed) < queued
            if self._stopping:
                self._left += [d.id for d in claimed]  # released by stop() or release_left()
            elif claimed:
                self.backlog.ready.extend(claimed)
                taken = True
        if taken:
            self._hand_over()
        if others:
            self._plan.woken()
            if signal_loop:
                signal(self._wakeups)

    def retry_scheduled(self, at: float) -> None:
        """A retry falls due at ``at``: make sure the claim loop looks then."""
        if self._plan.retry_at(at):
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
            for stream in (self._jobs, self._wakeups, self._idle):
                stream.close()
            self._jobs = self._wakeups = self._idle = None
            self.room = 0  # until it runs again
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
        wakeups, plan = self._wakeups.receive, self._plan
        while not self._stopping:
            # any a writer's caller did not take (it was cancelled)
            self.take_leased(signal_loop=False)
            step = plan.next(
                ready=len(self.backlog),
                held=self.backlog.waiting() + len(self._in_flight),
                full=self.backlog.full(),
                now=self._clock(),
                mono=anyio.current_time(),
            )
            if isinstance(step, Wait):
                await wait(wakeups, step.seconds)
                plan.waited()
                continue
            try:
                claimed = await anyio.to_thread.run_sync(
                    functools.partial(
                        self._store.claim_due,
                        limit=step.limit,
                        lease_seconds=self.lease_seconds,
                        owner=self.owner,
                        skip_agents=step.skip,
                    ),
                    limiter=self._limiter,
                )
            except StorageError as exc:  # the database hiccuped: try again later
                log.warning("dispatcher.claim_failed", error=str(exc))
                await anyio.sleep(plan.poll_interval)
                continue
            except Exception:  # a bug of ours: log it, and claim again later
                log.exception("dispatcher.claim_crashed")
                await anyio.sleep(plan.poll_interval)
                continue
            plan.claimed(step, len(claimed), mono=anyio.current_time())
            # ours already (a lease that ran out while we held it): the attempt
            # under way decides, never a second copy of it
            claimed = [d for d in claimed if d.id not in self._in_flight]
            if self._stopping:  # stop() came during the claim: hand these back
                await self._release([d.id for d in claimed])
                return
            self.backlog.ready.extend(claimed)
            self._hand_over()

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

    def _hand_over(self) -> None:
        """Give free workers the next deliveries their endpoints may start, and ask
        the claim loop for more when the queue runs low."""
        if self._stopping or self._jobs is None:
            return
        backlog = self.backlog
        while self._free and (taken := backlog.next()) is not None:
            self._free -= 1
            self._in_flight.add(taken[0].id)
            self._jobs.send.send_nowait(taken)  # room for one per free worker
        self.room = 2 * self._concurrency - backlog.waiting() - len(self._in_flight)
        if len(backlog) < self._concurrency and self._plan.wants_more:
            signal(self._wakeups)

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
                self._in_flight.discard(delivery.id)
                self._free += 1
                self.backlog.done(delivery.agent_id, lane)
                self._hand_over()
                agent_id = delivery.agent_id
                if not self.backlog.is_full(agent_id) and self._plan.freed(agent_id):
                    signal(self._wakeups)  # its work the last claim left in the store
                if self._stopping and not self._in_flight:
                    signal(self._idle)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give attempts in flight ``grace`` seconds, then cancel them
        and release their leases (and those of work not started) for the next start."""
        self._stopping = True
        self.room = 0
        left = self._left
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
        await self.release_left()

    async def release_left(self) -> None:
        """Hand back the leases of work that came once :meth:`stop` began (the
        engine calls it again once its last writes are done)."""
        left, self._left = self._left, []
        if left:
            await self._release(left)

    # one delivery ---------------------------------------------------------------------------

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        where = destination(delivery, now=self._clock())
        if isinstance(where, AttemptResult):  # not to be sent: held, or failed
            self._record(where)
            return
        if time.monotonic() + self._timeout > delivery.lease_until:
            # Waited too long for its endpoint: another dispatcher may take it
            # once the lease runs out; do not race it.
            return
        settings, url = where
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
