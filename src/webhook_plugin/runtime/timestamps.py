"""How the runtime writes a time: the one ISO 8601 formatter of its answers and
pages, and the one operators read in tables; and the times a message may carry.

Times are stored as Unix seconds. A value that cannot be a time any more
(rows written before times were bounded, a NaN) is shown clamped to what a
datetime can hold rather than failing the page or the answer around it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final, Literal

__all__ = ["MAX_CREATED_AT", "MIN_CREATED_AT", "check_created_at", "human", "iso"]

_FIRST: Final = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_LAST: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()

Precision = Literal["auto", "seconds", "milliseconds"]


def _moment(ts: float) -> datetime:
    try:
        value = float(ts)
    except (TypeError, ValueError):
        value = 0.0
    if math.isnan(value):
        value = 0.0
    return datetime.fromtimestamp(min(max(value, _FIRST), _LAST), UTC)


def iso(ts: float, timespec: Precision = "auto") -> str:
    """``2026-11-25T12:00:05.123Z``: UTC, with a ``Z``."""
    return _moment(ts).isoformat(timespec=timespec).replace("+00:00", "Z")


def human(ts: float, *, zone: bool = True) -> str:
    """``2026-11-25 12:00:05 UTC``: as operators read it in a table."""
    return _moment(ts).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if zone else ""))


#: a message's ``created_at`` must fall in this range once converted to UTC:
#: outside it a time cannot be stored as a timestamp and shown again
MIN_CREATED_AT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CREATED_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def check_created_at(value: datetime) -> datetime:
    """``value`` made aware (a time without an offset is UTC) and checked against
    :data:`MIN_CREATED_AT` .. :data:`MAX_CREATED_AT`; :class:`ValueError` if outside."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    try:
        utc: datetime | None = aware.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        utc = None
    if utc is None or not MIN_CREATED_AT <= utc <= MAX_CREATED_AT:
        raise ValueError(
            f"createdAt {value.isoformat()} is out of range: give a time between"
            " 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z (after conversion to UTC)"
        )
    return aware
