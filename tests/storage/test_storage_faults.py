"""A database that cannot be written fails the start with the reason, and a store
that fails later makes the engine unhealthy until it writes again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import config
from webhook_plugin import DeliveryEngine, StorageError, WebhookEventType
from webhook_plugin.storage.sqlite import SQLiteStore


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own (root only; skipped elsewhere)."""
    where = tmp_path / "mnt"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_database_fails_the_start_with_the_reason(small_mount: Path) -> None:
    db = small_mount / "webhooks.db"
    store = SQLiteStore(db)
    store.open()
    store.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    with pytest.raises(StorageError, match="read-only"):
        SQLiteStore(db).open()
    config_file = small_mount.parent / "ro.toml"
    config_file.write_text(f'[runtime]\ndatabase = "sqlite:///{db}"\n')
    served = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook_plugin.cli",
            "serve",
            "--config",
            str(config_file),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode != 0
    assert "read-only" in served.stderr and "Traceback" not in served.stderr


@pytest.mark.anyio
async def test_failed_writes_make_the_engine_unhealthy_until_one_succeeds(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "w.db")
    real = store.insert_deliveries
    broken = True

    def insert(items, lease=None):  # type: ignore[no-untyped-def]
        if broken:
            raise StorageError("SQLite write failed: database or disk is full")
        return real(items, lease)

    store.insert_deliveries = insert  # type: ignore[method-assign]
    async with DeliveryEngine(store, config(workers=False)) as engine:
        assert await engine.check_health() is None
        with pytest.raises(StorageError):
            await engine.enqueue("a", WebhookEventType.AGENT_USER_MESSAGE, b"{}")
        assert await engine.check_health() == "the database cannot be written"
        broken = False
        await engine.enqueue("a", WebhookEventType.AGENT_USER_MESSAGE, b"{}")
        assert await engine.check_health() is None
    assert await engine.check_health() == "the delivery engine is not running"
