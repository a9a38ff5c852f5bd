"""How many attempts each endpoint may have in flight. Pure: no I/O, no clock.

An endpoint that does not answer must hold only its own slots, never those of
healthy ones (Svix and Hookdeck isolate slow endpoints the same way). Two
rules do it:

- **Each endpoint's cap adapts**, as TCP's congestion window does: a new
  endpoint sends one attempt, a probe, then starts with a few slots; every
  quick attempt adds one up to the ceiling, every attempt that timed out or
  took more than half the timeout halves it, down to one.
- **Endpoints not known to be quick share a bounded part of the pool.** An
  endpoint is *quick* once its last attempt ended quickly, *slow* once its
  last attempt was slow, and *new* before its first attempt ends. Slow
  endpoints share at most ``slow_slots`` between them, new ones
  ``new_slots``, however many there are; quick ones may use the rest.

So five (or five hundred) endpoints that never answer hold a bounded number of
slots, and a healthy endpoint, new or known, always finds one free.

The :class:`Backlog` applies them to the claimed deliveries waiting for a
worker: it gives out the next one whose endpoint may start an attempt, and
sets aside (parks) the others until a slot of theirs frees.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from ..storage.base import ClaimedDelivery

__all__ = ["Backlog", "EndpointLanes", "Lane"]

Lane = Literal["quick", "new", "slow"]


class EndpointLanes:
    """Per-endpoint caps (additive increase, multiplicative decrease) and lanes.

    :param ceiling: the most attempts in flight for one endpoint.
    :param start: the cap of an endpoint not seen before.
    :param slow_slots: the most attempts in flight for all slow endpoints together.
    :param new_slots: the most attempts in flight for all new endpoints together.
    """

    __slots__ = ("_caps", "_quick", "_slow", "busy", "ceiling", "shares", "start")

    def __init__(self, *, ceiling: int, start: int, slow_slots: int, new_slots: int) -> None:
        self.ceiling = ceiling
        self.start = min(start, ceiling)
        #: the most attempts in flight per lane (the quick lane is bounded by the pool)
        self.shares: dict[Lane, int] = {
            "quick": 1 << 62,
            "new": max(1, new_slots),
            "slow": max(1, slow_slots),
        }
        #: attempts in flight per lane
        self.busy: dict[Lane, int] = {"quick": 0, "new": 0, "slow": 0}
        #: caps that differ from ``start`` (an endpoint back at ``start`` is forgotten)
        self._caps: dict[str, int] = {}
        self._quick: set[str] = set()
        self._slow: set[str] = set()

    def cap(self, endpoint: str) -> int:
        return self._caps.get(endpoint, self.start)

    def lane(self, endpoint: str) -> Lane:
        if endpoint in self._quick:
            return "quick"
        return "slow" if endpoint in self._slow else "new"

    def may_start(self, endpoint: str, in_flight: int) -> bool:
        """Whether one more attempt may start for ``endpoint``, which has ``in_flight``."""
        lane = self.lane(endpoint)
        if in_flight >= (1 if lane == "new" else self.cap(endpoint)):
            return False
        return self.busy[lane] < self.shares[lane]

    def observe(self, endpoint: str, *, slow: bool) -> None:
        """An attempt ended: quickly (whatever its answer), or slowly / timed out."""
        cap = self.cap(endpoint)
        if slow:
            cap = max(1, cap // 2)
            self._slow.add(endpoint)
            self._quick.discard(endpoint)
        else:
            cap = min(self.ceiling, cap + 1)
            self._quick.add(endpoint)
            self._slow.discard(endpoint)
        if cap == self.start:
            self._caps.pop(endpoint, None)
        else:
            self._caps[endpoint] = cap


class Backlog:
    """Claimed deliveries not yet started, in order, and the slots of those started.

    A delivery whose endpoint is at its cap, or whose lane is full, is parked
    aside rather than holding a worker; it comes back to the front of the line,
    in order, when a slot it may use frees.
    """

    __slots__ = ("busy", "lanes", "parked", "ready")

    def __init__(self, lanes: EndpointLanes) -> None:
        self.lanes = lanes
        #: claimed deliveries in the order they are to start
        self.ready: deque[ClaimedDelivery] = deque()
        #: deliveries waiting for a slot of their endpoint (or of its lane)
        self.parked: dict[str, deque[ClaimedDelivery]] = {}
        #: attempts started per endpoint and not yet ended
        self.busy: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ready)

    def full(self) -> list[str]:
        """Endpoints that may start no more attempts now (some wait parked, or
        all their slots are taken): claiming theirs would only park them."""
        full = list(self.parked)
        full += (a for a in self.busy if a not in self.parked and self.is_full(a))
        return full

    def is_full(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is one of :meth:`full`."""
        return agent_id in self.parked or not self.lanes.may_start(
            agent_id, self.busy.get(agent_id, 0)
        )

    def waiting(self) -> int:
        """How many are not started, parked ones included."""
        return len(self.ready) + sum(len(q) for q in self.parked.values())

    def next(self) -> tuple[ClaimedDelivery, Lane] | None:
        """The next delivery whose endpoint may start an attempt, and its lane (its
        slot is taken); ``None`` when none may start now."""
        taken = self._next()
        if taken is None and self.parked and self._unpark_stalled():
            taken = self._next()
        return taken

    def _next(self) -> tuple[ClaimedDelivery, Lane] | None:
        ready, lanes = self.ready, self.lanes
        while ready:
            delivery = ready.popleft()
            agent_id = delivery.agent_id
            busy = self.busy.get(agent_id, 0)
            if not lanes.may_start(agent_id, busy):
                self.parked.setdefault(agent_id, deque()).append(delivery)
                continue
            self.busy[agent_id] = busy + 1
            lane = lanes.lane(agent_id)
            lanes.busy[lane] += 1
            return delivery, lane
        return None

    def release(self, agent_id: str, lane: Lane) -> int:
        """Free a slot without waking anyone; how many ``agent_id`` still has."""
        left = self.busy[agent_id] - 1
        if left:
            self.busy[agent_id] = left
        else:
            del self.busy[agent_id]
        self.lanes.busy[lane] -= 1
        return left

    def done(self, agent_id: str, lane: Lane) -> None:
        """An attempt ended: its slot frees, and parked deliveries that may use it
        go back to the front of the line."""
        left = self.release(agent_id, lane)
        # as many of its parked deliveries as its cap now allows (a probe that
        # went well opens several slots at once)
        self._unpark(agent_id, max(1, self.lanes.cap(agent_id) - left))
        if lane == "quick":
            return
        # a slot of a shared lane is free: another endpoint may wait for it
        # (this one may have moved to another lane with the attempt that ended)
        for other in self.parked:
            if other != agent_id and self.lanes.lane(other) == lane and self._unpark(other):
                return

    def clear(self) -> list[int]:
        """Empty the line, parked deliveries included; their ids."""
        ids = [d.id for d in self.ready]
        ids += [d.id for q in self.parked.values() for d in q]
        self.ready.clear()
        self.parked.clear()
        return ids

    def reset_slots(self) -> None:
        """No attempt is in flight any more (the workers are gone)."""
        self.busy.clear()
        self.lanes.busy.update(dict.fromkeys(self.lanes.busy, 0))

    def _unpark_stalled(self) -> bool:
        # a parked endpoint with nothing in flight: no slot of its own will free
        # to wake it
        for agent_id in self.parked:
            if not self.busy.get(agent_id) and self.lanes.may_start(agent_id, 0):
                return self._unpark(agent_id)
        return False

    def _unpark(self, agent_id: str, count: int = 1) -> bool:
        parked = self.parked.get(agent_id)
        if not parked:
            return False
        taken = [parked.popleft() for _ in range(min(count, len(parked)))]
        self.ready.extendleft(reversed(taken))  # their turn comes first, in order
        if not parked:
            del self.parked[agent_id]
        return True
