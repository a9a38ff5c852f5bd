from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from receiver import Receiver
from webhook_plugin import (
    Agent,
    Contact,
    Conversation,
    DeliveryConfig,
    DeliveryEngine,
    Message,
    PluginManager,
    WebhookPlugin,
)
from webhook_plugin.storage.base import Store
from webhook_plugin.storage.sqlite import SQLiteStore

POSTGRES_URL = os.environ.get(
    "WEBHOOK_PLUGIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("WEBHOOK_PLUGIN_REQUIRE_POSTGRES") == "1"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


def postgres_available() -> str | None:
    """None when the test PostgreSQL server answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc}"


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


def closed_port_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def config(**overrides: Any) -> DeliveryConfig:
    """A delivery config for tests: loopback allowed, fast polls, short schedule."""
    base: dict[str, Any] = {
        "allow_private_hosts": ("127.0.0.1",),
        "poll_interval": 0.05,
        "timeout": 2.0,
        "retry_schedule": (0, 0.05, 0.05),
        "jitter": 0.0,
        "shutdown_grace": 2.0,
    }
    base.update(overrides)
    return DeliveryConfig(**base)


def pipeline(engine: DeliveryEngine) -> PluginManager:
    pm = PluginManager()
    pm.register(WebhookPlugin(engine), name="webhook_plugin")
    return pm


NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
AGENT = Agent(id="support", name="Support Bot", organization_id="org_1")
CONTACT = Contact(id="u1", name="Ana Souza", email="ana@example.com", phone_number="+5511999990000")
CONVERSATION = Conversation(
    id="conv_1", agent_id="support", channel="whatsapp", ai_enabled=True, contact=CONTACT
)
USER_MSG = Message(id="m_user", text="Olá, preciso de ajuda", created_at=NOW)
AGENT_MSG = Message(id="m_agent", text="Claro! Como posso ajudar?", created_at=NOW)


def reply(pm: PluginManager, n: int = 1) -> list[Any]:
    """Fire ``on_agent_reply`` n times; return the tickets."""
    tickets = []
    for _ in range(n):
        tickets += pm.hook.on_agent_reply(
            agent=AGENT, conversation=CONVERSATION, message=AGENT_MSG, in_reply_to=USER_MSG
        )
    return tickets


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll a (blocking) predicate in a worker thread until it is truthy."""
    with anyio.fail_after(timeout):
        while True:
            value = await anyio.to_thread.run_sync(predicate)
            if value:
                return value
            await anyio.sleep(0.02)
