"""An endpoint's health over the last 24 hours, as a small server-rendered chart. Pure.

The store counts attempts per hour (:meth:`Store.attempt_stats`); this turns
the counts into bar geometry and words. The template draws the SVG from it,
with no script and no inline style, so the page's CSP holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = ["BUCKET_SECONDS", "HOURS", "Bar", "Health", "health_strip"]

HOURS: Final = 24
BUCKET_SECONDS: Final = 3600.0
#: a 2xx slower than this on average draws the latency bar as slow (the
#: settings test calls such an endpoint slow too)
SLOW_MS: Final = 5000.0

BAR_WIDTH: Final = 20
RATE_HEIGHT: Final = 44
LATENCY_TOP: Final = 54
LATENCY_HEIGHT: Final = 36


@dataclass(frozen=True)
class Bar:
    """One hour: a success bar (``ok`` part under the ``failed`` part) and a latency bar."""

    x: int
    label: str
    attempts: int
    ok_y: float
    ok_height: float
    failed_y: float
    failed_height: float
    latency_y: float
    latency_height: float
    latency_class: str


@dataclass(frozen=True)
class Health:
    bars: tuple[Bar, ...]
    attempts: int
    succeeded: int
    average_ms: float | None
    longest_ms: float | None
    width: int = HOURS * BAR_WIDTH
    height: int = LATENCY_TOP + LATENCY_HEIGHT
    rate_height: int = RATE_HEIGHT
    latency_top: int = LATENCY_TOP

    @property
    def summary(self) -> str:
        if not self.attempts:
            return "No attempts in the last 24 hours."
        assert self.average_ms is not None and self.longest_ms is not None
        rate = 100 * self.succeeded / self.attempts
        return (
            f"Last 24 hours: {self.attempts} attempt{'s' if self.attempts != 1 else ''},"
            f" {rate:.1f} % succeeded; latency {duration(self.average_ms)} on average,"
            f" {duration(self.longest_ms)} at most."
        )


def duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def health_strip(
    rows: Sequence[tuple[int, int, int, float, float]], *, since: float, hours: int = HOURS
) -> Health:
    """Bars for ``hours`` hours from ``since``, from ``(bucket, attempts,
    succeeded, average ms, longest ms)`` rows (hours without attempts absent)."""
    by_bucket = {r[0]: r for r in rows if 0 <= r[0] < hours}
    top_latency = max((r[3] for r in by_bucket.values()), default=0.0) or 1.0
    bars = []
    total = succeeded = 0
    weighted_ms = 0.0
    longest: float | None = None
    for i in range(hours):
        start = datetime.fromtimestamp(since + i * BUCKET_SECONDS, UTC)
        end = datetime.fromtimestamp(since + (i + 1) * BUCKET_SECONDS, UTC)
        span = f"{start:%H:%M} to {end:%H:%M} UTC"
        row = by_bucket.get(i)
        if row is None:
            bars.append(
                Bar(
                    x=i * BAR_WIDTH, label=f"{span}: no attempts", attempts=0,
                    ok_y=RATE_HEIGHT, ok_height=0, failed_y=RATE_HEIGHT, failed_height=0,
                    latency_y=LATENCY_TOP + LATENCY_HEIGHT, latency_height=0,
                    latency_class="none",
                )
            )  # fmt: skip
            continue
        _, count, ok, avg_ms, max_ms = row
        total += count
        succeeded += ok
        weighted_ms += avg_ms * count
        longest = max_ms if longest is None else max(longest, max_ms)
        ok_height = RATE_HEIGHT * ok / count
        failed_height = RATE_HEIGHT - ok_height
        latency_height = max(2.0, LATENCY_HEIGHT * avg_ms / top_latency)
        bars.append(
            Bar(
                x=i * BAR_WIDTH,
                label=(
                    f"{span}: {count} attempt{'s' if count != 1 else ''},"
                    f" {100 * ok / count:.0f} % succeeded, {duration(avg_ms)} on average"
                ),
                attempts=count,
                ok_y=RATE_HEIGHT - ok_height,
                ok_height=round(ok_height, 2),
                failed_y=0,
                failed_height=round(failed_height, 2),
                latency_y=round(LATENCY_TOP + LATENCY_HEIGHT - latency_height, 2),
                latency_height=round(latency_height, 2),
                latency_class="slow" if avg_ms > SLOW_MS else "fast",
            )
        )
    return Health(
        bars=tuple(bars),
        attempts=total,
        succeeded=succeeded,
        average_ms=weighted_ms / total if total else None,
        longest_ms=longest,
    )
