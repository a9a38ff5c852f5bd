"""When to try a failed delivery again. Pure: no I/O, randomness injected."""

from __future__ import annotations

import email.utils
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_SCHEDULE", "RetryPolicy", "parse_retry_after"]

#: Standard Webhooks: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h
DEFAULT_SCHEDULE: Final = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)

_DELTA_SECONDS: Final = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a delivery is tried.

    :param schedule: seconds to wait before each attempt; its length is the
        number of attempts.
    :param jitter: each wait is scaled by a random factor in ``1 +- jitter``.
    :param max_retry_after: the longest ``Retry-After`` honoured, in seconds.
    :param disable_after: an endpoint that has failed without a single success
        for this long is disabled.
    """

    schedule: Sequence[float] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    max_retry_after: float = 86400.0
    disable_after: float = 5 * 86400.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("retry_schedule needs at least one attempt")
        if any(s < 0 for s in self.schedule):
            raise ValueError("retry_schedule values must be >= 0 seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @property
    def attempts(self) -> int:
        return len(self.schedule)

    def first_delay(self) -> float:
        return self._jittered(self.schedule[0])

    def next_delay(self, attempts_made: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt, or ``None`` when there is none left.

        :param attempts_made: attempts made so far in this round (>= 1).
        :param retry_after: the receiver's ``Retry-After`` in seconds: we never
            retry earlier than it asks, up to :attr:`max_retry_after`.
        """
        if attempts_made >= len(self.schedule):
            return None
        delay = self._jittered(self.schedule[attempts_made])
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def _jittered(self, seconds: float) -> float:
        if not seconds or not self.jitter:
            return float(seconds)
        return seconds * (1 + self.jitter * (2 * self.rand() - 1))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date).

    A receiver's header is anyone's text: only ASCII digits count as seconds
    (``str.isdigit`` also takes ``"\u00b2"``), and anything that is neither
    is ignored, never an error.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        # longer than any wait we honour: no need to make a huge number of it
        return float(value) if len(value) <= 12 else float("1e12")
    if len(value) > 64:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
        seconds = moment.timestamp() - now
    except Exception:  # the stdlib raises several kinds on junk; junk is ignored
        return None
    return max(0.0, seconds)
