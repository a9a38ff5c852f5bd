"""The dispatcher's claim loop, with a scripted store and client (pure logic), and
its count of what it holds against a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

from helpers import put_settings
from webhook_plugin.delivery.client import Response
from webhook_plugin.delivery.dispatcher import Dispatcher
from webhook_plugin.delivery.retry import RetryPolicy
from webhook_plugin.events import WebhookEventType
from webhook_plugin.settings import WebhookSettings, generate_secret
from webhook_plugin.storage.base import AttemptResult, ClaimedDelivery, NewDelivery

pytestmark = pytest.mark.anyio

SETTINGS = WebhookSettings.validated(url="http://hooks.example/", signing_secret=generate_secret())


def delivery(i: int, agent: str = "a") -> ClaimedDelivery:
    return ClaimedDelivery(
        id=i,
        webhook_id=f"msg_{i}",
        agent_id=agent,
        event_type=WebhookEventType.AGENT_USER_MESSAGE,
        body=b"{}",
        created_at=0.0,
        attempts=0,
        round_attempts=0,
        lease_until=time.monotonic() + 60,
        settings=SETTINGS,
        failing_since=None,
    )


def new_delivery(i: int, agent: str) -> NewDelivery:
    return NewDelivery(
        webhook_id=f"msg_{i}",
        agent_id=agent,
        event_type=WebhookEventType.AGENT_USER_MESSAGE,
        body=b"{}",
        created_at=0.0,
        next_attempt_at=0.0,
    )


class GatedClient:
    """Holds every POST until ``release`` is set."""

    def __init__(self, release: anyio.Event) -> None:
        self.release = release
        self.posted: list[str] = []

    async def post(
        self, url: str, headers: Sequence[tuple[str, str]], body: bytes, **kw: object
    ) -> Response:
        self.posted.append(dict(headers)["webhook-id"])
        await self.release.wait()
        return Response(200, {}, b"")


class ScriptedStore:
    """Answers claims from a script; the third claim lets every attempt in flight
    finish while it runs, as a slow claim on a busy database would, and notes what
    was posted before it returned. It has only what the claim loop calls: nothing
    is left to release when the dispatcher stops."""

    def __init__(self, release: anyio.Event, client: GatedClient) -> None:
        self.release = release
        self.client = client
        self.claims = 0
        self.posted_during_third_claim: list[str] = []

    def claim_due(
        self,
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        skip_agents: Sequence[str] = (),
    ) -> list[ClaimedDelivery]:
        self.claims += 1
        if self.claims == 1:
            return [delivery(1), delivery(2)]  # fills both slots
        if self.claims == 2:
            return [delivery(3)]  # waits in the local queue: no slot free
        if self.claims == 3:
            anyio.from_thread.run_sync(self.release.set)  # the two attempts end
            deadline = time.monotonic() + 2
            while "msg_3" not in self.client.posted and time.monotonic() < deadline:
                time.sleep(0.01)
            self.posted_during_third_claim = list(self.client.posted)
        return []


async def test_queued_work_starts_when_slots_free_during_a_claim() -> None:
    release = anyio.Event()
    client = GatedClient(release)
    store = ScriptedStore(release, client)
    results: list[AttemptResult] = []
    dispatcher = Dispatcher(
        store,  # type: ignore[arg-type]
        client,
        results.append,
        policy=RetryPolicy(),
        concurrency=2,
        poll_interval=0.05,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        with anyio.fail_after(3):
            while len(results) < 3:
                await anyio.sleep(0.01)
        await dispatcher.stop(grace=1)
    # the queued delivery started while the third claim was still running, not after it
    assert sorted(store.posted_during_third_claim) == ["msg_1", "msg_2", "msg_3"]
    assert sorted(client.posted) == ["msg_1", "msg_2", "msg_3"]  # each sent once
    assert sorted(r.delivery_id for r in results) == [1, 2, 3]
    assert all(r.status == "succeeded" for r in results)


def test_an_endpoint_parked_for_its_lane_is_woken_when_the_lane_frees() -> None:
    """Two new endpoints, one slot for new ones: the second waits for the lane, not
    for a slot of its own, and must get it when the first's probe ends (its
    endpoint becomes quick meanwhile)."""
    d = Dispatcher(None, None, lambda r: None, policy=RetryPolicy(), concurrency=2)  # type: ignore[arg-type]
    d.backlog.ready.extend([delivery(1, "a"), delivery(2, "a"), delivery(3, "b")])
    first = d.backlog.next()
    assert first is not None and first[0].id == 1 and first[1] == "new"
    assert d.backlog.next() is None  # a's second waits for a's probe, b for the new lane
    assert {agent: [x.id for x in q] for agent, q in d.backlog.parked.items()} == {
        "a": [2],
        "b": [3],
    }
    assert d.lanes.lane("b") == "new"  # b is parked for its lane: it has no attempt in flight
    d.lanes.observe("a", slow=False)  # a's probe answered quickly
    d.backlog.done("a", "new")
    taken = []
    while (next_one := d.backlog.next()) is not None:
        taken.append((next_one[0].id, next_one[1]))
    assert sorted(taken) == [(2, "quick"), (3, "new")]  # b got the lane a left
    assert d.backlog.parked == {}


class ReleasingStore:
    """Claims nothing; notes what the dispatcher hands back when it stops."""

    def __init__(self) -> None:
        self.released: list[int] = []

    def claim_due(self, **kw: object) -> list[ClaimedDelivery]:
        return []

    def release(self, ids: Sequence[int], owner: str) -> None:
        self.released.extend(ids)


async def test_work_handed_to_a_worker_as_stop_comes_is_left_for_the_next_start() -> None:
    """The handing over and the stop happen with no checkpoint between them, as when
    the claim that fed the workers returns right before the engine stops: the
    workers are woken with work, and must leave it rather than start it."""
    store = ReleasingStore()
    client = GatedClient(anyio.Event())
    results: list[AttemptResult] = []
    d = Dispatcher(
        store,  # type: ignore[arg-type]
        client,
        results.append,
        policy=RetryPolicy(),
        concurrency=2,
        poll_interval=0.05,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await anyio.sleep(0.05)  # both workers wait for work
        d.backlog.ready.extend([delivery(1, "a"), delivery(2, "b"), delivery(3, "c")])
        d._hand_over()
        with anyio.fail_after(2):
            await d.stop(grace=5)
    assert client.posted == [] and results == []
    assert sorted(store.released) == [1, 2, 3]  # every lease handed back, once
    assert d.lanes.busy == {"quick": 0, "new": 0, "slow": 0}


class FailingReleaseStore(ReleasingStore):
    """Its release fails, as a database gone away at shutdown would."""

    def release(self, ids: Sequence[int], owner: str) -> None:
        from webhook_plugin.exceptions import StorageError

        raise StorageError("connection reset")


async def test_a_loop_restarted_after_stop_returns_and_a_failed_release_is_logged() -> None:
    """The supervisor may restart a crashed loop while the engine stops: the new
    loop must not wait for work for ever, and stop() must not raise because the
    database could not take the leases back (they run out)."""
    from structlog.testing import capture_logs

    client = GatedClient(anyio.Event())
    d = Dispatcher(
        FailingReleaseStore(),  # type: ignore[arg-type]
        client,
        lambda r: None,
        policy=RetryPolicy(),
        concurrency=2,
        poll_interval=0.05,
    )
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(d.run)
            d._left.append(7)  # a lease to hand back
            with anyio.fail_after(2):
                await d.stop(grace=1)
        with anyio.fail_after(2):
            await d.run()  # a restart after stop() returns at once
    assert any(e["event"] == "dispatcher.release_failed" for e in logs)


async def test_a_loop_restarted_with_work_kept_from_a_crash_starts_it() -> None:
    """After a crash, the restarted loop finds deliveries in its backlog (more
    than a round of them) and no worker asking for more: it must start them."""
    release = anyio.Event()
    release.set()
    client = GatedClient(release)
    results: list[AttemptResult] = []
    d = Dispatcher(
        ReleasingStore(),  # type: ignore[arg-type]
        client,
        results.append,
        policy=RetryPolicy(),
        concurrency=2,
        per_endpoint=4,
        poll_interval=30,  # no poll to rescue it
    )
    d.backlog.ready.extend([delivery(i, f"agent{i}") for i in range(1, 5)])
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        with anyio.fail_after(3):
            while len(results) < 4:
                await anyio.sleep(0.01)
        await d.stop(grace=1)
    assert sorted(client.posted) == ["msg_1", "msg_2", "msg_3", "msg_4"]


async def test_parked_deliveries_leave_no_room_for_more_at_insert(tmp_path: Path) -> None:
    """One endpoint that does not answer must not gather its fresh deliveries
    under our lease without bound: those parked behind its attempt in flight count
    against the room, and the count comes back to nothing once all are done."""
    from webhook_plugin.storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "parked.db")
    store.open()
    put_settings(store, "slow", SETTINGS)
    release = anyio.Event()
    client = GatedClient(release)
    results: list[AttemptResult] = []
    d = Dispatcher(
        store, client, results.append, policy=RetryPolicy(), concurrency=4, per_endpoint=2
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(d.run)
            for i in range(20):
                leased = store.insert_deliveries([new_delivery(i, "slow")], d.lease())
                d.leased(leased, 1)
                d.take_leased()
                await anyio.sleep(0.01)
            # a new endpoint gets one probe first: 1 started, 7 parked, no room left
            assert len(client.posted) == 1 and d.room == 0 and d.lease() is None
            with sqlite3.connect(tmp_path / "parked.db") as conn:
                (leased,) = conn.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE lease_owner = ?", (d.owner,)
                ).fetchone()
            assert leased == 8  # the other 12 are for anyone to claim
            release.set()
            with anyio.fail_after(5):
                while len(results) < 20:
                    await anyio.sleep(0.01)
            assert d.room == 8  # two rounds of work: room for them again
            await d.stop(grace=1)
    finally:
        store.close()


async def test_an_endpoint_that_waits_parked_does_not_make_the_loop_spin() -> None:
    """Deliveries parked behind an endpoint's attempt in flight, nothing else due:
    the claim loop waits for a slot or new work instead of asking the store again
    and again."""
    release = anyio.Event()
    client = GatedClient(release)
    claims = 0

    class Store:
        def claim_due(self, **kw: object) -> list[ClaimedDelivery]:
            nonlocal claims
            claims += 1
            return [delivery(1), delivery(2), delivery(3)] if claims == 1 else []

        def release(self, ids: object, owner: str) -> None:
            pass

    d = Dispatcher(Store(), client, lambda r: None, policy=RetryPolicy(), poll_interval=30)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await anyio.sleep(0.3)
        assert client.posted == ["msg_1"]  # a new endpoint's probe; two wait parked
        assert claims <= 3
        release.set()
        await d.stop(grace=1)


async def test_a_stop_during_a_claim_leaves_nothing_leased(tmp_path: Path) -> None:
    """stop() comes while a claim waits for the database: what that claim
    leased is released as well, not left to a stopped dispatcher until the lease
    runs out."""
    import threading

    from webhook_plugin.storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "keep.db")
    store.open()
    put_settings(store, "b", SETTINGS)
    store.insert_deliveries([new_delivery(100 + i, "b") for i in range(3)])
    claim_due = store.claim_due
    claiming = threading.Event()

    def slow_claim(**kw: object) -> list[ClaimedDelivery]:
        claiming.set()
        time.sleep(0.5)
        return claim_due(**kw)  # type: ignore[arg-type]

    store.claim_due = slow_claim  # type: ignore[method-assign]
    d = Dispatcher(
        store, GatedClient(anyio.Event()), lambda r: None, policy=RetryPolicy(), concurrency=4
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(d.run)
            with anyio.fail_after(3):
                while not claiming.is_set():
                    await anyio.sleep(0.01)
            await d.stop(grace=0.1)
        with sqlite3.connect(tmp_path / "keep.db") as conn:
            leased = conn.execute(
                "SELECT webhook_id FROM deliveries WHERE lease_owner = ? AND lease_until > ?",
                (d.owner, time.time()),
            ).fetchall()
        assert leased == []
        assert len(store.claim_due(limit=10, lease_seconds=60, owner="x")) == 3
    finally:
        store.close()


async def test_an_endpoint_skipped_while_full_is_claimed_for_once_it_can_start() -> None:
    """Its work left in the store is claimed as soon as a slot of its frees, not
    at the next poll (30 s here), and the claim loop did not spin meanwhile."""
    release = anyio.Event()
    client = GatedClient(release)
    asked: list[tuple[str, ...]] = []

    class Store:
        def claim_due(
            self, *, skip_agents: Sequence[str] = (), **kw: object
        ) -> list[ClaimedDelivery]:
            asked.append(tuple(skip_agents))
            if len(asked) == 1:
                return [delivery(1), delivery(2), delivery(3)]
            if "a" not in skip_agents and not any("a" not in s for s in asked[1:-1]):
                return [delivery(4), delivery(5)]  # what waited in the store
            return []

        def release(self, ids: object, owner: str) -> None:
            pass

    results: list[AttemptResult] = []
    d = Dispatcher(
        Store(),  # type: ignore[arg-type]
        client,
        results.append,
        policy=RetryPolicy(),
        poll_interval=30,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await anyio.sleep(0.2)
        assert client.posted == ["msg_1"]  # the probe; 2 and 3 parked, "a" skipped
        release.set()
        with anyio.fail_after(3):
            while len(results) < 5:
                await anyio.sleep(0.01)
        assert sorted(client.posted) == ["msg_1", "msg_2", "msg_3", "msg_4", "msg_5"]
        assert len(asked) < 10
        await d.stop(grace=1)


async def test_a_wake_up_before_a_retry_falls_due_does_not_lose_it() -> None:
    """A retry is due in 0.3 s; new work wakes the loop at 0.1 s. It must still
    look again when the retry falls due, not only at the next poll (30 s)."""
    claimed_at: list[float] = []

    class Store:
        def claim_due(self, **kw: object) -> list[ClaimedDelivery]:
            claimed_at.append(time.time())  # the database's clock
            return []

    d = Dispatcher(Store(), None, lambda r: None, policy=RetryPolicy(), poll_interval=30)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await anyio.sleep(0.05)
        due = time.time() + 0.3
        d.retry_scheduled(due)
        await anyio.sleep(0.1)
        d.wake()  # new work, before the retry is due
        with anyio.fail_after(2):
            while not any(t >= due for t in claimed_at):
                await anyio.sleep(0.01)
        await d.stop(grace=1)


class OneFullEndpoint:
    """Endpoint "a" always has more than fits; what else there is comes from
    ``others`` (checked on each claim that skips "a")."""

    def __init__(self) -> None:
        self.ids = iter(range(1, 1_000_000))
        self.others: list[ClaimedDelivery] = []
        self.others_due = 0.0
        self.during_claim: Callable[[], None] | None = None
        self.claimed_at: float | None = None
        #: the endpoints each claim skipped
        self.asked: list[tuple[str, ...]] = []

    def claim_due(
        self, *, limit: int, skip_agents: Sequence[str] = (), **kw: object
    ) -> list[ClaimedDelivery]:
        now = time.time()  # the database's clock
        self.asked.append(tuple(skip_agents))
        if "a" not in skip_agents:
            return [delivery(next(self.ids)) for _ in range(limit)]
        if self.others and now >= self.others_due:
            taken, self.others = self.others, []
            self.claimed_at = time.monotonic()
            return taken
        if self.during_claim is not None:
            self.during_claim()
            self.during_claim = None
        return []

    def release(self, ids: object, owner: str) -> None:
        pass


class QuickClient:
    async def post(self, url: str, headers: object, body: bytes, **kw: object) -> Response:
        await anyio.sleep(0.001)
        return Response(200, {}, b"")


async def busy_dispatcher(store: OneFullEndpoint, results: list[AttemptResult]) -> Dispatcher:
    return Dispatcher(
        store,  # type: ignore[arg-type]
        QuickClient(),  # type: ignore[arg-type]
        results.append,
        policy=RetryPolicy(),
        concurrency=4,
        per_endpoint=4,
        poll_interval=30,
    )


async def until_done(results: list[AttemptResult], count: int) -> None:
    """Until the dispatcher has finished ``count`` attempts."""
    with anyio.fail_after(10):
        while len(results) < count:
            await anyio.sleep(0.01)


async def test_a_full_endpoints_backlog_is_not_read_again_for_nothing() -> None:
    """One endpoint, full, with more waiting in the store than the dispatcher
    holds (an outage's backlog draining). A claim for the other endpoints found
    none: until something new is queued, a retry falls due or a poll passes, it
    is not asked again (on SQLite each such claim reads every row the full
    endpoint has waiting: 15 ms at 20,000)."""
    store, results = OneFullEndpoint(), []
    d = await busy_dispatcher(store, results)
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await until_done(results, 300)
        productive = [s for s in store.asked if not s]
        barren = [s for s in store.asked if s]
        assert len(productive) >= 20  # the endpoint was full again and again
        assert len(barren) <= 1, f"{len(barren)} claims for no one, {len(productive)} for work"
        d.wake()  # new work may be queued, for anyone: the next time, ask again
        with anyio.fail_after(3):
            while len([s for s in store.asked if s]) < len(barren) + 1:
                await anyio.sleep(0.01)
        await d.stop(grace=1)


async def test_a_wake_up_during_a_claim_that_finds_nothing_is_not_lost() -> None:
    """Another process queues work for "b" while a claim that skips the full
    "a" runs (it did not see it), and the listen loop wakes us: the next such
    claim must be made at once, not after the poll interval (30 s)."""
    store, results = OneFullEndpoint(), []
    d = await busy_dispatcher(store, results)

    def queued_elsewhere() -> None:
        store.others = [delivery(10**7, "b")]
        anyio.from_thread.run_sync(d.wake)

    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await until_done(results, 50)
        store.during_claim = queued_elsewhere
        woke = time.monotonic()
        d.wake()  # so that a claim skipping "a" runs (the one found nothing, long ago)
        with anyio.fail_after(5):
            while store.claimed_at is None:
                await anyio.sleep(0.01)
        assert store.claimed_at - woke < 2
        await d.stop(grace=1)


async def test_a_retry_that_falls_due_is_claimed_though_the_last_claim_found_nothing() -> None:
    """A retry for "b" falls due; the claim that skips no one fills up with
    "a"'s older rows and misses it. The claim that skips "a" must still be
    made, not held back by what an earlier one found."""
    store, results = OneFullEndpoint(), []
    d = await busy_dispatcher(store, results)
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await until_done(results, 50)
        store.others_due = time.time() + 0.3
        store.others = [delivery(10**7, "b")]  # the retry, due in 0.3 s
        d.retry_scheduled(store.others_due)
        fell_due = time.monotonic() + 0.3
        with anyio.fail_after(5):
            while store.claimed_at is None:
                await anyio.sleep(0.01)
        assert store.claimed_at - fell_due < 2
        await d.stop(grace=1)


async def test_an_endpoint_that_frees_while_a_claim_leaves_it_out_is_claimed_for_at_once() -> None:
    """ "a" is full when a claim is decided (its first attempt is under way)
    and another process queued more for it; its attempt ends while that claim
    runs: its work is claimed once the claim is back, not at the next poll
    (5 s here)."""
    release = anyio.Event()
    client = GatedClient(release)
    results: list[AttemptResult] = []

    class Store:
        gave = False

        def claim_due(
            self, *, skip_agents: Sequence[str] = (), **kw: object
        ) -> list[ClaimedDelivery]:
            if "a" in skip_agents and not release.is_set():
                anyio.from_thread.run_sync(release.set)  # a's attempt ends meanwhile
                deadline = time.monotonic() + 2
                while not results and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.05)
                return []
            if release.is_set() and "a" not in skip_agents and not self.gave:
                self.gave = True
                return [delivery(2, "a")]  # what the other process queued
            return []

        def release(self, ids: object, owner: str) -> None:
            pass

    d = Dispatcher(
        Store(),  # type: ignore[arg-type]
        client,
        results.append,
        policy=RetryPolicy(),
        concurrency=4,
        poll_interval=5.0,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        await anyio.sleep(0.2)  # the start-up claims found nothing
        d.leased([delivery(1, "a")], 1)  # a write of this process leased us "a"'s first
        d.take_leased()
        with anyio.fail_after(2):
            while not client.posted:
                await anyio.sleep(0.01)
        d.wake()  # another process queued more for "a" (its NOTIFY)
        with anyio.fail_after(2):
            while "msg_2" not in client.posted:
                await anyio.sleep(0.01)
        await d.stop(grace=1)
