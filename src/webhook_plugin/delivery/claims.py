"""When the dispatcher claims, and how much: its decisions as one small state.

:class:`ClaimPlan` holds what the claim loop remembers between claims and
answers one question, :meth:`ClaimPlan.next`: claim now (how many, leaving out
which endpoints), or wait (how long at most). It does no I/O and reads no
clock of its own, so that its rules can be checked on their own
(``tests/delivery/test_claims.py``).

The rules:

- hold up to two rounds of work (``2 x concurrency``, in flight, parked and
  ready to start), and claim again once fewer than one round is ready to
  start: then up to one round in any case (the endpoints whose work waits
  parked are left out of the claim, so what it finds can start);
- a claim that found fewer than it asked for found all there is: wait for
  a wake-up (new work, a free slot of an endpoint it left out) or for the
  next retry, at most ``poll_interval`` (the work of leases that ran out
  elsewhere, or of another process that cannot wake us);
- leave out the endpoints that may start no more now: claiming their work
  would only park it under our lease, and crowd out the others;
- once a claim that left out such endpoints found nothing, do not ask again
  while they stay full, until a wake-up, a retry or a poll interval: on
  SQLite each such claim reads every row they have waiting.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Claim", "ClaimPlan", "Wait"]


class Claim(NamedTuple):
    """Claim up to ``limit`` due deliveries, none of ``skip``'s."""

    limit: int
    skip: tuple[str, ...]
    #: the wake-ups counted when it was decided (one that comes during the
    #: claim means it may have missed new work)
    wakes: int = 0


class Wait(NamedTuple):
    """Wait for a wake-up, at most ``seconds``."""

    seconds: float


@dataclass
class ClaimPlan:
    """The claim loop's memory, and its "what next".

    :param concurrency: the dispatcher's workers.
    :param batch: the most one claim asks for.
    :param poll_interval: the longest wait without a wake-up.
    """

    concurrency: int
    batch: int
    poll_interval: float
    #: the last claim found no more due: wait before the next
    drained: bool = False
    #: endpoints the last claim left out (full then): one that frees a slot
    #: undoes ``drained`` (their work may wait in the store)
    skipped: frozenset[str] = field(default_factory=frozenset)
    #: the earliest retry we know of that no claim has looked for yet
    next_retry_at: float | None = None
    #: a claim that left out only these endpoints found nothing, and until when
    #: (monotonic) one that leaves them out too would find nothing either, bar a
    #: wake-up or a retry: it would only read every row they have waiting
    barren: tuple[frozenset[str], float] | None = None
    #: wake-ups so far
    wakes: int = 0
    #: a claim is under way: what it returns is looked at next anyway
    claiming: bool = False
    #: the endpoints the claim under way leaves out
    claim_skip: frozenset[str] = field(default_factory=frozenset)

    def next(
        self, *, ready: int, held: int, full: Collection[str], now: float, mono: float
    ) -> Claim | Wait:
        """What the loop does now: ``ready`` claimed and waiting for a worker,
        ``held`` claimed in all (parked and in flight too), ``full`` the
        endpoints that may start no more; ``now`` the wall clock, ``mono`` the
        monotonic one."""
        self.claiming = False  # the last claim, if any, is over (or failed)
        retry_due = self.next_retry_at is not None and self.next_retry_at <= now
        if ready >= self.concurrency:
            return Wait(self.poll_interval)  # the workers ask for more once below
        # two rounds in all; but one round ready to start, whatever the endpoints
        # a claim leaves out hold parked (their work is not what it claims)
        room = min(self.batch, max(2 * self.concurrency - held, self.concurrency - ready))
        if self.drained and not retry_due:
            return Wait(self._nothing_due_for(now))
        skip = tuple(full)
        if skip and self.barren is not None and not retry_due:
            skipped, until = self.barren
            if mono < until and skipped.issubset(skip):
                self.drained, self.skipped = True, frozenset(skip)
                return Wait(min(until - mono, self._nothing_due_for(now)))
        if retry_due:
            self.next_retry_at = None  # this claim looks for it
            self.barren = None
        self.claiming, self.claim_skip = True, frozenset(skip)
        return Claim(room, skip, self.wakes)

    def claimed(self, claim: Claim, got: int, *, mono: float) -> None:
        """A claim returned ``got`` (or failed, ``got=0``): fewer than asked is
        all there was."""
        self.claiming = False
        self.drained = got < claim.limit
        self.skipped = frozenset(claim.skip) if self.drained else frozenset()
        if claim.skip and not got and claim.wakes == self.wakes:
            self.barren = (frozenset(claim.skip), mono + self.poll_interval)

    @property
    def wants_more(self) -> bool:
        """Whether a backlog running low should wake the loop: not while a claim
        is under way, nor after one found all there was (a token left then would
        only make it ask again for nothing)."""
        return not (self.drained or self.claiming)

    def waited(self) -> None:
        """A wait ended (a wake-up, a free slot, or its time ran out): look again."""
        self.drained = False

    def woken(self) -> None:
        """New work may be due, here or in another process."""
        self.drained, self.barren = False, None
        self.wakes += 1

    def freed(self, agent_id: str) -> bool:
        """An endpoint may start again; whether to claim for it (the last claim
        left its work in the store)."""
        if self.claiming and agent_id in self.claim_skip:
            # the claim under way left its work in the store: look again after it
            self.claim_skip -= {agent_id}
            self.wakes += 1  # (and what that claim found is no proof of barrenness)
            return True
        if agent_id not in self.skipped:
            return False
        self.skipped -= {agent_id}
        self.drained = False
        return True

    def retry_at(self, at: float) -> bool:
        """A retry falls due at ``at``; whether that is sooner than any we knew."""
        if self.next_retry_at is not None and self.next_retry_at <= at:
            return False
        self.next_retry_at = at
        return True

    def _nothing_due_for(self, now: float) -> float:
        if self.next_retry_at is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, self.next_retry_at - now))
