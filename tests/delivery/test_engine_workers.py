"""The delivery engine's workers: per-endpoint caps, a slow endpoint holding only its
own slots, graceful shutdown, and errors that cost an attempt, never a worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from helpers import (
    AGENT,
    AGENT_MSG,
    CONVERSATION,
    USER_MSG,
    StoreFactory,
    config,
    pipeline,
    reply,
    settings,
    wait_until_status,
)
from receiver import Receiver, Recorded, Reply
from webhook_plugin import DeliveryEngine

pytestmark = pytest.mark.anyio


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
    # two rounds of work (leased as they were inserted), plus at most one
    # claim's worth if a claim decided before the insert raced it: not all 40
    assert leased <= 2 * 4 + 2 * 4


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
        return real(results)

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


async def test_events_this_process_queues_go_out_without_a_claim(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """The store leases fresh deliveries to the local dispatcher as it inserts them:
    they go out with no claim query between (and no wait for one)."""
    store = make_store()
    real = store.claim_due
    claimed: list[str] = []

    def counting_claim(**kw):  # type: ignore[no-untyped-def]
        found = real(**kw)
        claimed.extend(d.webhook_id for d in found)
        return found

    store.claim_due = counting_claim  # type: ignore[method-assign]
    # a poll far away: only a wake-up could start a claim soon
    async with DeliveryEngine(store, config(poll_interval=30)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        pm = pipeline(engine)
        tickets = []
        for _ in range(10):  # a steady trickle, one event at a time
            [ticket] = reply(pm)
            await ticket
            tickets.append(ticket)
        done = await wait_until_status(engine, "succeeded", 10)
    assert {d.webhook_id for d in done} == {t.webhook_id for t in tickets}
    assert claimed == []  # every one was handed over as it was stored
    assert len(receiver.requests) == 10
