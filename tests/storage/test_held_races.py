"""Held deliveries where two writers meet: what the database decides when a
result, a settings save and a disabling cross, on both stores."""

from __future__ import annotations

import time

from helpers import AGENT, StoreFactory, put_settings, settings
from webhook_plugin import WebhookEventType
from webhook_plugin.storage.base import AttemptResult, ClaimedDelivery, NewDelivery, Store


def _queue(
    store: Store, webhook_id: str, kind: object = WebhookEventType.AGENT_USER_MESSAGE
) -> None:
    now = time.time()
    store.insert_deliveries(
        [
            NewDelivery(
                webhook_id=webhook_id,
                agent_id=AGENT.id,
                event_type=kind,  # type: ignore[arg-type]
                body=b'{"eventType": "x"}',
                created_at=now,
                next_attempt_at=now - 1,
                conversation_id="c1",
            )
        ]
    )


def _result(d: ClaimedDelivery, status: str, **kw: object) -> AttemptResult:
    return AttemptResult(
        delivery_id=d.id,
        agent_id=d.agent_id,
        attempt=d.attempts + 1,
        started_at=time.time(),
        duration_ms=1.0,
        status_code=kw.pop("status_code", None),  # type: ignore[arg-type]
        error=None,
        response_excerpt=None,
        status=status,  # type: ignore[arg-type]
        next_attempt_at=None,
        lease_owner=d.lease_owner,
        webhook_id=d.webhook_id,
        **kw,  # type: ignore[arg-type]
    )


def _status(store: Store, webhook_id: str) -> str:
    [row] = store.list_deliveries(agent_id=AGENT.id, webhook_id=webhook_id)
    return row.status


def test_disabling_an_endpoint_never_holds_an_operational_event(
    make_store: StoreFactory,
) -> None:
    """Two results disable one endpoint in turn: the ENDPOINT_DISABLED the first
    queued must go to the operations URL, not wait with the held webhooks."""
    store = make_store()
    store.open()
    try:
        ops = "https://ops.example.com/"
        put_settings(store, AGENT.id, settings("https://hooks.example.com/", operations_url=ops))
        _queue(store, "w1")
        _queue(store, "w2")
        [first, second] = store.claim_due(limit=2, lease_seconds=60, owner="a")
        told = store.record_attempts(
            [_result(first, "held", sent=True, status_code=410, disable_reason="410 Gone")]
        )
        assert [str(e.event_type) for e in told] == ["ENDPOINT_DISABLED"]
        [alert] = store.list_deliveries(agent_id=AGENT.id, event_type="ENDPOINT_DISABLED")
        # the second attempt, in flight meanwhile, disables it too
        assert (
            store.record_attempts(
                [_result(second, "held", sent=True, status_code=410, disable_reason="410 Gone")]
            )
            == []
        )  # told once
        assert _status(store, alert.webhook_id) == "pending"
        time.sleep(0.01)  # due from its creation, on the database's clock (SQLite: ms steps)
        assert [d.id for d in store.claim_due(limit=5, lease_seconds=60, owner="b")] == [alert.id]
    finally:
        store.close()


def test_a_held_result_for_an_endpoint_enabled_meanwhile_goes_out(
    make_store: StoreFactory,
) -> None:
    """A dispatcher saw the endpoint disabled and holds a delivery; the owner
    enabled it meanwhile (the save found nothing held yet): it is sent, not
    stranded as held."""
    store = make_store()
    store.open()
    try:
        put_settings(store, AGENT.id, settings("https://hooks.example.com/"))
        _queue(store, "w1")
        [d] = store.claim_due(limit=1, lease_seconds=60, owner="a")
        store.record_attempts([_result(d, "held", sent=False)])
        assert _status(store, "w1") == "pending"
        time.sleep(0.01)  # due from the result's start, on the database's clock (ms steps)
        assert [x.id for x in store.claim_due(limit=1, lease_seconds=60, owner="b")] == [d.id]
    finally:
        store.close()


def test_a_requeued_head_gets_its_whole_ordering_wait_again(make_store: StoreFactory) -> None:
    """``ordering_max_wait`` counts from when a delivery became its
    conversation's head this time, not from a first claim days before a hold."""
    store = make_store()
    store.open()
    try:
        put_settings(
            store,
            AGENT.id,
            settings("https://hooks.example.com/", ordering="conversation", ordering_max_wait=60),
        )
        now = time.time()
        store.insert_deliveries(
            [
                NewDelivery(
                    webhook_id="w1",
                    agent_id=AGENT.id,
                    event_type=WebhookEventType.AGENT_USER_MESSAGE,
                    body=b'{"eventType": "x"}',
                    created_at=now,
                    next_attempt_at=now - 1,
                    conversation_id="c1",
                    ordered=True,
                )
            ]
        )
        [d] = store.claim_due(limit=1, lease_seconds=60, owner="a")
        with store.transaction() as conn:  # as if it became the head two hours ago
            store.execute(conn, "UPDATE deliveries SET head_since = head_since - 7200")
        store.record_attempts([_result(d, "failed", sent=True, status_code=503)])
        assert store.recover(AGENT.id, since=0, rate=10_000) == 1
        time.sleep(0.01)
        [again] = store.claim_due(limit=1, lease_seconds=60, owner="b")
        assert again.head_deadline is not None
        assert again.head_deadline - time.monotonic() > 50  # a fresh minute, not spent
    finally:
        store.close()
