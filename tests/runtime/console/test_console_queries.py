"""The read-only store queries the console adds, on SQLite and PostgreSQL:
agents, conversations newest first, and attempts per hour for the health strip."""

from __future__ import annotations

from collections.abc import Callable

from webhook_plugin.events import WebhookEventType
from webhook_plugin.runtime.chat.store import (
    ConversationRecord,
    MessageRecord,
    MessageWrite,
    SQLChatStore,
)
from webhook_plugin.storage.base import AttemptResult, NewDelivery, Store


def _conversation(cid: str, agent: str = "a1") -> ConversationRecord:
    return ConversationRecord(
        id=cid,
        agent_id=agent,
        channel="web",
        ai_enabled=True,
        contact={"name": cid},
        created_at=1.0,
    )


def _message(cid: str, mid: str, text: str) -> MessageRecord:
    return MessageRecord(
        id=mid, conversation_id=cid, author="user", text=text, created_at=2.0, status="received"
    )


def test_agents_and_conversations_newest_first(make_store: Callable[[], Store]) -> None:
    db = make_store()
    db.open()
    store = SQLChatStore(db)  # type: ignore[arg-type]
    store.open()
    try:
        store.put_agent("b-id", name=None, organization_id=None, ai_enabled=True)
        store.put_agent("z-id", name="Alpha", organization_id="o", ai_enabled=False)
        assert [a["id"] for a in store.list_agents()] == ["z-id", "b-id"]  # by name, then id
        assert store.list_agents()[0] == {
            "id": "z-id", "name": "Alpha", "organization_id": "o", "ai_enabled": False,
        }  # fmt: skip
        store.write_messages(
            [
                MessageWrite(conversation=_conversation("c1"), messages=[_message("c1", "m1", "one")]),
                MessageWrite(conversation=_conversation("c2", "a2"), messages=[_message("c2", "m2", "two" * 100)]),
            ]
        )  # fmt: skip
        store.write_messages([MessageWrite(messages=[_message("c1", "m3", "latest")])])
        listed = store.list_conversations()
        assert [(c.id, m and m.text) for c, m in listed] == [
            ("c1", "latest"),
            ("c2", ("two" * 100)[:200]),
        ]
        assert listed[0][0].contact == {"name": "c1"}
        assert [c.id for c, _ in store.list_conversations(agent_id="a2")] == ["c2"]
        assert len(store.list_conversations(limit=1)) == 1
    finally:
        db.close()


def test_attempt_stats_count_per_hour(make_store: Callable[[], Store]) -> None:
    store = make_store()
    store.open()
    try:
        since = 1_000_000.0
        deliveries = [
            NewDelivery(webhook_id=f"w{i}", agent_id=agent, event_type=WebhookEventType.AGENT_USER_MESSAGE,
                        body=b"{}", created_at=since - 10, next_attempt_at=since)
            for i, agent in enumerate(["a1", "a1", "a1", "other"])
        ]  # fmt: skip
        store.insert_deliveries(deliveries)
        ids = {d.webhook_id: d.id for d in store.list_deliveries(limit=10)}

        def attempt(webhook: str, n: int, at: float, code: int | None, ms: float) -> AttemptResult:
            return AttemptResult(
                delivery_id=ids[webhook], agent_id="a1", attempt=n, started_at=at, duration_ms=ms,
                status_code=code, error=None if code == 200 else "x", response_excerpt=None,
                status="pending", next_attempt_at=at + 1,
            )  # fmt: skip

        store.record_attempts(
            [
                attempt("w0", 1, since - 5, 200, 999.0),  # before the window
                attempt("w1", 1, since + 10, 500, 30.0),
                attempt("w2", 1, since + 20, 200, 10.0),
                attempt("w0", 2, since + 3600 * 5 + 1, 204, 50.0),
                attempt("w3", 1, since + 30, 200, 1.0),  # another agent
            ]
        )
        rows = store.attempt_stats("a1", since=since, bucket_seconds=3600, buckets=24)
        assert rows == [(0, 2, 1, 20.0, 30.0), (5, 1, 1, 50.0, 50.0)]
        assert store.attempt_stats("nobody", since=since, bucket_seconds=3600, buckets=24) == []
    finally:
        store.close()


def test_a_lookup_by_key_sees_each_commit_and_waits_for_no_long_read(
    make_store: Callable[[], Store],
) -> None:
    """The conversation lookup the pipeline may run on its event loop (SQLite):
    it sees what was committed just before, and a read holding the shared read
    connection (a long listing, in another thread) does not hold it up."""
    import threading

    db = make_store()
    db.open()
    store = SQLChatStore(db)  # type: ignore[arg-type]
    store.open()
    try:
        assert store.get_conversation("c1") is None
        store.put_agent("a1", name=None, organization_id=None, ai_enabled=True)
        store.write_messages([MessageWrite(conversation=_conversation("c1"))])
        found = store.get_conversation("c1")
        assert found is not None and found.contact == {"name": "c1"}
        holding, release = threading.Event(), threading.Event()

        def long_read(conn: object) -> None:
            holding.set()
            release.wait(10)

        reader = threading.Thread(target=db.read, args=(long_read,))  # type: ignore[attr-defined]
        reader.start()
        try:
            assert holding.wait(5)
            store.write_messages([MessageWrite(conversation=_conversation("c2"))])
            found: list[ConversationRecord | None] = []
            lookup = threading.Thread(target=lambda: found.append(store.get_conversation("c2")))
            lookup.start()
            lookup.join(3)  # on SQLite's shared reader it would wait for the long read
            assert len(found) == 1 and found[0] is not None and found[0].id == "c2"
        finally:
            release.set()
            reader.join()
    finally:
        db.close()
    if store.reads_inline:  # closed: a clear error, not a crash of the loop
        import pytest

        from webhook_plugin.exceptions import StorageError

        with pytest.raises(StorageError, match="not open"):
            store.get_conversation("c1")
