"""Storage details users rely on: migrations and the outcome of retried messages."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import put_settings
from webhook_plugin.events import WebhookEventType
from webhook_plugin.exceptions import ConfigError
from webhook_plugin.runtime.chat.schema import MIGRATIONS
from webhook_plugin.runtime.chat.store import (
    Answer,
    Conflict,
    ConversationRecord,
    IdempotencyMismatch,
    MessageRecord,
    MessageWrite,
    SQLChatStore,
)
from webhook_plugin.storage import open_store
from webhook_plugin.storage.base import NewDelivery, Store
from webhook_plugin.storage.sqlite import SQLiteStore


def answered(key: str, body: bytes, *, bound: str = "fp", agent: str = "a") -> MessageWrite:
    """A user message with ``messageId`` ``key`` in conversation ``c``, answered ``body``."""
    return MessageWrite(
        conversation=ConversationRecord(
            id="c", agent_id=agent, channel="web", ai_enabled=True, contact={}, created_at=1.0
        ),
        messages=[
            MessageRecord(
                id=key, conversation_id="c", author="user", text="hi", created_at=1.0,
                status="received",
            )
        ],
        answer=Answer(conversation_id="c", message_id=key, fingerprint=bound, body=body),
    )  # fmt: skip


@pytest.fixture
def chat(make_store: Callable[[], Store]) -> Iterator[SQLChatStore]:
    """The chat store on a fresh database (each backend)."""
    db = make_store()
    db.open()
    store = SQLChatStore(db)  # type: ignore[arg-type]
    store.open()
    try:
        yield store
    finally:
        db.close()


def test_a_database_made_before_the_stores_were_split_is_migrated_in_place(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    store.open()
    SQLChatStore(store).open()
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE message_outcomes")  # as a version 1 database had it
    conn.execute("DROP TABLE console_keys")
    conn.execute("DROP INDEX conversations_recent")
    conn.execute("DROP INDEX conversations_agent_recent")
    conn.execute("ALTER TABLE conversations DROP COLUMN last_seq")
    conn.execute("ALTER TABLE conversations DROP COLUMN group_name")
    conn.execute("DROP INDEX deliveries_lane")
    conn.execute("DROP INDEX deliveries_conversation")  # the delivery tables as version 2 had them
    conn.execute("DROP TABLE conversation_sequences")
    for column in ("conversation_id", "sequence", "ordered", "head_since"):
        conn.execute(f"ALTER TABLE deliveries DROP COLUMN {column}")
    conn.execute("ALTER TABLE webhook_settings DROP COLUMN failing_notified")
    conn.execute("ALTER TABLE deliveries DROP COLUMN round_trigger")
    for column in ("url", "response_headers", "trigger"):
        conn.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
    conn.execute("DROP TABLE schema_versions")  # one version for all, then
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    store.open()
    chat = SQLChatStore(store)
    chat.open()
    try:
        chat.write_messages([answered("m", b'{"ok": true}')])
        assert chat.get_answer("c", "m") == (b'{"ok": true}', "fp")
        assert chat.get_answer("c", "other") is None
    finally:
        store.close()
    versions = sqlite3.connect(path).execute("SELECT * FROM schema_versions").fetchall()
    assert sorted(versions) == [("chat", 5), ("delivery", 3)]


def test_an_earlier_versions_reservation_marks_are_dropped_its_answers_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    store = SQLiteStore(path)
    store.open()
    store.migrate("chat", MIGRATIONS["sqlite"][:1])  # the chat tables as version 1 made them
    store.close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO message_outcomes VALUES (?, ?, ?, ?)",
        [("c", "working", b"", 1.0), ("c", "done", b'{"old": 1}', 1.0)],
    )
    conn.commit()
    conn.close()
    store.open()
    chat = SQLChatStore(store)
    chat.open()
    try:
        assert chat.get_answer("c", "working") is None  # a retry processes it
        assert chat.get_answer("c", "done") == (b'{"old": 1}', None)  # bound to no request
        late = answered("done", b"{}", bound="any")
        chat.write_messages([late])
        assert late.earlier == b'{"old": 1}' and late.refused is None
    finally:
        store.close()


def test_the_delivery_store_alone_has_no_chat_tables(tmp_path: Path) -> None:
    """A host app that embeds only the plugin gets no chat tables."""
    store = SQLiteStore(tmp_path / "plugin-only.db")
    store.open()
    store.close()
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "plugin-only.db").execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert tables == {
        "deliveries",
        "attempts",
        "webhook_settings",
        "queued_signal",
        "schema_versions",
        "conversation_sequences",
    }


@pytest.mark.parametrize(
    ("url", "kind", "schema"),
    [
        ("sqlite:///relative.db", "SQLiteStore", None),
        ("postgresql://u@h/db?schema=chat", "PostgresStore", "chat"),
        ("postgresql://u@h/db", "PostgresStore", "webhook_plugin"),
    ],
)
def test_database_urls(url: str, kind: str, schema: str | None) -> None:
    store = open_store(url)
    assert type(store).__name__ == kind
    if schema:
        assert store.schema == schema  # type: ignore[attr-defined]
        assert "schema=" not in store.url  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite://:memory:", "mysql://x/y", "webhooks.db"])
def test_unusable_database_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="database"):
        open_store(url)


def test_postgres_url_is_not_shown_with_its_password() -> None:
    store = open_store("postgresql://u:hunter2@h/db")
    assert "hunter2" not in repr(store)


def test_a_message_id_is_taken_by_the_first_commit_and_bound_to_its_request(
    chat: SQLChatStore,
) -> None:
    first = answered("m", b'{"n": 1}')
    chat.write_messages([first])
    assert first.earlier is None and first.refused is None
    twin = answered("m", b'{"n": 2}')  # the same request, processed again elsewhere
    chat.write_messages([twin])
    assert twin.earlier == b'{"n": 1}' and twin.refused is None
    other = answered("m", b'{"n": 3}', bound="another request")
    chat.write_messages([other])
    assert isinstance(other.refused, IdempotencyMismatch) and other.earlier is None
    assert [m.id for m in chat.list_messages("c")] == ["m"]  # the first's message only
    # twins in one batch: the first in it is stored, the other gets its answer
    a, b = answered("n", b'{"n": 4}'), answered("n", b'{"n": 5}')
    chat.write_messages([a, b])
    assert a.earlier is None and b.earlier == b'{"n": 4}'
    assert [m.id for m in chat.list_messages("c")] == ["m", "n"]
    assert chat.get_answer("c", "n") == (b'{"n": 4}', "fp")
    # twins in one batch with another request under the key: refused, and
    # the first's answer stands (even when its conversation is another's)
    c, d = answered("o", b'{"n": 6}'), answered("o", b'{"n": 7}', bound="other", agent="b")
    chat.write_messages([c, d])
    assert c.earlier is None and c.refused is None
    assert isinstance(d.refused, IdempotencyMismatch)
    assert chat.get_answer("c", "o") == (b'{"n": 6}', "fp")
    # a first that lost to an answer stored before: its twin gets that answer
    e, f = answered("m", b'{"n": 8}'), answered("m", b'{"n": 9}')
    chat.write_messages([e, f])
    assert e.earlier == f.earlier == b'{"n": 1}'


def test_a_message_for_another_agents_conversation_is_refused_and_its_key_left_free(
    chat: SQLChatStore,
) -> None:
    chat.write_messages([answered("m1", b"{}", agent="a")])
    intruder = answered("m2", b"{}", agent="b")
    chat.write_messages([intruder])
    assert isinstance(intruder.refused, Conflict)
    assert "belongs to another agent" in str(intruder.refused)
    assert chat.get_answer("c", "m2") is None
    conversation = chat.get_conversation("c")
    assert conversation is not None and conversation.agent_id == "a"
    assert [m.id for m in chat.list_messages("c")] == ["m1"]


def test_a_message_merges_the_contact_and_never_writes_the_ai_switch(
    chat: SQLChatStore,
) -> None:
    first = answered("m1", b"{}")
    assert first.conversation is not None
    first.conversation.contact = {"name": "Ana"}
    chat.write_messages([first])
    switched = chat.set_ai_enabled("c", False)  # the operator, while m2 is in flight
    assert switched is not None and switched.ai_enabled is False
    second = answered("m2", b"{}")  # it read AI on, and a contact without the name
    assert second.conversation is not None
    second.conversation.contact = {"email": "ana@example.com"}
    second.conversation.last_user_message_at = 50.0
    chat.write_messages([second])
    stored = chat.get_conversation("c")
    assert stored is not None and stored.ai_enabled is False
    assert stored.contact == {"name": "Ana", "email": "ana@example.com"}
    assert stored.last_user_message_at == 50.0
    assert chat.set_ai_enabled("nope", True) is None


def test_stored_answers_past_the_retention_are_forgotten(
    chat: SQLChatStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 10.0)
    chat.write_messages([answered("old", b'{"old": 1}')])
    monkeypatch.undo()
    chat.write_messages([answered("new", b"{}")])
    assert chat.purge_answers(before=1e6) == 1
    assert chat.get_answer("c", "old") is None
    assert chat.get_answer("c", "new") == (b"{}", "fp")


def test_a_sqlite_watcher_wakes_on_queued_deliveries_not_on_other_commits(tmp_path: Path) -> None:
    import threading

    from webhook_plugin.events import WebhookEventType
    from webhook_plugin.settings import WebhookSettings
    from webhook_plugin.storage.base import NewDelivery

    store = SQLiteStore(tmp_path / "watch.db")
    store.open()
    try:
        put_settings(store, "a", WebhookSettings(url="http://127.0.0.1:9/"))
        # a commit that queues nothing (as claims and attempt results do) wakes no one
        woken: list[bool] = []
        watcher = threading.Thread(target=lambda: woken.append(store.wait_for_new(0.5)))
        watcher.start()
        put_settings(store, "a", WebhookSettings(url="http://127.0.0.1:9/b"))
        watcher.join()
        assert woken == [False]
        # a transaction that queues deliveries does
        watcher = threading.Thread(target=lambda: woken.append(store.wait_for_new(5)))
        watcher.start()
        time.sleep(0.2)  # it has read the counter
        store.insert_deliveries(
            [
                NewDelivery(
                    webhook_id="w1", agent_id="a", event_type=WebhookEventType.AGENT_USER_MESSAGE,
                    body=b"{}", created_at=1.0, next_attempt_at=1.0,
                )
            ]
        )  # fmt: skip
        watcher.join()
        assert woken == [False, True]
    finally:
        store.close()


def test_a_sqlite_claim_reads_the_due_index_in_order_not_every_pending_row(
    tmp_path: Path,
) -> None:
    """With a backlog (an outage's, or a burst's) a claim must cost its LIMIT,
    not the whole backlog: SQLite's planner, left alone, took the status index
    and sorted every pending row for each claim (23 ms at 20,000 pending)."""
    store = SQLiteStore(tmp_path / "plan.db")
    store.open()
    try:
        conn = sqlite3.connect(tmp_path / "plan.db")
        sql = (
            store._CLAIM.replace("{skip}", "")
            .replace("{in_turn}", store._IN_TURN)
            .replace("{now}", store._NOW)
        )
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (30, "x", 8))]
        conn.close()
        assert any("USING INDEX deliveries_due" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan
        now = time.time()
        store.insert_deliveries(
            [
                NewDelivery(
                    webhook_id=f"w{i}",
                    agent_id="a",
                    event_type=WebhookEventType.AGENT_USER_MESSAGE,
                    body=b"{}",
                    created_at=now,
                    next_attempt_at=now - 100 + i,  # the oldest first
                )
                for i in range(50)
            ]
        )
        claimed = store.claim_due(limit=5, lease_seconds=60, owner="o")
        assert [d.webhook_id for d in claimed] == [f"w{i}" for i in range(5)]
    finally:
        store.close()
