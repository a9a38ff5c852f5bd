"""Poison rows: stored data this version cannot decode is quarantined, never fatal.

During a rolling upgrade on a shared PostgreSQL, a newer version may write a
delivery of an event type this one does not know, or settings it cannot
decode. Such a delivery is failed with a reason (``unknown_event_type``,
``undecodable``), stays visible in the delivery log, and the engine goes on.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from structlog.testing import capture_logs

from helpers import AGENT, config, pipeline, put_settings, reply, wait_until
from receiver import Receiver, Reply
from webhook_plugin import DeliveryEngine, WebhookEventType, WebhookSettings
from webhook_plugin.storage._sql import SQLStore
from webhook_plugin.storage.base import NewDelivery, Store
from webhook_plugin.storage.sqlite import SQLiteStore

StoreFactory = Callable[[], Store]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "other-agent"
BROKEN = "broken-agent"
#: settings a newer version might write: an event type this one does not know
NEWER_SETTINGS = (
    b'{"url": "https://example.com/hook", "header": "Authorization: Bearer t0p-s3cr3t",'
    b' "signing_secret": "' + SECRET.encode() + b'", "events": ["FUTURE_EVENT"]}'
)
#: settings that are not JSON at all (cut off mid-secret)
GARBAGE_SETTINGS = b'{"url": "https://example.com/hook", "signing_secret": "whsec_t0p-s3cr3t'


def settings(url: str) -> WebhookSettings:
    return WebhookSettings.validated(url=url, signing_secret=SECRET)


def insert_raw(
    store: Store,
    *,
    agent_id: str,
    event_type: object,
    body: object = b"{}",
    at: float | None = None,
    webhook_id: str | None = None,
) -> int:
    """Write a deliveries row with SQL, as another version of the program might."""
    sql = cast(SQLStore, store)
    at = time.time() - 1 if at is None else at
    with sql._tx() as conn:
        row = sql._x(
            conn,
            "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
            " next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (webhook_id or f"msg_raw_{at}_{event_type}", agent_id, event_type, body, at, at, at),
        ).fetchone()
    return int(row[0])


def put_raw_settings(store: Store, agent_id: str, data: object) -> None:
    """Write a webhook_settings row with SQL, as another version of the program might."""
    sql = cast(SQLStore, store)
    with sql._tx() as conn:
        sql._x(
            conn,
            "INSERT INTO webhook_settings (agent_id, data, disabled, disabled_reason,"
            " failing_since, updated_at) VALUES (?, ?, 0, NULL, NULL, ?)",
            (agent_id, data, time.time()),
        )


def lease_of(store: Store, delivery_id: int) -> tuple[Any, ...]:
    sql = cast(SQLStore, store)
    return tuple(
        sql._query(
            lambda c: sql._x(
                c,
                "SELECT lease_until, lease_owner, updated_at FROM deliveries WHERE id = ?",
                (delivery_id,),
            ).fetchone()
        )
    )


def queue(store: Store, agent_id: str, n: int, at: float) -> None:
    store.insert_deliveries(
        [
            NewDelivery(
                webhook_id=f"msg_{agent_id}_{i}",
                agent_id=agent_id,
                event_type=WebhookEventType.AGENT_USER_MESSAGE,
                body=b'{"n": %d}' % i,
                created_at=at,
                next_attempt_at=at,
            )
            for i in range(n)
        ]
    )


def claim(store: Store) -> list[Any]:
    """A claim, now on the database's clock."""
    return store.claim_due(limit=50, lease_seconds=30, owner="test")


def settled(store: Store, agent_id: str) -> list[Any]:
    """The agent's deliveries once none is pending, else nothing."""
    rows = store.list_deliveries(agent_id=agent_id)
    return rows if all(r.status != "pending" for r in rows) else []


@pytest.fixture
def store(make_store: StoreFactory) -> Iterator[Store]:
    s = make_store()
    s.open()
    try:
        yield s
    finally:
        s.close()


# the store ------------------------------------------------------------------------------------


def test_unknown_event_type_is_failed_and_the_rest_claimed(store: Store) -> None:
    now = time.time()
    put_settings(store, AGENT.id, settings("https://example.com/hook"))
    queue(store, AGENT.id, 2, now - 2)
    poison = insert_raw(store, agent_id=AGENT.id, event_type="FUTURE_EVENT", at=now - 3)
    queue(store, OTHER, 1, now - 1)
    with capture_logs() as logs:
        claimed = claim(store)
    assert {d.webhook_id for d in claimed} == {
        f"msg_{AGENT.id}_0",
        f"msg_{AGENT.id}_1",
        f"msg_{OTHER}_0",
    }
    assert all(d.event_type is WebhookEventType.AGENT_USER_MESSAGE for d in claimed)
    record = store.get_delivery(poison)
    assert record.status == "failed"
    assert record.id == poison and record.last_error == "unknown_event_type: 'FUTURE_EVENT'"
    assert record.event_type == "FUTURE_EVENT" and str(record.event_type) == "FUTURE_EVENT"
    assert record.next_attempt_at is None and record.attempts == 0
    lease_until, owner, updated_at = lease_of(store, poison)
    assert lease_until == 0 and owner is None and updated_at == pytest.approx(now)
    # visible in the delivery log, with a status filter too
    assert poison in [r.id for r in store.list_deliveries()]
    assert [r.id for r in store.list_deliveries(status="failed")] == [poison]
    assert store.count_deliveries()["failed"] == 1
    [event] = [e for e in logs if e["event"] == "delivery.quarantined"]
    assert event["delivery_id"] == poison
    assert event["reason"] == "unknown_event_type: 'FUTURE_EVENT'"
    assert event["log_level"] == "warning"
    # it is not claimed again; a redelivery is allowed and fails it again
    assert claim(store) == []  # (the others are still leased)
    assert store.redeliver(poison, now=now).status == "pending"
    assert claim(store) == []
    assert store.get_delivery(poison).status == "failed"


def test_a_long_unknown_event_type_is_cut_in_the_reason(store: Store) -> None:
    poison = insert_raw(store, agent_id=AGENT.id, event_type="X" * 500)
    assert claim(store) == []
    assert store.get_delivery(poison).last_error == f"unknown_event_type: {'X' * 64!r}"


def test_a_batch_of_poison_only_claims_nothing(store: Store) -> None:
    ids = [insert_raw(store, agent_id=AGENT.id, event_type=f"NEW_{i}") for i in range(3)]
    assert claim(store) == []
    assert {r.id: r.status for r in store.list_deliveries()} == dict.fromkeys(ids, "failed")


def test_a_body_that_is_not_bytes_is_undecodable(tmp_path: Path) -> None:
    # SQLite stores whatever it is given; PostgreSQL's BYTEA cannot hold text
    store = SQLiteStore(tmp_path / "webhooks.db")
    store.open()
    try:
        poison = insert_raw(store, agent_id=AGENT.id, event_type="AGENT_USER_MESSAGE", body="x")
        queue(store, AGENT.id, 1, time.time() - 1)
        [claimed] = claim(store)
        record = store.get_delivery(poison)
    finally:
        store.close()
    assert claimed.webhook_id == f"msg_{AGENT.id}_0"
    assert record.status == "failed" and record.last_error == "undecodable: the body is str"
    assert record.event_type is WebhookEventType.AGENT_USER_MESSAGE and record.body == b""


@pytest.mark.parametrize("data", [NEWER_SETTINGS, GARBAGE_SETTINGS], ids=["newer", "garbage"])
def test_undecodable_settings_fail_their_deliveries_and_never_leak(
    store: Store, data: bytes
) -> None:
    now = time.time()
    put_settings(store, AGENT.id, settings("https://example.com/hook"))
    put_raw_settings(store, BROKEN, data)
    queue(store, BROKEN, 2, now - 2)
    queue(store, AGENT.id, 1, now - 1)
    with capture_logs() as logs:
        assert store.get_settings(BROKEN) is None
        assert list(store.all_settings()) == [AGENT.id]
        [claimed] = claim(store)
    assert claimed.agent_id == AGENT.id and claimed.settings is not None
    broken = store.list_deliveries(agent_id=BROKEN)
    assert [r.status for r in broken] == ["failed", "failed"]
    assert {r.last_error for r in broken} == {"undecodable: the agent's webhook settings"}
    undecodable = [e for e in logs if e["event"] == "settings.undecodable"]
    assert undecodable and all(e["agent_id"] == BROKEN for e in undecodable)
    if data is NEWER_SETTINGS:
        assert undecodable[0]["at"] == "$.events[0]"
    quarantined = [e for e in logs if e["event"] == "delivery.quarantined"]
    assert {e["delivery_id"] for e in quarantined} == {r.id for r in broken}
    assert "t0p-s3cr3t" not in repr(logs) and SECRET not in repr(logs)
    # saving settings again replaces the bad row
    put_settings(store, BROKEN, settings("https://example.com/again"))
    assert store.all_settings()[BROKEN].url == "https://example.com/again"


# the engine -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_engine_delivers_around_a_poison_row(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), config()) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            # a newer version queued this one, due before everything else
            poison = await anyio.to_thread.run_sync(
                lambda: insert_raw(
                    engine.store,
                    agent_id=AGENT.id,
                    event_type="FUTURE_EVENT",
                    webhook_id="msg_from_the_future",
                )
            )
            pm = pipeline(engine)
            tickets = reply(pm, 3)
            for t in tickets:
                await t
            await anyio.to_thread.run_sync(receiver.wait_for, 3)
            [record] = await wait_until(lambda: engine.store.list_deliveries(status="failed"))
            # and the engine still delivers what comes after it
            [later] = reply(pm)
            await later
            got = await anyio.to_thread.run_sync(receiver.wait_for, 4)
            listed = await wait_until(lambda: settled(engine.store, AGENT.id))
            fetched = await engine.get_delivery(poison, AGENT.id)
    assert record.id == poison and record.last_error == "unknown_event_type: 'FUTURE_EVENT'"
    assert {r.headers["webhook-id"] for r in got} == {t.webhook_id for t in [*tickets, later]}
    assert sorted(r.status for r in listed) == ["failed"] + ["succeeded"] * 4
    assert [r.id for r in listed if r.status == "failed"] == [poison]
    assert fetched.event_type == "FUTURE_EVENT"
    assert any(e["event"] == "delivery.quarantined" and e["delivery_id"] == poison for e in logs)


async def seed(make_store: StoreFactory, agent_id: str, data: bytes, count: int) -> None:
    """Stored before the engine starts: raw settings for ``agent_id`` and
    ``count`` deliveries due for it."""
    store = make_store()
    await anyio.to_thread.run_sync(store.open)
    try:
        await anyio.to_thread.run_sync(put_raw_settings, store, agent_id, data)
        await anyio.to_thread.run_sync(queue, store, agent_id, count, time.time() - 1)
    finally:
        await anyio.to_thread.run_sync(store.close)


@pytest.mark.anyio
async def test_engine_starts_with_an_undecodable_settings_row(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    await seed(make_store, BROKEN, GARBAGE_SETTINGS, 1)
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), config()) as engine:
            assert engine.settings_for(BROKEN) is None
            assert await engine.get_settings(BROKEN) is None
            await engine.save_settings(AGENT.id, settings(receiver.url))
            [ticket] = reply(pipeline(engine))
            await ticket
            [got] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
            [broken] = await wait_until(
                lambda: engine.store.list_deliveries(agent_id=BROKEN, status="failed")
            )
    assert got.headers["webhook-id"] == ticket.webhook_id
    assert broken.last_error == "undecodable: the agent's webhook settings"
    assert any(e["event"] == "settings.undecodable" and e["agent_id"] == BROKEN for e in logs)
    assert "t0p-s3cr3t" not in repr(logs)


@pytest.mark.anyio
async def test_settings_stored_without_a_signing_secret_fail_their_deliveries_plainly(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """A URL and no secret (written by hand, or by another program): nothing can
    be signed, so each delivery fails at once with a reason that says so, not an
    internal error per attempt until the retries run out."""
    unsigned = b'{"url": "' + receiver.url.encode() + b'", "header": "X-Key: t0p-s3cr3t"}'
    await seed(make_store, BROKEN, unsigned, 2)
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), config()) as engine:

            def both_failed() -> list[Any]:
                rows = engine.store.list_deliveries(agent_id=BROKEN, status="failed")
                return rows if len(rows) == 2 else []

            failed = await wait_until(both_failed)
    assert {r.last_error for r in failed} == {
        "endpoint_unsigned: the agent's settings have no signing secret"
    }
    assert {r.attempts for r in failed} == {0}  # nothing was sent unsigned
    assert receiver.requests == []
    assert not any(e["event"] == "delivery.internal_error" for e in logs)
    assert "t0p-s3cr3t" not in repr(logs)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_result_the_database_refuses_costs_only_its_own_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    """SQLite refuses one delivery's result (a trigger here; a constraint or a
    row of another version in life). The results recorded with it in one
    batch are written all the same once the retries are spent, instead of all
    being lost (and their webhooks sent again when the leases ran out); the
    refused one is logged, and stays pending, to be tried again."""
    path = tmp_path / "webhooks.db"
    receiver.behaviour = lambda r: Reply(delay=0.2)  # the six end together: one batch, mostly
    with capture_logs() as logs:
        # leases of 2 x 5 + 5 s: longer than the recorder's retries (about 7 s)
        async with DeliveryEngine(SQLiteStore(path), config(timeout=5.0)) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            db = sqlite3.connect(path)
            db.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE OF status ON deliveries"
                " WHEN NEW.id = 3 AND NEW.status <> 'pending'"
                " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
            db.commit()
            db.close()
            tickets = reply(pipeline(engine), 6)
            for t in tickets:
                await t
            await anyio.to_thread.run_sync(receiver.wait_for, 6)

            def succeeded() -> list[Any]:
                rows = engine.store.list_deliveries(agent_id=AGENT.id, status="succeeded")
                return rows if len(rows) == 5 else []

            done = await wait_until(succeeded, timeout=30)
            refused = await engine.get_delivery(3, AGENT.id)
    assert sorted(r.id for r in done) == [1, 2, 4, 5, 6]
    assert refused.status == "pending"
    # each of the others was sent once: none waited for its lease to run out
    sent = [r.headers["webhook-id"] for r in receiver.requests]
    others = [t.webhook_id for i, t in enumerate(tickets) if i != 2]
    assert all(sent.count(w) == 1 for w in others), sent
    # logged with its delivery id, whether its result was alone in its batch or not
    lines = [e for e in logs if e["event"] in ("batch.item_refused", "batch.write_failed")]
    assert lines and all(e["delivery_id"] == 3 for e in lines), lines
    assert "refused by a trigger" in lines[0]["error"]
