"""A conversation's events in order: every payload carries its ``sequence``, and
with ``ordering = "conversation"`` one conversation's events are sent one at a
time, in that order, against real receivers on 127.0.0.1 and both stores."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from helpers import (
    AGENT,
    AGENT_MSG,
    CONVERSATION,
    TESTS,
    USER_MSG,
    StoreFactory,
    config,
    pipeline,
    settings,
)
from receiver import Receiver, Recorded, Reply
from webhook_plugin import DeliveryEngine

pytestmark = pytest.mark.anyio


def talk(engine: DeliveryEngine, conversations: int, messages: int) -> list[object]:
    """``messages`` AI answers in each of ``conversations``, interleaved."""
    pm = pipeline(engine)
    tickets: list[object] = []
    for m in range(messages):
        for c in range(conversations):
            tickets += pm.hook.on_agent_reply(
                agent=AGENT,
                conversation=msgspec.structs.replace(CONVERSATION, id=f"c{c}"),
                message=msgspec.structs.replace(AGENT_MSG, id=f"a{c}-{m}", text=f"answer {m}"),
                in_reply_to=msgspec.structs.replace(USER_MSG, id=f"u{c}-{m}"),
            )
    return tickets


def arrivals(requests: list[Recorded]) -> dict[str, list[int]]:
    """Each conversation's sequences in the order their first copies arrived."""
    seen: set[str] = set()
    firsts: dict[str, list[int]] = defaultdict(list)
    for r in requests:
        if r.headers["webhook-id"] in seen:
            continue
        seen.add(r.headers["webhook-id"])
        body = json.loads(r.body)
        firsts[body["conversationId"]].append(body["sequence"])
    return firsts


def flaky(share: float, seed: int = 7) -> object:
    """A receiver's behaviour: fail ``share`` of requests at random (seeded)."""
    rand, lock = random.Random(seed), threading.Lock()

    def behaviour(r: Recorded) -> Reply:
        with lock:
            return Reply(503) if rand.random() < share else Reply(200)

    return behaviour


async def test_every_payload_carries_its_place_in_its_conversation(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """Unordered (the default): sent concurrently, yet each payload says where it
    belongs: 1, 2, 3... per conversation with no gaps, and a retry repeats it."""
    receiver.behaviour = flaky(0.3)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0,) + (0.02,) * 9)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        for ticket in talk(engine, conversations=5, messages=6):
            await ticket  # type: ignore[misc]
        await anyio.to_thread.run_sync(lambda: receiver.wait_for_ids(30))
        rows = await engine.list_deliveries(agent_id=AGENT.id, limit=100)
    by_id: dict[str, int] = {}
    for r in receiver.requests:
        body = json.loads(r.body)
        # a retry carries the same sequence as the first try of its webhook-id
        assert by_id.setdefault(r.headers["webhook-id"], body["sequence"]) == body["sequence"]
    firsts = arrivals(receiver.requests)
    assert {c: sorted(s) for c, s in firsts.items()} == {
        f"c{c}": list(range(1, 7)) for c in range(5)
    }
    assert {(r.conversation_id, r.sequence) for r in rows} == {
        (f"c{c}", s) for c in range(5) for s in range(1, 7)
    }


async def test_ordered_conversations_arrive_in_sequence_through_failures(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = flaky(0.25)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0,) + (0.02,) * 14)) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url, ordering="conversation"))
        for ticket in talk(engine, conversations=12, messages=8):
            await ticket  # type: ignore[misc]
        await anyio.to_thread.run_sync(lambda: receiver.wait_for_ids(96, timeout=30))
    firsts = arrivals(receiver.requests)
    assert firsts == {f"c{c}": list(range(1, 9)) for c in range(12)}
    assert len(receiver.requests) > 96  # some failed and were retried, yet in order


async def test_a_head_that_keeps_failing_holds_only_its_conversation_then_is_given_up(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    def behaviour(r: Recorded) -> Reply:
        body = json.loads(r.body)
        return Reply(503) if (body["conversationId"], body["sequence"]) == ("c0", 1) else Reply()

    receiver.behaviour = behaviour
    cfg = config(retry_schedule=(0,) + (0.1,) * 49)
    async with DeliveryEngine(make_store(), cfg) as engine:
        await engine.save_settings(
            AGENT.id, settings(receiver.url, ordering="conversation", ordering_max_wait=1.0)
        )
        for ticket in talk(engine, conversations=2, messages=3):
            await ticket  # type: ignore[misc]
        # the other conversation flows while c0's head fails
        await anyio.to_thread.run_sync(lambda: receiver.wait_for_ids(3, timeout=10))
        firsts = arrivals(receiver.requests)
        assert firsts["c1"] == [1, 2, 3]
        assert firsts["c0"] == [1]
        # given up after ordering_max_wait: the rest go, the gap is visible
        await anyio.to_thread.run_sync(lambda: receiver.wait_for_ids(5, timeout=10))
        [head] = [
            r
            for r in await engine.list_deliveries(agent_id=AGENT.id, status="failed")
            if r.conversation_id == "c0"
        ]
    assert head.sequence == 1
    assert head.last_error is not None and "ordering_max_wait" in head.last_error
    assert arrivals(receiver.requests)["c0"] == [1, 2, 3]


WORKER = Path(__file__).parent / "order_worker.py"


def spec_of(store: object) -> str:
    from webhook_plugin.storage.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return f"sqlite:{store.path}"
    return f"postgres:{store.schema}"  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.parametrize("ordering", ["conversation", "none"])
def test_two_worker_processes_one_killed_keep_every_conversation_in_order(
    make_store: StoreFactory, ordering: str
) -> None:
    """200 conversations x 10 events, a receiver failing 20 % at random, two
    worker processes on one database and one of them killed with SIGKILL
    midway: ordered, each conversation's first arrivals are in sequence order;
    either way nothing is lost, each duplicate is a re-send of an event
    already seen, and every sequence is right."""
    conversations, messages = 200, 10
    total = conversations * messages
    with Receiver(flaky(0.2, seed=11)) as rx:
        tickets, spec = anyio.run(_queue, make_store, rx.url, ordering, conversations, messages)
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        workers = [
            subprocess.Popen(
                [sys.executable, str(WORKER), spec],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        try:
            for w in workers:
                assert w.stdout is not None and w.stdout.readline().strip() == "READY"
            rx.wait_for_ids(total // 3, timeout=180)
            os.kill(workers[0].pid, signal.SIGKILL)
            at_kill = len({r.headers["webhook-id"] for r in rx.requests})
            assert at_kill < total, "everything was sent before the kill: it proves nothing"
            # the survivor takes the killed one's conversations once its leases end
            rx.wait_for_ids(total, timeout=300)
        finally:
            for w in workers:
                w.kill()
                w.wait()
                assert w.stdout is not None
                w.stdout.close()
    stored = {t.webhook_id for t in tickets}
    received = collections.Counter(r.headers["webhook-id"] for r in rx.requests)
    assert set(received) == stored, "lost or unknown events"
    firsts = arrivals(rx.requests)
    assert {c: sorted(s) for c, s in firsts.items()} == {
        f"c{c}": list(range(1, messages + 1)) for c in range(conversations)
    }
    out_of_order = sum(s != sorted(s) for s in firsts.values())
    if ordering == "conversation":
        assert out_of_order == 0
    print(f"\n{ordering}: killed at {at_kill}/{total}; {out_of_order} conversations out of order")


async def _queue(
    make_store: StoreFactory, url: str, ordering: str, conversations: int, messages: int
) -> tuple[list[Any], str]:
    """Queue the events from this process (it only queues); the database's spec."""
    async with DeliveryEngine(make_store(), config(workers=False)) as engine:
        await engine.save_settings(AGENT.id, settings(url, ordering=ordering))
        tickets = talk(engine, conversations, messages)
        for ticket in tickets:
            await ticket  # type: ignore[misc]
        return tickets, spec_of(engine.store)
