"""Work this process queues itself is leased to its dispatcher as it is
written: it is sent with no claim query, and nothing it leased waits for a
lease to run out, whatever happens to the writer's caller."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers import AGENT, config
from webhook_plugin import DeliveryEngine, WebhookSettings
from webhook_plugin.delivery.client import Response
from webhook_plugin.delivery.outbox import Collected
from webhook_plugin.events import WebhookEventType
from webhook_plugin.runtime.chat.store import MessageWrite, SQLChatStore
from webhook_plugin.runtime.chat.writes import MessageWrites
from webhook_plugin.storage.base import NewDelivery
from webhook_plugin.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

SETTINGS = WebhookSettings.validated(url="http://hooks.example/")


class Answers:
    """A receiver's part without a network: 200 after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.sent = delay, 0

    async def post(
        self, url: str, headers: Sequence[tuple[str, str]], body: bytes, **kw: Any
    ) -> Response:
        await anyio.sleep(self.delay)
        self.sent += 1
        return Response(200, {}, b"")

    async def aclose(self) -> None:
        pass


def counting_claims(store: SQLiteStore) -> list[int]:
    """Count the store's claims (found: how many each returned)."""
    found: list[int] = []
    claim_due = store.claim_due

    def counted(**kw: Any) -> Any:
        got = claim_due(**kw)
        found.append(len(got))
        return got

    store.claim_due = counted  # type: ignore[method-assign]
    return found


def fresh(i: int) -> NewDelivery:
    now = time.time()
    return NewDelivery(
        webhook_id=f"msg_{i}",
        agent_id=AGENT.id,
        event_type=WebhookEventType.AGENT_USER_MESSAGE,
        body=b"{}",
        created_at=now,
        next_attempt_at=now,
    )


async def test_steady_traffic_all_leased_makes_no_claim_after_claim(tmp_path: Path) -> None:
    """Events queued a few at a time, each batch leased as it is written and
    sent in 5 ms: the claim loop must not ask the store again and again for
    work that is not there (each such claim is a write on SQLite)."""
    store, client = SQLiteStore(tmp_path / "w.db"), Answers(delay=0.005)
    found = counting_claims(store)
    async with DeliveryEngine(store, config(poll_interval=1.0), client=client) as engine:
        await engine.save_settings(AGENT.id, SETTINGS)
        queued, claims_before, start = 0, len(found), time.monotonic()
        while time.monotonic() - start < 1.5:
            for _ in range(6):
                engine.enqueue(AGENT.id, WebhookEventType.AGENT_USER_MESSAGE, b"{}")
                queued += 1
            await anyio.sleep(0.002)
        with anyio.fail_after(5):
            while client.sent < queued:
                await anyio.sleep(0.01)
        claims = len(found) - claims_before
    # about one a poll interval; hundreds when every finished attempt during a
    # claim left a wake-up for the next
    assert claims <= 10, f"{claims} claims for {queued} events, all leased as written"


async def test_chat_commits_all_leased_wake_no_claim(tmp_path: Path) -> None:
    """Messages committed together, their events leased as written: none of
    their waiters sends the claim loop after work that is already at hand."""
    store, client = SQLiteStore(tmp_path / "w.db"), Answers()
    found = counting_claims(store)
    async with DeliveryEngine(store, config(poll_interval=30), client=client) as engine:
        await engine.save_settings(AGENT.id, SETTINGS)
        chat = SQLChatStore(store)
        chat.open()
        writes = MessageWrites(chat, engine, engine.blocking)
        async with anyio.create_task_group() as tg:
            await tg.start(writes.run)
            await anyio.sleep(0.1)
            before = len(found)

            async def commit(i: int) -> None:
                collected = Collected()
                collected.items.append(fresh(i))
                await writes.commit(MessageWrite(), collected)

            for round_ in range(10):
                async with anyio.create_task_group() as messages:
                    for i in range(8):
                        messages.start_soon(commit, 100 * round_ + i)
            with anyio.fail_after(5):
                while client.sent < 80:
                    await anyio.sleep(0.01)
            assert len(found) == before
            writes.close()


async def test_what_a_cancelled_commit_leased_is_sent_at_once(tmp_path: Path) -> None:
    """The caller of a chat commit is cancelled while its transaction runs; the
    transaction commits and leased its event to us: it is sent as soon as it
    is stored, not once its lease runs out (nor at the next poll, 30 s here)."""
    store, client = SQLiteStore(tmp_path / "w.db"), Answers()
    async with DeliveryEngine(store, config(poll_interval=30), client=client) as engine:
        await engine.save_settings(AGENT.id, SETTINGS)
        chat = SQLChatStore(store)
        chat.open()
        write_messages = chat.write_messages

        def slow(writes: Any, lease: Any = None) -> Any:
            time.sleep(0.2)
            return write_messages(writes, lease)

        chat.write_messages = slow  # type: ignore[method-assign]
        writes = MessageWrites(chat, engine, engine.blocking)
        async with anyio.create_task_group() as tg:
            await tg.start(writes.run)
            collected = Collected()
            collected.items.append(fresh(1))
            with anyio.move_on_after(0.05):
                await writes.commit(MessageWrite(), collected)
            assert client.sent == 0
            with anyio.fail_after(2):
                while client.sent < 1:
                    await anyio.sleep(0.01)
            writes.close()
