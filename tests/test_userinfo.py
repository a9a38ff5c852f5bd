"""Fetching external user info: real endpoints on 127.0.0.1, both backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from structlog.testing import capture_logs

from helpers import AGENT, CONVERSATION
from receiver import Receiver, Reply
from webhook_plugin import (
    Contact,
    Conversation,
    PluginManager,
    UserInfo,
    WebhookPlugin,
    WebhookSettings,
)
from webhook_plugin.delivery.client import Http11Client
from webhook_plugin.delivery.netguard import NetworkGuard
from webhook_plugin.userinfo import UserInfoFetcher

pytestmark = pytest.mark.anyio


class Settings:
    """A stand-in for the engine's settings cache (the plugin needs nothing else here)."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings

    def settings_for(self, agent_id: str) -> WebhookSettings | None:
        return self.settings

    def enqueue(self, *args: object) -> None:  # pragma: no cover - not used
        raise AssertionError


@pytest.fixture
async def fetcher() -> AsyncIterator[Callable[..., UserInfoFetcher]]:
    clients: list[Http11Client] = []

    def make(allow: tuple[str, ...] = ("127.0.0.1",), **kw: float) -> UserInfoFetcher:
        clients.append(Http11Client(NetworkGuard(allow), user_agent="t"))
        return UserInfoFetcher(clients[-1], **kw)

    yield make
    for client in clients:
        await client.aclose()


def settings(url: str) -> WebhookSettings:
    return WebhookSettings.validated(user_info_url=url, user_info_header="X-Api-Key: k-42-secret")


async def test_posts_the_contract_body_and_returns_the_object(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, body=b'{"plan": "gold", "orders": 3}')
    info = await fetcher().fetch(AGENT, CONVERSATION, settings(receiver.url + "/lookup"))
    assert info == UserInfo(status="ok", data={"plan": "gold", "orders": 3})
    [req] = receiver.requests
    assert req.path == "/lookup"  # no personal data in the URL
    assert req.headers["x-api-key"] == "k-42-secret"
    assert json.loads(req.body) == {
        "agentId": "support",
        "conversationId": "conv_1",
        "channel": "whatsapp",
        "contact": {
            "id": "u1",
            "name": "Ana Souza",
            "email": "ana@example.com",
            "phoneNumber": "+5511999990000",
        },
    }


async def test_unknown_contact_fields_are_left_out(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, body=b"{}")
    conversation = Conversation(
        id="c", agent_id="support", channel="api", contact=Contact(email="a@b.c")
    )
    await fetcher().fetch(AGENT, conversation, settings(receiver.url))
    assert json.loads(receiver.requests[0].body)["contact"] == {"email": "a@b.c"}


@pytest.mark.parametrize(
    ("reply", "status", "error"),
    [
        (Reply(500), "error", "HTTP 500"),
        (Reply(302, headers={"Location": "http://127.0.0.1:1/"}), "error", "HTTP 302"),
        (Reply(200, body=b"<html>not json</html>"), "error", "not valid JSON"),
        (Reply(200, body=b"[1, 2]"), "error", "not an object"),
        # once a RecursionError out of the fetcher ("a plugin failed")
        (Reply(200, body=b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}"), "error", "nested"),
        (Reply(200, body=b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"), "error", "nested more than"),
        (Reply(200, body=b'{"a": "' + b"x" * 70_000 + b'"}'), "error", "larger than 65536"),
        (Reply(200, delay=1.0, body=b"{}"), "timeout", "no answer within 0.3 s"),
        (Reply(reset=True), "error", "connect_error"),
    ],
)
async def test_a_broken_endpoint_never_raises(
    fetcher: Callable[..., UserInfoFetcher],
    receiver: Receiver,
    reply: Reply,
    status: str,
    error: str,
) -> None:
    receiver.behaviour = lambda r: reply
    with capture_logs() as logs:
        with anyio.fail_after(2):
            info = await fetcher(timeout=0.3).fetch(AGENT, CONVERSATION, settings(receiver.url))
    assert info.status == status and info.data is None
    assert info.error is not None and error in info.error
    assert any(e["event"] == "user_info.failed" for e in logs)
    assert "k-42-secret" not in repr(logs)


async def test_a_bug_in_the_client_is_an_error_not_a_broken_inbox(receiver: Receiver) -> None:
    class BuggyClient:
        async def post(self, *args: object, **kw: object) -> None:
            raise KeyError("a bug of ours")

    with capture_logs() as logs:
        info = await UserInfoFetcher(BuggyClient()).fetch(  # type: ignore[arg-type]
            AGENT, CONVERSATION, settings(receiver.url)
        )
    assert (info.status, info.error) == ("error", "internal_error: KeyError")
    assert [e["event"] for e in logs] == ["user_info.internal_error"]


async def test_refused_address_is_an_error_without_a_connection(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    info = await fetcher(allow=()).fetch(AGENT, CONVERSATION, settings(receiver.url))
    assert info.status == "error" and "network guard" in (info.error or "")
    assert receiver.connections == 0


async def test_answers_are_cached_per_contact(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, body=b'{"n": 1}')
    f = fetcher(ttl=60)
    s = settings(receiver.url)
    for _ in range(3):
        assert (await f.fetch(AGENT, CONVERSATION, s)).status == "ok"
    other = Conversation(id="c2", agent_id="support", channel="api", contact=Contact(id="u2"))
    await f.fetch(AGENT, other, s)
    assert len(receiver.requests) == 2


async def test_expired_cache_asks_again(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    now = [0.0]
    receiver.behaviour = lambda r: Reply(200, body=b"{}")
    f = fetcher(ttl=10)
    f._clock = lambda: now[0]
    s = settings(receiver.url)
    await f.fetch(AGENT, CONVERSATION, s)
    now[0] = 11
    await f.fetch(AGENT, CONVERSATION, s)
    assert len(receiver.requests) == 2


async def test_concurrent_renders_share_one_request(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, delay=0.2, body=b'{"ok": true}')
    f = fetcher()
    s = settings(receiver.url)
    results: list[UserInfo] = []

    async def render() -> None:
        results.append(await f.fetch(AGENT, CONVERSATION, s))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(render)
    assert len(results) == 10 and all(r.status == "ok" for r in results)
    assert len(receiver.requests) == 1


async def test_plugin_answers_only_for_configured_agents(
    fetcher: Callable[..., UserInfoFetcher], receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(200, body=b'{"vip": true}')
    pm = PluginManager()
    plugin_settings = Settings(settings(receiver.url))
    pm.register(WebhookPlugin(plugin_settings, fetcher()))  # type: ignore[arg-type]
    info = await pm.hook.fetch_user_info(agent=AGENT, conversation=CONVERSATION)
    assert info.data == {"vip": True}
    plugin_settings.settings = WebhookSettings.validated(url="https://hooks.example/")
    assert pm.hook.fetch_user_info(agent=AGENT, conversation=CONVERSATION) is None
