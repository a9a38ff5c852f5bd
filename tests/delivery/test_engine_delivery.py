"""The delivery engine against real receivers on 127.0.0.1, on both backends and stores:
what is sent, and how each answer (or none) is retried, failed or disables the endpoint."""

from __future__ import annotations

import time

import anyio
import pytest
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from helpers import (
    AGENT,
    AGENT_MSG,
    CONVERSATION,
    SECRET,
    StoreFactory,
    config,
    pipeline,
    reply,
    settings,
    wait_until_status,
)
from receiver import Receiver, Reply
from webhook_plugin import DeliveryEngine, WebhookEventType

pytestmark = pytest.mark.anyio


async def test_delivers_signed_payload_with_the_contract_headers(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url + "/hook?x=1"))
        [ticket] = reply(pipeline(engine))
        await ticket
        [got] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
    assert got.path == "/hook?x=1"
    assert got.headers["authorization"] == "Bearer s3cr3t-token-value"  # verbatim
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("webhook-plugin/")
    assert got.headers["webhook-id"] == ticket.webhook_id
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    # verified by the Standard Webhooks reference library, not by our own code
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["eventType"] == "AGENT_USER_MESSAGE"
    assert payload["agentResponse"] == AGENT_MSG.text


async def test_ticket_means_durably_stored(make_store: StoreFactory, receiver: Receiver) -> None:
    receiver.behaviour = lambda r: Reply(status=500)
    async with DeliveryEngine(make_store(), config(workers=False)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        tickets = reply(pipeline(engine), 50)
        for t in tickets:
            await t
        # a second store on the same database sees them all, without the engine's help
        other = make_store()
        await anyio.to_thread.run_sync(other.open)
        try:
            rows = await anyio.to_thread.run_sync(lambda: other.list_deliveries(limit=1000))
        finally:
            await anyio.to_thread.run_sync(other.close)
    assert {r.webhook_id for r in rows} == {t.webhook_id for t in tickets}
    assert receiver.requests == []  # workers=False: this process only queues


async def test_failures_are_retried_with_the_same_webhook_id(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    answers = iter([Reply(500), Reply(502, body=b"upstream down"), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        [ticket] = reply(pipeline(engine))
        await ticket
        got = await anyio.to_thread.run_sync(receiver.wait_for, 3)
        [record] = await wait_until_status(engine, "succeeded")
        attempts = await engine.list_attempts(record.id)
    assert {r.headers["webhook-id"] for r in got} == {ticket.webhook_id}
    assert record.attempts == 3 and record.last_status_code == 200
    assert [a.status_code for a in attempts] == [500, 502, 200]
    assert attempts[1].response_excerpt == "upstream down"
    assert attempts[0].error == "http_500"


async def test_retry_after_is_honoured(make_store: StoreFactory, receiver: Receiver) -> None:
    answers = iter([Reply(429, headers={"Retry-After": "1"}), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0, 0.01))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine))
        first, second = await anyio.to_thread.run_sync(receiver.wait_for, 2)
    assert second.at - first.at >= 0.95


async def test_a_hanging_receiver_times_out_and_is_retried(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    answers = iter([Reply(200, delay=2.0), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    async with DeliveryEngine(make_store(), config(timeout=0.3)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine))
        [done] = await wait_until_status(engine, "succeeded")
        attempts = await engine.list_attempts(done.id)
    assert attempts[0].error is not None and attempts[0].error.startswith("timeout")
    assert attempts[0].status_code is None
    assert attempts[1].status_code == 200


async def test_a_reset_connection_is_retried(make_store: StoreFactory, receiver: Receiver) -> None:
    answers = iter([Reply(reset=True), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine))
        [done] = await wait_until_status(engine, "succeeded")
        attempts = await engine.list_attempts(done.id)
    assert attempts[0].error is not None and attempts[0].error.startswith("connect_error")


async def test_redirects_are_never_followed(make_store: StoreFactory, receiver: Receiver) -> None:
    with Receiver() as elsewhere:
        receiver.behaviour = lambda r: Reply(302, headers={"Location": elsewhere.url + "/stolen"})
        async with DeliveryEngine(make_store(), config(retry_schedule=(0, 0.02))) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            reply(pipeline(engine))
            [failed] = await wait_until_status(engine, "failed")
        assert elsewhere.requests == [] and elsewhere.connections == 0
    assert failed.last_status_code == 302 and failed.last_error == "http_302"


async def test_event_filter_and_missing_url_queue_nothing(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        pm = pipeline(engine)
        assert reply(pm) == []  # no settings at all
        await engine.save_settings(
            AGENT.id, settings(receiver.url, events=["AGENT_MESSAGE_BLOCKED"])
        )
        assert reply(pm) == []  # filtered out
        tickets = pm.hook.on_blocked(
            agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG, reason="24 h window"
        )
        assert [t.event_type for t in tickets] == [WebhookEventType.AGENT_MESSAGE_BLOCKED]
        await anyio.to_thread.run_sync(receiver.wait_for, 1)


async def test_response_body_is_read_only_up_to_a_cap(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, body=b"x" * 1_000_000)
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine))
        [done] = await wait_until_status(engine, "succeeded")
        [attempt] = await engine.list_attempts(done.id)
    assert attempt.response_excerpt is not None and len(attempt.response_excerpt) <= 512


async def test_every_event_arrives_when_a_tenth_of_answers_fail(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    import random
    from collections import Counter

    rng = random.Random(7)
    receiver.behaviour = lambda r: Reply(500) if rng.random() < 0.1 else Reply(200)
    n = 300
    async with DeliveryEngine(
        make_store(), config(retry_schedule=(0, 0.02, 0.02, 0.05, 0.1, 0.2))
    ) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        tickets = reply(pipeline(engine), n)
        for t in tickets:
            await t
        with anyio.fail_after(30):
            rows = await engine.list_deliveries(agent_id=AGENT.id, status="succeeded", limit=1000)
            while len(rows) < n:  # each one answered 2xx at last
                await anyio.sleep(0.05)
                rows = await engine.list_deliveries(
                    agent_id=AGENT.id, status="succeeded", limit=1000
                )
    sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(sent) == {t.webhook_id for t in tickets}
    assert {r.webhook_id for r in rows} == {t.webhook_id for t in tickets}  # none lost
    assert len(receiver.requests) > n  # some were retried


async def test_410_gone_disables_the_endpoint_and_holds_its_events_until_saved(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(410)
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        pm = pipeline(engine)
        reply(pm)
        [gone] = await wait_until_status(engine, "held")
        assert gone.attempts == 1 and gone.last_status_code == 410
        stored = await engine.get_settings(AGENT.id)
        assert stored is not None and stored.disabled and "410" in (stored.disabled_reason or "")
        [later] = reply(pm)  # a disabled endpoint's events are kept, held
        await later
        assert len(await wait_until_status(engine, "held", 2)) == 2
        assert len(receiver.requests) == 1
        receiver.behaviour = lambda r: Reply(200)
        await engine.save_settings(AGENT.id, settings(receiver.url))  # saving enables it again
        assert len(await wait_until_status(engine, "succeeded", 2)) == 2


async def test_endpoint_failing_for_too_long_is_disabled(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(500)
    cfg = config(retry_schedule=(0, 0.3, 0.3, 0.3), disable_after=0.2)
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), cfg) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            reply(pipeline(engine))
            [held] = await wait_until_status(engine, "held")
            stored = await engine.get_settings(AGENT.id)
    assert held.attempts == 2  # the second failure came after disable_after
    assert stored is not None and stored.disabled
    assert any(e["event"] == "endpoint.disabled" for e in logs)
