"""One rule for every id (agent, conversation, message, group): NFC-normalized,
no control or bidirectional characters, no ``/``, not ``.`` or ``..``, at most
200 characters; and every id that passes opens in the API and the console."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console_client import console_config
from webhook_plugin.delivery.netguard import NetworkGuard
from webhook_plugin.exceptions import BlockedAddress, ConfigError
from webhook_plugin.runtime.app import create_app
from webhook_plugin.runtime.config import parse_config
from webhook_plugin.runtime.ids import id_problem, normalized_id

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app: Any = create_app(console_config(tmp_path, token=None))
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


def message(conversation: str, **more: object) -> dict[str, object]:
    return {"conversationId": conversation, "channel": "web", "text": "hi", **more}


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("conversationId", "..", "'.' or '..'"),
        ("conversationId", ".", "'.' or '..'"),
        ("conversationId", "evil\u202egnp.exe", "U+202E"),
        ("conversationId", "two\nlines", "U+000A"),
        ("conversationId", "x" * 201, "1 to 200"),
        ("messageId", "m\u2066", "U+2066"),
        ("messageId", "", "1 to 200"),
    ],
)
async def test_an_id_against_the_rule_is_400_saying_why(
    api: httpx.AsyncClient, field: str, value: str, says: str
) -> None:
    body = message("c1", **{field: value}) if field != "conversationId" else message(value)
    r = await api.post("/v1/agents/bot/messages", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_id" and says in r.json()["error"]["message"]


async def test_an_agent_id_against_the_rule_is_400(api: httpx.AsyncClient) -> None:
    for path in ("/v1/agents/%2E%2E/messages", "/v1/agents/a%E2%80%AEb/messages"):
        r = await api.post(path, json=message("c1"))
        assert r.status_code in (400, 404), r.text  # a browser-style ".." may not route
    r = await api.post("/v1/agents/a%E2%80%AEb/messages", json=message("c1"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_agent"
    r = await api.post(
        "/v1/agents/bot/messages", json=message("c1", group={"id": "g\x07", "name": "G"})
    )
    assert r.status_code == 400 and "group.id" in r.json()["error"]["message"]


async def test_a_conversation_id_with_a_slash_opens_in_the_api_and_the_console(
    api: httpx.AsyncClient,
) -> None:
    cid = "wa/5511999990000@c.us"
    r = await api.post("/v1/agents/bot/messages", json=message(cid))
    assert r.status_code == 200, r.text
    encoded = quote(cid, safe="")
    view = await api.get(f"/v1/inbox/conversations/{encoded}")
    assert view.status_code == 200 and view.json()["conversationId"] == cid
    page = await api.get(f"/inbox/{encoded}")
    assert page.status_code == 200 and f'action="/inbox/{encoded}/ai"' in page.text
    r = await api.patch(f"/v1/conversations/{encoded}", json={"aiEnabled": False})
    assert r.status_code == 200 and r.json() == {"conversationId": cid, "aiEnabled": False}
    r = await api.post(f"/v1/conversations/{encoded}/inbox-messages", json={"text": "hello"})
    assert r.status_code == 200, r.text
    view = await api.get(f"/v1/inbox/conversations/{encoded}")
    assert [m["author"] for m in view.json()["messages"]][-1] == "operator"
    r = await api.post("/v1/agents/a%2Fb/messages", json=message("c2"))  # not an agent's
    assert r.status_code in (400, 404)


async def test_ids_that_differ_only_by_normalization_are_one_conversation(
    api: httpx.AsyncClient,
) -> None:
    nfc, nfd = "jos\u00e9", "jose\u0301"
    assert (await api.post("/v1/agents/bot/messages", json=message(nfc))).status_code == 200
    assert (await api.post("/v1/agents/bot/messages", json=message(nfd))).status_code == 200
    view = await api.get(f"/v1/inbox/conversations/{quote(nfd, safe='')}")
    assert view.status_code == 200 and view.json()["conversationId"] == nfc
    assert len(view.json()["messages"]) == 4  # both messages and both replies
    page = await api.get(f"/inbox/{quote(nfc, safe='')}")
    assert page.status_code == 200


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(conversation=st.text(min_size=1, max_size=30))
async def test_every_id_that_passes_opens_in_the_api_and_the_console(
    tmp_path_factory: pytest.TempPathFactory, conversation: str
) -> None:
    app: Any = create_app(console_config(tmp_path_factory.mktemp("ids"), token=None))
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as api:
            r = await api.post("/v1/agents/bot/messages", json=message(conversation))
            problem = id_problem(normalized_id(conversation))
            if problem is not None:
                assert r.status_code == 400, r.text
                return
            assert r.status_code == 200, r.text
            stored = r.json()["conversationId"]
            view = await api.get(f"/v1/inbox/conversations/{quote(stored, safe='')}")
            assert view.status_code == 200 and view.json()["conversationId"] == stored
            page = await api.get(f"/inbox/{quote(stored, safe='')}")
            assert page.status_code == 200
            assert f'action="/inbox/{quote(stored, safe="")}/messages"' in page.text


def test_the_configs_agent_ids_follow_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"agents\[0\]\.id"):
        parse_config({"agents": [{"id": "a/b"}]})
    config = parse_config({"agents": [{"id": "jose\u0301"}]})
    assert config.agents[0].id == "jos\u00e9"


def test_the_guard_never_tells_what_a_name_resolves_to() -> None:
    guard = NetworkGuard()
    with pytest.raises(BlockedAddress) as refused:
        guard.check("db.internal.example", ip_address("10.20.30.40"))
    text = str(refused.value)
    assert "10.20.30.40" not in text and "private or loopback address" in text
    with pytest.raises(BlockedAddress, match="private or loopback address"):
        guard.check("10.20.30.40", ip_address("10.20.30.40"))  # the owner typed it
