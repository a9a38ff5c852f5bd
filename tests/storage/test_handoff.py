"""Fresh deliveries leased to this process's dispatcher as they are inserted
(:class:`~webhook_plugin.storage.base.Handoff`), on SQLite and PostgreSQL:
handed over only once committed, never lost, never held by a stopped dispatcher."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from webhook_plugin.events import WebhookEventType
from webhook_plugin.settings import WebhookSettings
from webhook_plugin.storage.base import Handoff, NewDelivery, Store

SETTINGS = WebhookSettings.validated(url="http://hooks.example/")


def fresh(i: int, agent: str = "a", due: float = 0.0) -> NewDelivery:
    return NewDelivery(
        webhook_id=f"msg_{i}",
        agent_id=agent,
        event_type=WebhookEventType.AGENT_USER_MESSAGE,
        body=b'{"n": %d}' % i,
        created_at=1.0,
        next_attempt_at=due,
    )


def handoff(room: int) -> Handoff:
    return Handoff("me", lease_seconds=60.0, capacity=lambda: room, clock=time.time)


def test_up_to_the_room_asked_for_is_leased_and_handed_once_committed(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.open()
    try:
        store.put_settings("a", SETTINGS)
        store.handoff = h = handoff(room=2)  # type: ignore[attr-defined]
        store.insert_deliveries([fresh(1), fresh(2), fresh(3), fresh(4, due=time.time() + 3600)])
        taken, unleased = h.take()
        assert [d.webhook_id for d in taken] == ["msg_1", "msg_2"]
        assert unleased  # the others need a claim
        first = taken[0]
        assert first.attempts == 0 and first.settings is not None
        assert first.settings.url == SETTINGS.url and first.body == b'{"n": 1}'
        assert first.lease_until > time.monotonic() + 50  # on this process's clock
        # the leased ones are not claimable by anyone else; the due rest is
        other = store.claim_due(limit=10, lease_seconds=60, owner="x")
        assert [d.webhook_id for d in other] == ["msg_3"]
        assert {d.id for d in taken} == {
            r.id for r in store.list_deliveries(limit=10) if r.webhook_id in {"msg_1", "msg_2"}
        }
        assert h.held == 2  # the room asked for is what was leased, no more
    finally:
        store.close()


def test_an_endpoint_without_settings_is_left_to_a_claim(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.open()
    try:
        store.handoff = h = handoff(room=10)  # type: ignore[attr-defined]
        store.insert_deliveries([fresh(1, agent="nobody")])
        assert h.take() == ([], True)
    finally:
        store.close()


def test_leases_given_to_a_stopped_dispatcher_are_released_at_once(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.open()
    try:
        store.put_settings("a", SETTINGS)
        store.handoff = h = handoff(room=10)  # type: ignore[attr-defined]
        h.close()  # it stopped while the insert ran
        store.insert_deliveries([fresh(1), fresh(2)])
        claimed = store.claim_due(limit=10, lease_seconds=60, owner="x")
        assert sorted(d.webhook_id for d in claimed) == ["msg_1", "msg_2"]
    finally:
        store.close()


def test_a_transaction_that_fails_hands_nothing_and_stores_nothing(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.open()
    try:
        store.put_settings("a", SETTINGS)
        store.handoff = h = handoff(room=10)  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError), store.transaction() as conn:  # type: ignore[attr-defined]
            store.queue_deliveries(conn, [fresh(1)])  # type: ignore[attr-defined]
            raise RuntimeError("the chat write failed after the events were queued")
        assert h.take() == ([], False)
        assert store.list_deliveries(limit=10) == []
        assert h.held == 0  # what the failed write reserved is free again
        with store.transaction() as conn:  # type: ignore[attr-defined]
            store.queue_deliveries(conn, [fresh(2)])  # type: ignore[attr-defined]
            assert h.take() == ([], False)  # not before the commit
        taken, unleased = h.take()
        assert [d.webhook_id for d in taken] == ["msg_2"] and not unleased
        assert h.held == 1
    finally:
        store.close()


def test_a_write_that_fails_after_leasing_frees_the_room(
    make_store: Callable[[], Store],
) -> None:
    """The leased part went in, the plain part failed (here a clashing id; on
    PostgreSQL, a dropped connection): nothing stands, and the room it reserved
    is the dispatcher's again, not lost until a restart."""
    store = make_store()
    store.open()
    try:
        store.put_settings("a", SETTINGS)
        store.handoff = h = handoff(room=128)  # type: ignore[attr-defined]
        store.insert_deliveries([fresh(1, agent="nobody")])
        with pytest.raises(Exception, match="(?i)unique|duplicate"):
            store.insert_deliveries([fresh(2), fresh(1, agent="nobody")])
        assert h.held == 0 and h.take() == ([], True)
        assert h.reserve(500) == 128 and h.reserve(1) == 0
    finally:
        store.close()


def test_concurrent_writes_never_lease_more_than_the_dispatcher_may_hold(
    make_store: Callable[[], Store],
) -> None:
    """Several threads insert at once (the outbox's batches and the chat's
    writes; on PostgreSQL, truly in parallel): together they lease the
    dispatcher no more than its capacity, and its count is what they leased."""
    import threading

    store = make_store()
    store.open()
    try:
        store.put_settings("a", SETTINGS)
        store.handoff = h = handoff(room=5)  # type: ignore[attr-defined]
        start = threading.Barrier(4)

        def writer(n: int) -> None:
            start.wait()
            for i in range(10):
                store.insert_deliveries([fresh(100 * n + i), fresh(100 * n + 50 + i)])

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        taken, unleased = h.take()
        assert len(taken) == 5 and unleased
        assert h.held == 5
        leased = {d.webhook_id for d in taken}
        # the other 75 are left to a claim
        others = store.claim_due(limit=100, lease_seconds=60, owner="x")
        assert len(others) == 75 and leased.isdisjoint(d.webhook_id for d in others)
    finally:
        store.close()


def test_a_write_waits_for_another_processs_writer_and_then_goes_through(
    tmp_path: object,
) -> None:
    """`serve --no-workers` and `worker` share one SQLite file: a transaction that
    finds the other's write under way waits for it (in short steps of ours, not
    SQLite's up-to-100 ms sleeps), then commits."""
    import sqlite3
    import threading
    from pathlib import Path

    from webhook_plugin.storage.sqlite import SQLiteStore

    path = Path(str(tmp_path)) / "shared.db"
    store = SQLiteStore(path)
    store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # the other process is writing
        holding = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        holding.start()
        store.insert_deliveries([fresh(1)])  # no "database is locked"
        holding.join()
        assert [r.webhook_id for r in store.list_deliveries(limit=10)] == ["msg_1"]
    finally:
        other.close()
        store.close()


def test_the_dispatchers_state_never_fails_a_write(
    make_store: Callable[[], Store],
) -> None:
    """Its room cannot be read (a bug, or a dispatcher half stopped), or the
    leases of a stopped one cannot be released: the events are stored anyway."""
    store = make_store()
    store.open()
    try:
        store.put_settings("a", SETTINGS)

        def broken() -> int:
            raise TypeError("object of type 'NoneType' has no len()")

        store.handoff = Handoff("me", lease_seconds=60, capacity=broken, clock=time.time)  # type: ignore[attr-defined]
        store.insert_deliveries([fresh(1)])
        store.handoff = h = handoff(room=10)  # type: ignore[attr-defined]
        h.close()

        def failing_release(ids: object, owner: str) -> None:
            raise RuntimeError("connection reset")

        store.release = failing_release  # type: ignore[method-assign]
        store.insert_deliveries([fresh(2)])
        assert sorted(r.webhook_id for r in store.list_deliveries(limit=10)) == ["msg_1", "msg_2"]
    finally:
        store.close()


@pytest.mark.fuzz
def test_a_failing_since_of_another_shape_reads_as_not_failing(tmp_path: object) -> None:
    """A row written by another version or by hand (SQLite stores a text or a
    blob in a REAL column) must give a delivery its endpoint, not a value the
    retry policy chokes on at every attempt."""
    import sqlite3
    from pathlib import Path

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from webhook_plugin.storage.sqlite import SQLiteStore

    path = Path(str(tmp_path)) / "shapes.db"
    store = SQLiteStore(path)
    store.open()
    store.put_settings("a", SETTINGS)
    raw = sqlite3.connect(path, isolation_level=None)
    counter = iter(range(10**9))
    values = st.one_of(
        st.text(max_size=20),
        st.binary(max_size=20),
        st.floats(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.none(),
        st.booleans(),
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=values)
    def check(value: object) -> None:
        raw.execute("UPDATE webhook_settings SET failing_since = ? WHERE agent_id = 'a'", (value,))
        store.handoff = h = handoff(room=1)  # type: ignore[attr-defined]
        store.insert_deliveries([fresh(next(counter))])
        [taken], _ = h.take()
        got = taken.failing_since
        assert got is None or (isinstance(got, float) and got == got and abs(got) != float("inf"))

    try:
        check()
    finally:
        raw.close()
        store.close()
