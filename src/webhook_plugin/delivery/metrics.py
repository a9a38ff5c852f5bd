"""What an operator scrapes: events queued, attempts and their outcomes and
durations, and the backlog, in the Prometheus format (``prometheus-client``).

Counters live in memory, per process, since it started (a Prometheus server
sums them over processes); the backlog gauges are read from the store when
scraped (:class:`BacklogCollector`), so every process reports the same,
shared backlog. No agent ids in labels: one series per agent would not
scale, and the delivery log answers per-agent questions. Each engine has a
registry of its own, so that two engines in one process never mix counts.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..events import WebhookEventType
from ..exceptions import StorageError
from ..storage.base import AttemptResult, NewDelivery

__all__ = ["CONTENT_TYPE", "BacklogCollector", "DeliveryMetrics", "merge"]

log = structlog.get_logger("webhook_plugin.delivery")

#: the Prometheus text exposition format
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: upper bounds (seconds) of the attempt-duration histogram's buckets
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BacklogCollector(Collector):
    """The shared backlog, read from the store at each scrape (a blocking call:
    scrape from a worker thread, as :meth:`DeliveryMetrics.render` does)."""

    def __init__(
        self, backlog: Callable[[], tuple[int, float | None]], clock: Callable[[], float]
    ) -> None:
        self._backlog = backlog
        self._clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without reading the store (the registry asks at registration)."""
        yield GaugeMetricFamily("webhook_plugin_pending_deliveries", "")
        yield GaugeMetricFamily("webhook_plugin_oldest_pending_seconds", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pending, oldest = self._backlog()
        except StorageError as exc:  # the counters are still worth answering
            log.warning("metrics.backlog_unavailable", error=str(exc))
            return
        yield GaugeMetricFamily(
            "webhook_plugin_pending_deliveries",
            "Deliveries waiting for an attempt (shared store).",
            value=pending,
        )
        age = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        yield GaugeMetricFamily(
            "webhook_plugin_oldest_pending_seconds",
            "Age of the oldest pending delivery.",
            value=age,
        )


class DeliveryMetrics:
    """Counts what the engine's outbox and recorder write (a batch at a time).

    :param backlog: reads ``(pending deliveries, oldest pending created_at)``
        from the store; ``None`` leaves the backlog gauges out.
    """

    def __init__(
        self,
        backlog: Callable[[], tuple[int, float | None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._queued = Counter(
            "webhook_plugin_events_queued",
            "Events durably queued, by event type.",
            ["event_type"],
            registry=registry,
        )
        # each event type's child, looked up once (``labels()`` takes a lock)
        self._queued_children = {t.value: self._queued.labels(t.value) for t in WebhookEventType}
        self._attempts = Counter(
            "webhook_plugin_attempts",
            "Delivery requests sent, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._finished = Counter(
            "webhook_plugin_deliveries_finished",
            "Deliveries that ended, by status.",
            ["status"],
            registry=registry,
        )
        for outcome in ("succeeded", "retry", "failed"):
            self._attempts.labels(outcome)
        for status in ("succeeded", "failed"):
            self._finished.labels(status)
        self._disabled = Counter(
            "webhook_plugin_endpoints_disabled",
            "Endpoints disabled (410, or failing).",
            registry=registry,
        )
        self._duration = Histogram(
            "webhook_plugin_attempt_duration_seconds",
            "Time from request to answer.",
            buckets=BUCKETS,
            registry=registry,
        )
        if backlog is not None:
            registry.register(BacklogCollector(backlog, clock))

    # Counted per batch, then added once per label: prometheus-client's
    # ``labels()`` takes a lock and a lookup, too much to pay per event.

    def stored(self, items: Sequence[NewDelivery]) -> None:
        queued = self._queued_children
        if len(items) == 1:  # a chat message's one event: no tally to make
            queued[items[0].event_type.value].inc()
            return
        for event_type, count in Tally(item.event_type.value for item in items).items():
            queued[event_type].inc(count)

    def recorded(self, results: Sequence[AttemptResult]) -> None:
        finished: Tally[str] = Tally()
        attempts: Tally[str] = Tally()
        disabled = 0
        observe = self._duration.observe
        for r in results:
            if r.status in ("succeeded", "failed"):  # a held one is not finished
                finished[r.status] += 1
            if r.disable_reason:
                disabled += 1
            if r.sent:
                outcome = {"pending": "retry", "held": "failed"}.get(r.status, r.status)
                attempts[outcome] += 1
                observe(r.duration_ms / 1000)
        for status, count in finished.items():
            self._finished.labels(status).inc(count)
        for kind, count in attempts.items():
            self._attempts.labels(kind).inc(count)
        if disabled:
            self._disabled.inc(disabled)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (``None`` counts as 0), for tests and the CLI."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> str:
        """Every metric in the text format (blocking: it reads the backlog)."""
        return generate_latest(self.registry).decode()


def merge(*texts: str, gauges: bool = True) -> str:
    """Several processes' metrics as one (the text format in and out), as a
    Prometheus server would see them: counters and histograms summed, each
    ``_created`` the earliest; any other gauge (the shared backlog, the same
    in every process; a process's health) is taken from the first text that
    has it, or left out with ``gauges=False``. ValueError if a text does not
    parse."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not gauges and family.type == "gauge" and not family.name.endswith("_created"):
                continue
            if family.name not in families:
                families[family.name] = family
                values[family.name] = {}
            kind, seen = family.type, values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen[key] = sample.value
                elif kind in ("counter", "histogram"):
                    seen[key] += sample.value
                elif family.name.endswith("_created"):
                    seen[key] = min(seen[key], sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families, values))
    return generate_latest(registry).decode()


class _Merged(Collector):
    def __init__(
        self,
        families: dict[str, Metric],
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]],
    ) -> None:
        self._families, self._values = families, values

    def collect(self) -> Iterator[Metric]:
        for name, family in self._families.items():
            merged = Metric(name, family.documentation, family.type)
            for (sample, labels), value in self._values[name].items():
                merged.add_sample(sample, dict(labels), value)
            yield merged
