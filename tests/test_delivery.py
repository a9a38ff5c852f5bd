"""The delivery engine against real receivers on 127.0.0.1, on both backends and stores."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from structlog.testing import capture_logs

from conftest import (
    AGENT,
    AGENT_MSG,
    CONVERSATION,
    USER_MSG,
    closed_port_url,
    config,
    pipeline,
    reply,
)
from receiver import Receiver, Recorded, Reply
from webhook_plugin import DeliveryEngine, WebhookEventType, WebhookSettings
from webhook_plugin.storage.base import Store

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = "Authorization: Bearer s3cr3t-token-value"

StoreFactory = Callable[[], Store]


def settings(url: str, **kw: object) -> WebhookSettings:
    return WebhookSettings.validated(url=url, header=AUTH, signing_secret=SECRET, **kw)  # type: ignore[arg-type]


async def deliveries(engine: DeliveryEngine, status: str | None = None) -> list:
    return await engine.list_deliveries(agent_id=AGENT.id, status=status)  # type: ignore[arg-type]


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


async def wait_until_status(
    engine: DeliveryEngine, status: str, count: int = 1, *, min_attempts: int = 0
) -> list:
    async def check() -> list:
        rows = [r for r in await deliveries(engine, status) if r.attempts >= min_attempts]
        return rows if len(rows) >= count else []

    with anyio.fail_after(10):
        while not (rows := await check()):
            await anyio.sleep(0.02)
    return rows


async def test_after_the_last_attempt_the_delivery_is_failed_and_kept_then_redelivered(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    fail = True
    receiver.behaviour = lambda r: Reply(503 if fail else 204)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0, 0.02, 0.02))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        [ticket] = reply(pipeline(engine))
        [failed] = await wait_until_status(engine, "failed")
        assert failed.attempts == 3 and failed.last_error == "http_503"
        assert failed.next_attempt_at is None
        fail = False
        await engine.redeliver(failed.id, AGENT.id)
        [done] = await wait_until_status(engine, "succeeded")
    assert done.webhook_id == ticket.webhook_id
    assert done.attempts == 4
    assert [r.headers["webhook-id"] for r in receiver.requests] == [ticket.webhook_id] * 4


async def test_redeliver_every_failed_since(make_store: StoreFactory, receiver: Receiver) -> None:
    fail = True
    receiver.behaviour = lambda r: Reply(500 if fail else 200)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0,))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine), 3)
        await wait_until_status(engine, "failed", 3)
        fail = False
        assert await engine.redeliver_failed(agent_id=AGENT.id, since=time.time() - 60) == 3
        await wait_until_status(engine, "succeeded", 3)


async def test_410_gone_disables_the_endpoint_until_settings_are_saved(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(410)
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        pm = pipeline(engine)
        reply(pm)
        [failed] = await wait_until_status(engine, "failed")
        assert failed.attempts == 1 and failed.last_status_code == 410
        stored = await engine.get_settings(AGENT.id)
        assert stored is not None and stored.disabled and "410" in (stored.disabled_reason or "")
        assert reply(pm) == []  # a disabled endpoint gets no new events
        await engine.save_settings(AGENT.id, settings(receiver.url))  # saving enables it again
        receiver.behaviour = lambda r: Reply(200)
        assert len(reply(pm)) == 1
        await wait_until_status(engine, "succeeded")


async def test_endpoint_failing_for_too_long_is_disabled(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(500)
    cfg = config(retry_schedule=(0, 0.3, 0.3, 0.3), disable_after=0.2)
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), cfg) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            reply(pipeline(engine))
            [failed] = await wait_until_status(engine, "failed")
            stored = await engine.get_settings(AGENT.id)
    assert failed.attempts == 2  # the second failure came after disable_after
    assert stored is not None and stored.disabled
    assert any(e["event"] == "endpoint.disabled" for e in logs)


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


async def test_concurrency_is_capped_per_endpoint(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    lock = threading.Lock()
    current = peak = 0

    def slow(r: Recorded) -> Reply:
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        time.sleep(0.15)
        with lock:
            current -= 1
        return Reply(200)

    receiver.behaviour = slow
    async with DeliveryEngine(make_store(), config(per_endpoint_concurrency=2)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine), 6)
        await wait_until_status(engine, "succeeded", 6)
    assert peak == 2


async def test_graceful_shutdown_leaves_unfinished_work_for_the_next_start(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, delay=3.0)
    async with DeliveryEngine(make_store(), config(shutdown_grace=0.2, timeout=5)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        tickets = reply(pipeline(engine), 3)
        for t in tickets:
            await t
        await anyio.to_thread.run_sync(receiver.wait_for, 1)
        started = time.monotonic()
    assert time.monotonic() - started < 2.5  # did not wait for the hanging receiver
    receiver.behaviour = lambda r: Reply(200)
    async with DeliveryEngine(make_store(), config()) as engine:
        done = await wait_until_status(engine, "succeeded", 3)
    assert {d.webhook_id for d in done} == {t.webhook_id for t in tickets}


async def test_logs_name_the_event_but_never_a_secret_or_header_value(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    answers = iter([Reply(500), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), config()) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            reply(pipeline(engine))
            await wait_until_status(engine, "succeeded")
            await engine.rotate_secret(AGENT.id)
    names = [e["event"] for e in logs]
    assert "delivery.retry_scheduled" in names and "delivery.succeeded" in names
    succeeded = next(e for e in logs if e["event"] == "delivery.succeeded")
    assert {"agent_id", "event_type", "webhook_id", "attempt", "status", "duration_ms"} <= set(
        succeeded
    )
    dump = json.dumps(logs, default=str)
    for secret in ("s3cr3t-token-value", SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in dump


async def test_a_rotation_without_grace_drops_the_old_secret_at_once(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        new_secret = await engine.rotate_secret(AGENT.id)  # the default: no grace
        reply(pipeline(engine))
        [got] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
    assert new_secret.startswith("whsec_") and new_secret != SECRET
    Webhook(new_secret).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body, got.headers)


async def test_settings_save_keeps_the_secret_when_none_is_given(make_store: StoreFactory) -> None:
    async with DeliveryEngine(make_store(), config(workers=False)) as engine:
        first = await engine.save_settings(AGENT.id, WebhookSettings(url="http://127.0.0.1:9/"))
        again = await engine.save_settings(
            AGENT.id, msgspec.structs.replace(first, signing_secret=None)
        )
    assert first.signing_secret and first.signing_secret == again.signing_secret


async def test_saving_a_new_url_keeps_the_secret_receivers_verify_with(
    make_store: StoreFactory,
) -> None:
    async with DeliveryEngine(make_store(), config(workers=False)) as engine:
        first = await engine.save_settings(
            AGENT.id, WebhookSettings.validated(url="http://127.0.0.1:9/")
        )
        moved = await engine.save_settings(
            AGENT.id, WebhookSettings.validated(url="http://127.0.0.1:10/new")
        )
    assert first.signing_secret and moved.signing_secret == first.signing_secret


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


async def test_a_failed_result_write_is_retried_not_dropped(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    from webhook_plugin.exceptions import StorageError

    store = make_store()
    real = store.record_attempts
    failures = [StorageError("database is locked"), StorageError("connection reset")]

    def flaky(results):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        real(results)

    store.record_attempts = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        async with DeliveryEngine(store, config()) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            reply(pipeline(engine))
            [done] = await wait_until_status(engine, "succeeded")
    assert done.attempts == 1 and len(receiver.requests) == 1  # recorded, not re-sent
    assert [e["attempt"] for e in logs if e["event"] == "batch.write_retry"] == [1, 2]


async def test_an_unexpected_error_costs_one_attempt_not_the_worker(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    store = make_store()
    async with DeliveryEngine(store, config(retry_schedule=(0, 0.02))) as engine:
        real = engine.client.post
        bugs = [KeyError("a bug of ours")]

        async def buggy(*args, **kwargs):  # type: ignore[no-untyped-def]
            if bugs:
                raise bugs.pop()
            return await real(*args, **kwargs)

        engine.client.post = buggy  # type: ignore[method-assign]
        await engine.save_settings(AGENT.id, settings(receiver.url))
        with capture_logs() as logs:
            reply(pipeline(engine))
            [done] = await wait_until_status(engine, "succeeded")
            attempts = await engine.list_attempts(done.id)
            # and the worker goes on with the next ones
            reply(pipeline(engine), 3)
            await wait_until_status(engine, "succeeded", 4)
    assert [a.error for a in attempts] == ["internal_error: KeyError", None]
    assert [e["event"] for e in logs].count("delivery.internal_error") == 1
    assert len(receiver.requests) == 4


async def test_finished_deliveries_are_purged_after_the_retention(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config(retry_schedule=(0, 60))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine), 3)
        done = await wait_until_status(engine, "succeeded", 3)
        receiver.behaviour = lambda r: Reply(500)
        reply(pipeline(engine))
        # a new delivery is "pending" before its first attempt too: wait for the attempt
        [pending] = await wait_until_status(engine, "pending", min_attempts=1)
        assert pending.attempts == 1
        assert await engine.purge_log(older_than=3600) == 0  # all younger than an hour
        assert await engine.purge_log(older_than=-1) == 3  # everything finished goes
        left = await engine.list_deliveries(agent_id=AGENT.id)
        assert [d.id for d in left] == [pending.id]  # pending deliveries are never purged
        assert await engine.list_attempts(done[0].id) == []


async def test_a_slow_endpoint_does_not_hold_up_the_others(make_store: StoreFactory) -> None:
    from webhook_plugin import Agent

    with Receiver(lambda r: Reply(200, delay=2.0)) as slow, Receiver() as fast:
        cfg = config(concurrency=4, per_endpoint_concurrency=2, timeout=5)
        async with DeliveryEngine(make_store(), cfg) as engine:
            pm = pipeline(engine)
            for name, rx in (("slow", slow), ("fast", fast)):
                await engine.save_settings(name, settings(rx.url))
            for name, count in (("slow", 30), ("fast", 3)):
                for _ in range(count):
                    pm.hook.on_agent_reply(
                        agent=Agent(id=name),
                        conversation=CONVERSATION,
                        message=AGENT_MSG,
                        in_reply_to=USER_MSG,
                    )
            # the slow endpoint takes its 2 slots for 2 s; the fast one must not wait
            with anyio.fail_after(1.5):
                await anyio.to_thread.run_sync(fast.wait_for, 3, 1.5)
            assert len(slow.requests) <= 2


async def test_a_slow_endpoints_backlog_is_not_hoarded_under_lease(tmp_path: Path) -> None:
    """Another worker can still take the rest of a slow endpoint's backlog."""
    import sqlite3

    from webhook_plugin.storage.sqlite import SQLiteStore

    db = tmp_path / "hoard.db"
    with Receiver(lambda r: Reply(200, delay=1.0)) as slow:
        cfg = config(concurrency=4, per_endpoint_concurrency=2, timeout=5)
        async with DeliveryEngine(SQLiteStore(db), cfg) as engine:
            await engine.save_settings(AGENT.id, settings(slow.url))
            for t in reply(pipeline(engine), 40):
                await t
            await anyio.to_thread.run_sync(slow.wait_for, 2)
            with sqlite3.connect(db) as conn:
                (leased,) = conn.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE lease_until > ?", (time.time(),)
                ).fetchone()
    # two in flight plus at most one claim's worth waiting aside: not all 40
    assert leased <= 2 * 4


# -- the settings test (ChatVolt's test request on save) -------------------------------------


async def test_a_settings_test_sends_one_signed_request_and_queues_nothing(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url + "/hook"))
        result = await engine.test_endpoint(AGENT.id)
        assert await deliveries(engine) == []  # not queued, not in the log
    assert (result.status, result.status_code, result.error) == ("ok", 200, None)
    [got] = receiver.requests
    assert got.path == "/hook"
    assert got.headers["authorization"] == "Bearer s3cr3t-token-value"
    body = Webhook(SECRET).verify(got.body, got.headers)  # the reference library agrees
    assert body["eventType"] == "WEBHOOK_TEST" and body["agentId"] == AGENT.id
    assert set(body) == {"eventType", "agentId", "createdAt"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Reply(204, delay=0.3), ("slow", 204, None)),
        (Reply(500), ("unreachable", 500, "http_500")),
        (Reply(401), ("unreachable", 401, "http_401")),
        (Reply(301, headers={"Location": "http://127.0.0.1:9/"}), ("unreachable", 301, "http_301")),
        (Reply(200, delay=1.5), ("unreachable", None, "timeout")),
    ],
    ids=["slow", "500", "401", "redirect-not-followed", "timeout"],
)
async def test_a_settings_test_reports_slow_and_unreachable_endpoints(
    tmp_path: Path, answer: Reply, expected: tuple
) -> None:
    from webhook_plugin.storage.sqlite import SQLiteStore

    with Receiver(lambda r: answer) as rx:
        async with DeliveryEngine(SQLiteStore(tmp_path / "t.db"), config(timeout=1.0)) as engine:
            await engine.save_settings(AGENT.id, settings(rx.url))
            result = await engine.test_endpoint(AGENT.id, slow_after=0.15)
        await anyio.to_thread.run_sync(rx.wait_for, 1, 5)  # the timed-out one lands late
    got = (result.status, result.status_code, result.error and result.error.split(":")[0])
    assert got == expected
    assert len(rx.requests) == 1  # one request, never retried, redirects not followed
    assert "s3cr3t" not in str(result)


@pytest.mark.parametrize(
    ("url", "error"),
    [(closed_port_url(), "connect_error"), ("http://10.0.0.1/hook", "blocked_address")],
    ids=["closed-port", "private-address"],
)
async def test_a_settings_test_reports_addresses_it_cannot_or_may_not_reach(
    tmp_path: Path, url: str, error: str
) -> None:
    from webhook_plugin.storage.sqlite import SQLiteStore

    async with DeliveryEngine(SQLiteStore(tmp_path / "t.db"), config()) as engine:
        await engine.save_settings(AGENT.id, settings(url))
        result = await engine.test_endpoint(AGENT.id)
    assert (result.status, result.status_code) == ("unreachable", None)
    assert result.error is not None and result.error.startswith(error + ":")


async def test_a_settings_test_needs_a_url(tmp_path: Path) -> None:
    from webhook_plugin.exceptions import NotFound
    from webhook_plugin.storage.sqlite import SQLiteStore

    async with DeliveryEngine(SQLiteStore(tmp_path / "t.db"), config()) as engine:
        with pytest.raises(NotFound, match="no webhook URL"):
            await engine.test_endpoint(AGENT.id)


# -- secret rotation ---------------------------------------------------------------------------


async def test_after_a_rotation_the_old_secret_still_verifies_until_the_grace_ends(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        new_secret = await engine.rotate_secret(AGENT.id, grace=0.5)
        [during] = await _delivered(engine, receiver, 1)
        await anyio.sleep(0.6)  # the grace period ends
        [after] = await _delivered(engine, receiver, 2)
        # saving other settings keeps the secret, and a new rotation's grace with it
        await engine.rotate_secret(AGENT.id, grace=86400)
        third_secret = (await engine.get_settings(AGENT.id)).signing_secret
        await engine.save_settings(AGENT.id, WebhookSettings(url=receiver.url))  # no secret
        [kept] = await _delivered(engine, receiver, 3)
        # a different secret saved explicitly replaces the old one at once
        await engine.save_settings(AGENT.id, settings(receiver.url))
        [replaced] = await _delivered(engine, receiver, 4)
    assert len(during.headers["webhook-signature"].split()) == 2
    Webhook(new_secret).verify(during.body, during.headers)
    Webhook(SECRET).verify(during.body, during.headers)  # a receiver not yet updated
    assert len(after.headers["webhook-signature"].split()) == 1
    Webhook(new_secret).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(after.body, after.headers)
    Webhook(third_secret).verify(kept.body, kept.headers)
    Webhook(new_secret).verify(kept.body, kept.headers)
    assert len(replaced.headers["webhook-signature"].split()) == 1
    Webhook(SECRET).verify(replaced.body, replaced.headers)


async def _delivered(engine: DeliveryEngine, receiver: Receiver, total: int) -> list[Recorded]:
    reply(pipeline(engine))
    got = await anyio.to_thread.run_sync(receiver.wait_for, total)
    return got[total - 1 :]


# -- metrics -----------------------------------------------------------------------------------


def _samples(text: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


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
        await wait_until_status(engine, "failed")  # 410: failed, endpoint disabled
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
    assert m['webhook_plugin_deliveries_finished_total{status="failed"}'] == 1
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
