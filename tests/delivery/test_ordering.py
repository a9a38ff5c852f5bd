"""A conversation's events in order: every payload carries its ``sequence``, and
with ``ordering = "conversation"`` one conversation's events are sent one at a
time, in that order, against real receivers on 127.0.0.1 and both stores."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict

import anyio
import msgspec
import pytest

from helpers import (
    AGENT,
    AGENT_MSG,
    CONVERSATION,
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
