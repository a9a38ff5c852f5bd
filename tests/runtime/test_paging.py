"""Bounded reads: a long conversation, many agents and many conversations are read
a page at a time (API and console), and following the cursors gives each item
once, in order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from console_client import running_console
from webhook_plugin.runtime.chat.store import ConversationRecord, MessageRecord, MessageWrite

pytestmark = pytest.mark.anyio


def _pipeline(client: httpx.AsyncClient) -> Any:
    app = client._transport.app  # type: ignore[attr-defined]
    return app.pipeline


def _conversation(cid: str, agent: str = "bot") -> ConversationRecord:
    return ConversationRecord(
        id=cid, agent_id=agent, channel="web", ai_enabled=True, contact={}, created_at=1.0
    )


def _message(cid: str, n: int) -> MessageRecord:
    return MessageRecord(
        id=f"{cid}-m{n}", conversation_id=cid, author="user", text=f"message {n}",
        created_at=1000.0 + n, status="received",
    )  # fmt: skip


async def _store(client: httpx.AsyncClient, writes: list[MessageWrite]) -> None:
    store = _pipeline(client).store
    await anyio.to_thread.run_sync(store.write_messages, writes)


async def test_a_long_conversation_is_read_a_page_at_a_time(tmp_path: Path) -> None:
    async with running_console(tmp_path, token=None) as c:
        await _store(c, [MessageWrite(conversation=_conversation("long"))])
        await _store(c, [MessageWrite(messages=[_message("long", n) for n in range(130)])])
        seen: list[str] = []
        url = "/v1/inbox/conversations/long"
        pages = 0
        while True:
            r = await c.get(url)
            assert r.status_code == 200, r.text
            view = r.json()
            assert len(view["messages"]) <= 50
            seen[:0] = [m["text"] for m in view["messages"]]  # each page is older
            pages += 1
            if "nextBefore" not in view:
                break
            url = f"/v1/inbox/conversations/long?before={view['nextBefore']}"
        assert pages == 3
        assert seen == [f"message {n}" for n in range(130)]
        r = await c.get("/v1/inbox/conversations/long?limit=200")
        assert len(r.json()["messages"]) == 130 and "nextBefore" not in r.json()
        for query in ("limit=201", "limit=0", "before=abc", "before=-1"):
            r = await c.get(f"/v1/inbox/conversations/long?{query}")
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query", query
        page = await c.get("/inbox/long")
        assert page.status_code == 200
        assert page.text.count('class="message-text"') == 50 and "message 129" in page.text
        older = re.search(r'href="(\?before=\d+)">Older messages', page.text)
        assert older, "no link to the older messages"
        page = await c.get(f"/inbox/long{older[1]}")
        assert "message 79" in page.text and "message 80" not in page.text
        assert "Newest messages" in page.text


async def _follow(client: httpx.AsyncClient, url: str, item: str, more: str) -> list[str]:
    found: list[str] = []
    while True:
        page = await client.get(url)
        assert page.status_code == 200, page.text
        found += re.findall(item, page.text)
        link = re.search(rf'href="(\?[^"]+)">{more}', page.text)
        if link is None:
            return found
        url = url.partition("?")[0] + link[1].replace("&amp;", "&")


async def test_agents_and_conversations_are_listed_a_page_at_a_time(tmp_path: Path) -> None:
    async with running_console(tmp_path, token=None) as c:
        store = _pipeline(c).store
        for n in range(230):
            await anyio.to_thread.run_sync(
                lambda n=n: store.put_agent(
                    f"agent-{n:03}", name=None if n % 3 else f"Name {n:03}",
                    organization_id=None, ai_enabled=True,
                )
            )  # fmt: skip
        await _store(
            c,
            [
                MessageWrite(conversation=_conversation(f"c{n:03}"), messages=[_message(f"c{n:03}", 0)])
                for n in range(230)
            ],
        )  # fmt: skip
        agents = await _follow(
            c, "/agents", r'/agents/(agent-\d+)/settings/webhook">', "More agents"
        )
        assert sorted(agents) == sorted(f"agent-{n:03}" for n in range(230))
        assert len(agents) == len(set(agents))
        listed = await _follow(c, "/inbox", r'href="/inbox/(c\d+)"', "Older conversations")
        assert listed == [f"c{n:03}" for n in reversed(range(230))]  # newest first, once each
        await _store(c, [MessageWrite(messages=[_message("c000", 1)])])  # c000 speaks again
        listed = await _follow(c, "/inbox", r'href="/inbox/(c\d+)"', "Older conversations")
        assert listed[0] == "c000" and len(listed) == 230


def test_a_conversation_that_moves_between_two_pages_is_not_listed_twice(tmp_path: Path) -> None:
    from webhook_plugin.runtime.chat.store import SQLChatStore
    from webhook_plugin.storage.sqlite import SQLiteStore

    db = SQLiteStore(tmp_path / "pages.db")
    db.open()
    store = SQLChatStore(db)
    store.open()
    try:
        for n in range(1, 6):
            store.write_messages(
                [MessageWrite(conversation=_conversation(f"k{n}"), messages=[_message(f"k{n}", 0)])]
            )
        first = store.list_conversations(limit=3)
        assert [c.id for c, _ in first] == ["k5", "k4", "k3"]
        store.write_messages([MessageWrite(messages=[_message("k3", 1)])])  # k3 moves up
        second = store.list_conversations(before=first[-1][0].cursor, limit=3)
        assert [c.id for c, _ in second] == ["k2", "k1"]
    finally:
        db.close()
