"""Storage details users rely on: migrations and the outcome of retried messages."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from webhook_plugin.exceptions import ConfigError
from webhook_plugin.storage import open_store
from webhook_plugin.storage.base import Store
from webhook_plugin.storage.sqlite import SQLiteStore


def test_an_older_sqlite_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    store.open()
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE message_outcomes")  # as a version 1 database had it
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    store.open()
    try:
        store.put_outcome("c", "m", b'{"ok": true}')
        assert store.get_outcome("c", "m") == b'{"ok": true}'
        assert store.get_outcome("c", "other") is None
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


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
    store = make_store()
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
        store.close()
