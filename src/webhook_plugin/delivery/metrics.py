"""What an operator scrapes: events queued, attempts and their outcomes and
durations, and the backlog.

Counters live in memory, per process, since it started (a Prometheus server
sums them over processes); the backlog gauges come from the store, so every
process reports the same, shared backlog. No agent ids in labels: one series
per agent would not scale, and the delivery log answers per-agent questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Final

from ..events import WebhookEventType
from ..storage.base import AttemptResult, NewDelivery

__all__ = ["DeliveryMetrics"]

#: upper bounds (seconds) of the attempt-duration histogram's buckets
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DeliveryMetrics:
    """Counts what the engine's outbox and recorder write (a batch at a time)."""

    def __init__(self) -> None:
        self.queued: Counter[str] = Counter({str(t): 0 for t in WebhookEventType})
        #: requests sent, by outcome: succeeded, retry (scheduled) or failed
        self.attempts: Counter[str] = Counter({"succeeded": 0, "retry": 0, "failed": 0})
        #: deliveries that ended, by status (failed includes those never sent
        #: because their endpoint was removed or disabled)
        self.finished: Counter[str] = Counter({"succeeded": 0, "failed": 0})
        self.endpoints_disabled = 0
        self._buckets = [0] * len(BUCKETS)
        self._duration_sum = 0.0
        self._duration_count = 0

    def stored(self, items: Sequence[NewDelivery]) -> None:
        for item in items:
            self.queued[item.event_type.value] += 1

    def recorded(self, results: Sequence[AttemptResult]) -> None:
        for r in results:
            if r.status != "pending":
                self.finished[r.status] += 1
            if r.disable_reason:
                self.endpoints_disabled += 1
            if not r.sent:
                continue
            self.attempts["retry" if r.status == "pending" else r.status] += 1
            seconds = r.duration_ms / 1000
            self._duration_sum += seconds
            self._duration_count += 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
                    break

    def render(self, *, pending: int, oldest_pending_age: float | None) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            lines.append(f"# HELP webhook_plugin_{name} {help_}")
            lines.append(f"# TYPE webhook_plugin_{name} {kind}")

        family("events_queued_total", "counter", "Events durably queued, by event type.")
        for event_type, n in sorted(self.queued.items()):
            lines.append(f'webhook_plugin_events_queued_total{{event_type="{event_type}"}} {n}')
        family("attempts_total", "counter", "Delivery requests sent, by outcome.")
        for outcome, n in sorted(self.attempts.items()):
            lines.append(f'webhook_plugin_attempts_total{{outcome="{outcome}"}} {n}')
        family("deliveries_finished_total", "counter", "Deliveries that ended, by status.")
        for status, n in sorted(self.finished.items()):
            lines.append(f'webhook_plugin_deliveries_finished_total{{status="{status}"}} {n}')
        family("endpoints_disabled_total", "counter", "Endpoints disabled (410, or failing).")
        lines.append(f"webhook_plugin_endpoints_disabled_total {self.endpoints_disabled}")
        family("attempt_duration_seconds", "histogram", "Time from request to answer.")
        cumulative = 0
        for bound, n in zip(BUCKETS, self._buckets, strict=True):
            cumulative += n
            lines.append(
                f'webhook_plugin_attempt_duration_seconds_bucket{{le="{bound}"}} {cumulative}'
            )
        lines.append(
            f'webhook_plugin_attempt_duration_seconds_bucket{{le="+Inf"}} {self._duration_count}'
        )
        lines.append(f"webhook_plugin_attempt_duration_seconds_sum {self._duration_sum:.6f}")
        lines.append(f"webhook_plugin_attempt_duration_seconds_count {self._duration_count}")
        family("pending_deliveries", "gauge", "Deliveries waiting for an attempt (shared store).")
        lines.append(f"webhook_plugin_pending_deliveries {pending}")
        family("oldest_pending_seconds", "gauge", "Age of the oldest pending delivery.")
        lines.append(f"webhook_plugin_oldest_pending_seconds {oldest_pending_age or 0:.3f}")
        return "\n".join(lines) + "\n"
