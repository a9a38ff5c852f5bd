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
"""

from __future__ import annotations

from typing import Literal

__all__ = ["EndpointLanes", "Lane"]

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
