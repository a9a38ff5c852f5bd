"""Metrics: what the engine counts (alone, and delivering to a real receiver), the
backlog read at each scrape, and the worker's own /metrics port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest

from helpers import (
    AGENT,
    POSTGRES_URL,
    StoreFactory,
    closed_port_url,
    config,
    pipeline,
    reply,
    settings,
    wait_until_status,
)
from receiver import Receiver, Reply
from servers import CLI, free_port, postgres_database
from webhook_plugin import DeliveryEngine
from webhook_plugin.delivery.metrics import DeliveryMetrics
from webhook_plugin.events import WebhookEventType
from webhook_plugin.exceptions import StorageError
from webhook_plugin.storage.base import AttemptResult, NewDelivery


def delivery(event_type: WebhookEventType) -> NewDelivery:
    return NewDelivery(
        webhook_id="msg_1",
        agent_id="a",
        event_type=event_type,
        body=b"{}",
        created_at=0.0,
        next_attempt_at=0.0,
    )


def result(status: str, *, sent: bool = True, ms: float = 20.0, disable: str | None = None):  # type: ignore[no-untyped-def]
    return AttemptResult(
        delivery_id=1,
        agent_id="a",
        attempt=1,
        started_at=0.0,
        duration_ms=ms,
        status_code=200 if status == "succeeded" else 500,
        error=None,
        response_excerpt=None,
        status=status,
        next_attempt_at=None,
        sent=sent,
        disable_reason=disable,  # type: ignore[arg-type]
    )


def test_counts_follow_what_was_stored_and_recorded() -> None:
    m = DeliveryMetrics(lambda: (7, 100.0), clock=lambda: 130.0)
    m.stored([delivery(WebhookEventType.AGENT_USER_MESSAGE)] * 3)
    m.recorded(
        [
            result("succeeded", ms=4),
            result("pending", ms=300),
            result("failed", ms=40, disable="the receiver answered 410 Gone"),
            result("failed", sent=False),  # its endpoint was removed: never sent
        ]
    )
    v = m.value
    assert v("webhook_plugin_events_queued_total", event_type="AGENT_USER_MESSAGE") == 3
    assert v("webhook_plugin_events_queued_total", event_type="USER_MESSAGE_RECEIVED") == 0
    assert v("webhook_plugin_attempts_total", outcome="succeeded") == 1
    assert v("webhook_plugin_attempts_total", outcome="retry") == 1
    assert v("webhook_plugin_attempts_total", outcome="failed") == 1
    assert v("webhook_plugin_deliveries_finished_total", status="failed") == 2
    assert v("webhook_plugin_endpoints_disabled_total") == 1
    assert v("webhook_plugin_attempt_duration_seconds_count") == 3
    assert v("webhook_plugin_attempt_duration_seconds_bucket", le="0.005") == 1
    assert v("webhook_plugin_pending_deliveries") == 7
    assert v("webhook_plugin_oldest_pending_seconds") == 30.0
    text = m.render()
    assert "# TYPE webhook_plugin_attempt_duration_seconds histogram" in text
    assert 'webhook_plugin_attempts_total{outcome="retry"} 1.0' in text


def test_an_unavailable_store_leaves_only_the_backlog_out() -> None:
    def broken() -> tuple[int, float | None]:
        raise StorageError("the database is down")

    m = DeliveryMetrics(broken)
    text = m.render()
    assert "webhook_plugin_events_queued_total" in text
    assert "webhook_plugin_pending_deliveries" not in text


def test_two_engines_never_mix_their_counts() -> None:
    a, b = DeliveryMetrics(), DeliveryMetrics()
    a.stored([delivery(WebhookEventType.AGENT_USER_MESSAGE)])
    assert b.value("webhook_plugin_events_queued_total", event_type="AGENT_USER_MESSAGE") == 0


@pytest.mark.slow
@pytest.mark.postgres
def test_the_worker_serves_its_metrics(tmp_path: Path) -> None:
    database = postgres_database(f"metrics_{os.getpid()}")
    config = tmp_path / "worker.toml"
    config.write_text(f'[runtime]\ndatabase = "{database}"\n')
    port = free_port()
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [*CLI, "worker", "--config", str(config), "--metrics-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
        assert r.status_code == 200
        assert "webhook_plugin_pending_deliveries 0.0" in r.text
        assert "webhook_plugin_attempts_total" in r.text
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        from webhook_plugin.storage.postgres import drop_schema

        drop_schema(POSTGRES_URL, database.rpartition("schema=")[2])


def _samples(text: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.mark.anyio
async def test_metrics_count_what_was_queued_attempted_and_is_still_waiting(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    answers = iter([Reply(500), Reply(200), Reply(410)])
    receiver.behaviour = lambda r: next(answers, Reply(200))
    # the third attempt would come after a minute: the closed port's delivery stays pending
    async with DeliveryEngine(make_store(), config(retry_schedule=(0, 0.05, 60))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine))
        await wait_until_status(engine, "succeeded")
        reply(pipeline(engine))
        await wait_until_status(engine, "held")  # 410: endpoint disabled, the event held
        await engine.save_settings("other", settings(closed_port_url()))
        engine.enqueue("other", WebhookEventType.AGENT_USER_MESSAGE, b"{}")  # retried
        await wait_until_status_of(engine, "other", min_attempts=1)
        m = _samples(await engine.render_metrics())
    assert m['webhook_plugin_events_queued_total{event_type="AGENT_USER_MESSAGE"}'] == 3
    assert m['webhook_plugin_events_queued_total{event_type="GROUP_MESSAGE_RECEIVED"}'] == 0
    assert m['webhook_plugin_attempts_total{outcome="succeeded"}'] == 1
    assert m['webhook_plugin_attempts_total{outcome="failed"}'] == 1
    assert m['webhook_plugin_attempts_total{outcome="retry"}'] >= 2  # 500, then the closed port
    assert m['webhook_plugin_deliveries_finished_total{status="succeeded"}'] == 1
    assert m['webhook_plugin_deliveries_finished_total{status="failed"}'] == 0  # held
    assert m["webhook_plugin_endpoints_disabled_total"] == 1
    sent = sum(v for k, v in m.items() if k.startswith("webhook_plugin_attempts_total"))
    assert m['webhook_plugin_attempt_duration_seconds_bucket{le="+Inf"}'] == sent
    assert m["webhook_plugin_attempt_duration_seconds_count"] == sent
    assert m["webhook_plugin_pending_deliveries"] == 1  # the closed port's, retrying
    assert 0 < m["webhook_plugin_oldest_pending_seconds"] < 30


async def wait_until_status_of(engine: DeliveryEngine, agent_id: str, *, min_attempts: int) -> None:
    with anyio.fail_after(10):
        while not [
            d for d in await engine.list_deliveries(agent_id=agent_id) if d.attempts >= min_attempts
        ]:
            await anyio.sleep(0.02)
