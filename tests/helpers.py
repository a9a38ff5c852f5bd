"""Shared test data and helpers for the delivery engine (importable: ``tests/`` is on
``pythonpath``); the fixtures built on them are in ``conftest.py``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from webhook_plugin import (
    Agent,
    Contact,
    Conversation,
    DeliveryConfig,
    DeliveryEngine,
    Message,
    PluginManager,
    WebhookPlugin,
    WebhookSettings,
)
from webhook_plugin.storage.base import Store

#: the tests folder, and the repository around it
TESTS = Path(__file__).parent
ROOT = TESTS.parent

POSTGRES_URL = os.environ.get(
    "WEBHOOK_PLUGIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("WEBHOOK_PLUGIN_REQUIRE_POSTGRES") == "1"

StoreFactory = Callable[[], Store]


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
    id="conv_1",
    agent_id="support",
    channel="whatsapp",
    ai_enabled=True,
    contact=CONTACT,
)
USER_MSG = Message(id="m_user", text="Olá, preciso de ajuda", created_at=NOW)
AGENT_MSG = Message(id="m_agent", text="Claro! Como posso ajudar?", created_at=NOW)


def reply(pm: PluginManager, n: int = 1) -> list[Any]:
    """Fire ``on_agent_reply`` n times; return the tickets."""
    tickets = []
    for _ in range(n):
        tickets += pm.hook.on_agent_reply(
            agent=AGENT,
            conversation=CONVERSATION,
            message=AGENT_MSG,
            in_reply_to=USER_MSG,
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


# -- an agent's endpoint, and its deliveries as the engine lists them ----------------------------

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEADER = "Authorization: Bearer s3cr3t-token-value"


def settings(url: str, **kw: object) -> WebhookSettings:
    """Settings with :data:`HEADER` and :data:`SECRET`."""
    return WebhookSettings.validated(url=url, header=HEADER, signing_secret=SECRET, **kw)  # type: ignore[arg-type]


async def deliveries(engine: DeliveryEngine, status: str | None = None) -> list[Any]:
    return await engine.list_deliveries(agent_id=AGENT.id, status=status)  # type: ignore[arg-type]


async def wait_until_status(
    engine: DeliveryEngine, status: str, count: int = 1, *, min_attempts: int = 0
) -> list[Any]:
    """The :data:`AGENT`'s deliveries in ``status`` once there are ``count`` of them."""

    async def check() -> list[Any]:
        rows = [r for r in await deliveries(engine, status) if r.attempts >= min_attempts]
        return rows if len(rows) >= count else []

    with anyio.fail_after(10):
        while not (rows := await check()):
            await anyio.sleep(0.02)
    return rows


def put_settings(store: Any, agent_id: str, settings: WebhookSettings) -> None:
    """Store an agent's settings as they are (the store's read-change-write, with
    a change that ignores what was there)."""
    store.update_settings(agent_id, lambda _old: settings)
