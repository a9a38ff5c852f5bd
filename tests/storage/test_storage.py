"""Storage details users rely on: migrations and the outcome of retried messages."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from webhook_plugin.events import WebhookEventType
from webhook_plugin.exceptions import ConfigError
from webhook_plugin.runtime.chat_store import SQLChatStore
from webhook_plugin.storage import open_store
from webhook_plugin.storage.base import NewDelivery, Store
from webhook_plugin.storage.sqlite import SQLiteStore


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
    conn.execute("DROP TABLE schema_versions")  # one version for all, then
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    store.open()
    chat = SQLChatStore(store)
    chat.open()
    try:
        chat.put_outcome("c", "m", b'{"ok": true}')
        assert chat.get_outcome("c", "m") == b'{"ok": true}'
        assert chat.get_outcome("c", "other") is None
    finally:
        store.close()
    versions = sqlite3.connect(path).execute("SELECT * FROM schema_versions").fetchall()
    assert sorted(versions) == [("chat", 1), ("delivery", 2)]


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


def test_a_message_id_is_reserved_once_released_on_failure_and_taken_over_when_stale(
    make_store: Callable[[], Store],
) -> None:
    db = make_store()
    db.open()
    store = SQLChatStore(db)  # type: ignore[arg-type]
    store.open()
    try:
        reserve = store.reserve_outcome
        assert reserve("c", "m", now=100.0, stale_before=0.0) is None  # ours
        assert reserve("c", "m", now=101.0, stale_before=0.0) == b""  # being processed
        store.release_outcome("c", "m")  # the processing failed
        assert reserve("c", "m", now=102.0, stale_before=0.0) is None  # a retry takes it
        assert reserve("c", "m", now=500.0, stale_before=101.0) == b""  # not stale yet
        assert reserve("c", "m", now=500.0, stale_before=103.0) is None  # stale: taken over
        store.put_outcome("c", "m", b'{"done": 1}')
        store.release_outcome("c", "m")  # a finished outcome is never released
        assert reserve("c", "m", now=9e9, stale_before=9e9) == b'{"done": 1}'
        assert reserve("c", "other", now=1.0, stale_before=0.0) is None
    finally:
        db.close()


def test_stored_answers_past_the_retention_are_forgotten(make_store: Callable[[], Store]) -> None:
    db = make_store()
    db.open()
    chat = SQLChatStore(db)  # type: ignore[arg-type]
    chat.open()
    try:
        assert chat.reserve_outcome("c", "old", now=10.0, stale_before=0.0) is None
        chat.put_outcome("c", "old", b'{"old": 1}')  # answered: keeps its first time
        chat.put_outcome("c", "new", b"{}")  # stored now
        assert chat.purge_outcomes(before=1e6) == 1
        assert chat.get_outcome("c", "old") is None
        assert chat.get_outcome("c", "new") == b"{}"
    finally:
        db.close()


def test_a_sqlite_watcher_wakes_on_queued_deliveries_not_on_other_commits(tmp_path: Path) -> None:
    import threading

    from webhook_plugin.events import WebhookEventType
    from webhook_plugin.settings import WebhookSettings
    from webhook_plugin.storage.base import NewDelivery

    store = SQLiteStore(tmp_path / "watch.db")
    store.open()
    try:
        store.put_settings("a", WebhookSettings(url="http://127.0.0.1:9/"))
        # a commit that queues nothing (as claims and attempt results do) wakes no one
        woken: list[bool] = []
        watcher = threading.Thread(target=lambda: woken.append(store.wait_for_new(0.5)))
        watcher.start()
        store.put_settings("a", WebhookSettings(url="http://127.0.0.1:9/b"))
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
        sql = store._CLAIM.replace("{skip}", "")
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (0, "x", 1, 1, 8))]
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
        claimed = store.claim_due(now=now, limit=5, lease_until=now + 60, owner="o")
        assert [d.webhook_id for d in claimed] == [f"w{i}" for i in range(5)]
    finally:
        store.close()
