"""The runtime tests' shared server: `webhook-plugin serve` in a subprocess, one per
backend, started once for all the tests under ``tests/runtime/`` that use it.

The fixture is session-scoped: these folders are not packages (no ``__init__.py``),
so a package scope would be the session all the same. Tests that share it use
conversation and agent ids of their own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import POSTGRES_URL
from receiver import Receiver
from servers import AUTH, SECRET, TOKEN, Server, crm, postgres_database, write_config


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Receiver, Path]]:
    """One running server per backend; the tests below run against each."""
    tmp = tmp_path_factory.mktemp("runtime")
    database = None
    if request.param == "postgres":
        database = postgres_database(f"rt_{os.getpid()}")
    with Receiver(crm) as rx:
        server = Server(write_config(tmp, rx.url, database), tmp)
        try:
            yield server, rx, tmp
        finally:
            log = server.stop()
            if database:
                from webhook_plugin.storage.postgres import drop_schema

                drop_schema(POSTGRES_URL, database.rpartition("schema=")[2])
            assert "receiver-secret-value" not in log and "crm-key-value" not in log
            assert SECRET not in log and TOKEN not in log


@pytest.fixture
def api(env: tuple[Server, Receiver, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env[0].url, headers=AUTH, timeout=10) as client:
        yield client
