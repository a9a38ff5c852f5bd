"""Fixtures for every test. Helpers and test data are in :mod:`helpers` (``tests/``
is on the ``pythonpath`` of the pytest config, so test modules import it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import POSTGRES_URL, REQUIRE_POSTGRES, postgres_available
from receiver import Receiver
from webhook_plugin.storage.base import Store
from webhook_plugin.storage.sqlite import SQLiteStore


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A factory of unopened stores that all share one database (a file, or a schema)."""
    if request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "webhooks.db")
        return
    reason = postgres_available()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    from webhook_plugin.storage.postgres import PostgresStore, drop_schema

    schema = f"t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**9}"
    yield lambda: PostgresStore(POSTGRES_URL, schema=schema)
    drop_schema(POSTGRES_URL, schema)
