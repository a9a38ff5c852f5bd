"""Embedding the middleware in apps of one's own: the examples, run for real."""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from helpers import ROOT
from receiver import Receiver

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the ASGI lifespan as a server would."""
    to_app_send, to_app_receive = anyio.create_memory_object_stream[dict](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[dict](4)
    with to_app_send, to_app_receive, from_app_send, from_app_receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                app,
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                to_app_receive.receive,
                from_app_send.send,
            )
            await to_app_send.send({"type": "lifespan.startup"})
            message = await from_app_receive.receive()
            assert message["type"] == "lifespan.startup.complete", message
            try:
                yield
            finally:
                await to_app_send.send({"type": "lifespan.shutdown"})
                assert (await from_app_receive.receive())["type"] == "lifespan.shutdown.complete"


def load_example(name: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, rx: Receiver) -> Any:
    config = tmp / "embed.toml"
    config.write_text(
        f"""
[runtime]
database = "sqlite:///{tmp / "embed.db"}"
[webhook]
allow_private_hosts = ["127.0.0.1"]
poll_interval = 0.05
[[agents]]
id = "shop-bot"
name = "Shop"
[agents.webhook]
url = "{rx.url}/hook"
signing_secret = "{SECRET}"
user_info_url = "{rx.url}/lookup"
"""
    )
    monkeypatch.setenv("WEBHOOK_PLUGIN_CONFIG", str(config))
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop(f"examples.{name}", None)
    return importlib.import_module(f"examples.{name}").app


@pytest.mark.parametrize("example", ["starlette_app", "fastapi_app"])
async def test_example_app_sends_signed_webhooks(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    app = load_example(example, tmp_path, monkeypatch, receiver)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            r = await client.post("/chat", json={"chat": "c-1", "text": "hello"})
            assert r.status_code == 200, r.text
            [event] = r.json()["events"]
            [hook] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
    assert hook.headers["webhook-id"] == event["webhookId"]
    assert Webhook(SECRET).verify(hook.body, hook.headers)["conversationId"] == "c-1"


async def test_request_without_the_middleware_gets_a_clear_error() -> None:
    from webhook_plugin.runtime import pipeline_from

    with pytest.raises(RuntimeError, match="WebhookMiddleware"):
        pipeline_from({"type": "http", "state": {}})


async def test_startup_failure_is_reported_to_the_server(tmp_path: Path) -> None:
    from starlette.applications import Starlette

    from webhook_plugin.runtime import WebhookMiddleware
    from webhook_plugin.runtime.config import parse_config

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = parse_config({"runtime": {"database": f"sqlite:///{blocker}/x.db"}})
    app = WebhookMiddleware(Starlette(), config)
    to_app_send, to_app_receive = anyio.create_memory_object_stream[dict](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[dict](4)
    with to_app_send, to_app_receive, from_app_send, from_app_receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                app,
                {"type": "lifespan", "asgi": {"version": "3.0"}},
                to_app_receive.receive,
                from_app_send.send,
            )
            await to_app_send.send({"type": "lifespan.startup"})
            message = await from_app_receive.receive()
    assert message["type"] == "lifespan.startup.failed"
    assert "cannot open SQLite database" in message["message"]


async def test_a_plugin_replaces_the_built_in_responder(tmp_path: Path) -> None:
    from starlette.applications import Starlette

    from webhook_plugin import hookimpl
    from webhook_plugin.runtime import WebhookMiddleware
    from webhook_plugin.runtime.config import parse_config

    class FakeLLM:
        @hookimpl
        def generate_reply(self, agent, conversation, message):  # type: ignore[no-untyped-def]
            async def answer() -> str:
                await anyio.lowlevel.checkpoint()
                return f"LLM says: {message.text[::-1]}"

            return answer()

    config = parse_config({"runtime": {"database": f"sqlite:///{tmp_path / 'x.db'}"}})
    middleware = WebhookMiddleware(Starlette(), config, plugins=[FakeLLM()])
    async with middleware.running() as pipeline:
        out = await pipeline.user_message("a", conversation_id="c", channel="web", text="olá")
    assert out["reply"]["text"] == "LLM says: álo"
    assert out["events"] == []  # agent "a" has no webhook URL
