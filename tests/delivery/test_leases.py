"""Leases are the database's to time and to fence: a dispatcher on a host whose
clock is ahead takes no lease that is still running, and a result made under a
lease that another dispatcher took over since is dropped, not written."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest
from structlog.testing import capture_logs

from helpers import (
    AGENT,
    StoreFactory,
    config,
    pipeline,
    put_settings,
    reply,
    settings,
    wait_until_status,
)
from receiver import Receiver, Reply
from webhook_plugin import DeliveryEngine
from webhook_plugin.events import WebhookEventType
from webhook_plugin.storage.base import AttemptResult, NewDelivery


@pytest.mark.anyio
async def test_a_dispatcher_whose_clock_is_ahead_takes_no_running_lease(
    make_store: StoreFactory,
) -> None:
    """Two dispatchers on one database, one on a host whose clock is 40 s ahead
    (longer than a lease): every event arrives once."""
    with Receiver(lambda r: Reply(200, delay=0.5)) as rx:
        cfg = config(timeout=2.0, per_endpoint_concurrency=4)  # 9 s leases
        async with (
            DeliveryEngine(make_store(), cfg) as engine,
            DeliveryEngine(make_store(), cfg, clock=lambda: time.time() + 40) as ahead,
        ):
            await engine.save_settings(AGENT.id, settings(rx.url))
            await ahead.endpoints.reload()
            for ticket in reply(pipeline(engine), 20):
                await ticket
            with anyio.fail_after(30):
                await wait_until_status(engine, "succeeded", 20)
            await anyio.sleep(1.0)  # a duplicate under way would arrive meanwhile
    sent = Counter(r.headers["webhook-id"] for r in rx.requests)
    assert len(sent) == 20
    assert sent.most_common(1)[0][1] == 1, sent.most_common(3)


def test_a_result_made_under_a_lease_taken_over_is_dropped_and_logged(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    store.open()
    try:
        put_settings(store, AGENT.id, settings("https://hooks.example.com/"))
        now = time.time()
        store.insert_deliveries(
            [
                NewDelivery(
                    webhook_id="msg_1",
                    agent_id=AGENT.id,
                    event_type=WebhookEventType.AGENT_USER_MESSAGE,
                    body=b"{}",
                    created_at=now,
                    next_attempt_at=now - 1,  # due on the database's clock (ms steps)
                )
            ]
        )
        [stalled] = store.claim_due(limit=1, lease_seconds=0.0, owner="stalled")
        assert stalled.lease_owner == "stalled"
        time.sleep(0.01)  # its lease ran out (on the database's clock)
        [taken] = store.claim_due(limit=1, lease_seconds=60.0, owner="new")
        assert taken.id == stalled.id
        assert store.claim_due(limit=1, lease_seconds=60.0, owner="third") == []

        def result(owner: str, status: str) -> AttemptResult:
            return AttemptResult(
                delivery_id=stalled.id,
                agent_id=AGENT.id,
                attempt=1,
                started_at=time.time(),
                duration_ms=5.0,
                status_code=200 if status == "succeeded" else 503,
                error=None,
                response_excerpt=None,
                status=status,  # type: ignore[arg-type]
                next_attempt_at=None if status == "succeeded" else time.time() + 60,
                lease_owner=owner,
            )

        with capture_logs() as logs:
            store.record_attempts([result("stalled", "succeeded")])
        [dropped] = [e for e in logs if e["event"] == "attempt.result_dropped"]
        assert dropped["delivery_id"] == stalled.id and dropped["log_level"] == "warning"
        record = store.get_delivery(stalled.id)
        assert record.status == "pending" and record.attempts == 0
        assert store.list_attempts(stalled.id) == []
        store.record_attempts([result("new", "failed")])  # the holder's result is written
        record = store.get_delivery(stalled.id)
        assert record.status == "failed" and record.attempts == 1
    finally:
        store.close()
