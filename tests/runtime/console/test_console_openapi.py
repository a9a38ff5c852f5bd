"""``GET /openapi.json`` and the API page: the document covers every ``/v1``
route and the six payloads, and every answer it describes is what the API sends
(real answers are decoded into the documented types, unknown fields refused)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from console_client import BEARER, running_console, sign_in
from helpers import wait_until
from receiver import Receiver
from webhook_plugin.events import OperationalEventType, WebhookEventType
from webhook_plugin.payloads import json_schemas
from webhook_plugin.runtime.api.routes import routes
from webhook_plugin.runtime.console._openapi import ANSWERS, openapi_document


def _documented_path(starlette_path: str) -> str:
    names = {
        "agent_id": "agentId",
        "conversation_id": "conversationId",
        "delivery_id": "deliveryId",
    }
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: "{" + names[m[1]] + "}", starlette_path)


def test_the_document_is_openapi_3_1_with_every_route_and_every_webhook() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    for route in routes:
        path = _documented_path(route.path)
        assert path in doc["paths"], path
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in doc["paths"][path], (method, path)
    operational = {e.value for e in OperationalEventType}
    conversation = {e.value for e in WebhookEventType}
    assert set(doc["webhooks"]) == conversation | {"WEBHOOK_TEST"} | operational
    assert len(doc["webhooks"]) == 11

    schemas = doc["components"]["schemas"]
    text = msgspec.json.encode(doc).decode()
    for ref in set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref
    # the payloads are the msgspec types `webhook-plugin schema` prints
    for event, schema in json_schemas().items():
        ref = doc["webhooks"][event]["post"]["requestBody"]["content"]["application/json"]
        name = ref["schema"]["$ref"].rpartition("/")[2]
        own = schema["$defs"][name] if "$defs" in schema else schema
        ours = msgspec.json.encode(schemas[name]["properties"]).replace(
            b"#/components/schemas/", b"#/$defs/"
        )
        assert msgspec.json.decode(ours) == own["properties"], event
        if event in operational:  # one payload for the four, told apart by eventType
            kinds = schemas[schemas[name]["properties"]["eventType"]["$ref"].rpartition("/")[2]]
            assert event in kinds["enum"]
            continue
        assert schemas[name]["properties"]["eventType"] == {"enum": [event]}
        assert "groupId" in schemas[name]["properties"] or event != "GROUP_MESSAGE_RECEIVED"


def _as(name: str, data: Any) -> Any:
    return msgspec.convert(data, ANSWERS[name], strict=True)


@pytest.mark.anyio
async def test_real_answers_are_what_the_document_says(tmp_path: Path) -> None:
    with Receiver() as rx:
        async with running_console(tmp_path) as client:

            async def get(path: str) -> httpx.Response:
                return await client.get(path, headers=BEARER)

            r = await client.put(
                "/v1/agents/support/webhook?test=true",
                json={"url": f"{rx.url}/h", "header": "X-A: b", "userInfoUrl": f"{rx.url}/u"},
                headers=BEARER,
            )
            _as("WebhookSettingsAnswer", r.json())
            assert r.json()["test"]["status"] == "ok"
            _as("WebhookSettingsAnswer", (await get("/v1/agents/support/webhook")).json())
            r = await client.post(
                "/v1/agents/support/messages",
                json={"conversationId": "c1", "channel": "api", "text": "hi",
                      "contact": {"name": "Ana"},
                      "attachments": [{"url": "https://x.example/a.png", "size": 3}]},
                headers=BEARER,
            )  # fmt: skip
            _as("MessageAnswer", r.json())
            r = await client.post(
                "/v1/conversations/c1/inbox-messages", json={"text": "note"}, headers=BEARER
            )
            assert _as("InboxMessageAnswer", r.json()).status == "noted"
            r = await client.patch(
                "/v1/conversations/c1", json={"aiEnabled": False}, headers=BEARER
            )
            _as("ConversationAnswer", r.json())
            _as("InboxConversation", (await get("/v1/inbox/conversations/c1")).json())
            r = await client.post("/v1/agents/support/webhook/rotate-secret", headers=BEARER)
            _as("RotatedSecret", r.json())
            await wait_until(lambda: len(rx.requests) >= 3)
            log = (await get("/v1/agents/support/webhook/deliveries")).json()
            for row in log:
                _as("Delivery", row)
            one = log[0]["id"]
            _as(
                "DeliveryDetail", (await get(f"/v1/agents/support/webhook/deliveries/{one}")).json()
            )
            r = await client.post(
                f"/v1/agents/support/webhook/deliveries/{one}/redeliver", headers=BEARER
            )
            _as("Delivery", r.json())
            _as("Health", (await client.get("/healthz")).json())
            _as("Error", (await get("/v1/inbox/conversations/nope")).json())

            # served as JSON without a session, and shown on a page with one
            served = await client.get("/openapi.json")
            assert served.status_code == 200
            assert served.headers["content-type"] == "application/json"
            assert served.json() == msgspec.json.decode(msgspec.json.encode(openapi_document()))
            await sign_in(client)
            page = (await client.get("/api")).text
            for path in openapi_document()["paths"]:
                assert f"<code>{path}</code>" in page, path
            for event in WebhookEventType:
                assert f'id="webhook-{event}"' in page
            assert "agentResponse" in page and "groupName" in page


def test_the_health_strip_draws_24_hours_from_the_counts() -> None:
    from webhook_plugin.runtime.console._health import health_strip

    since = 1_764_000_000.0
    strip = health_strip([(0, 4, 3, 100.0, 250.0), (23, 1, 0, 6000.0, 6000.0)], since=since)
    assert len(strip.bars) == 24 and strip.attempts == 5 and strip.succeeded == 3
    first, last = strip.bars[0], strip.bars[23]
    assert first.ok_height == 33.0 and first.failed_height == 11.0
    assert last.ok_height == 0 and last.latency_class == "slow"
    assert strip.bars[5].attempts == 0 and strip.bars[5].latency_class == "none"
    assert strip.summary == (
        "Last 24 hours: 5 attempts, 60.0 % succeeded; latency 1.3 s on average, 6.0 s at most."
    )
    assert "75 % succeeded" in first.label and "UTC" in first.label
    assert health_strip([], since=since).summary == "No attempts in the last 24 hours."
