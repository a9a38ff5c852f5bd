"""The /v1 API of a running server: the token, and bad input answered with a 4xx that
says what is wrong."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from receiver import Receiver
from servers import TOKEN, Server


def test_every_v1_call_needs_the_token(env: tuple[Server, Receiver, Path]) -> None:
    server = env[0]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.get(f"{server.url}/v1/agents/support/webhook", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in r.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/agents/support/messages", b"{not json", 400, "invalid_body"),
        (
            "POST",
            "/v1/agents/support/messages",
            b'{"conversationId": 5}',
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/agents/support/messages",
            b'{"channel": "api", "text": "x"}',
            400,
            "invalid_body",
        ),
        ("POST", "/v1/agents/support/messages", b"", 400, "invalid_body"),
        (
            "POST",
            "/v1/agents/support/messages",
            b'{"conversationId":"c","channel":"api","text":"x","extra":1}',
            400,
            "invalid_body",
        ),
        ("PATCH", "/v1/conversations/nope", b'{"aiEnabled": true}', 404, "not_found"),
        (
            "PATCH",
            "/v1/conversations/nope",
            b'{"aiEnabled": "yes"}',
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/conversations/nope/inbox-messages",
            b'{"text": "hi"}',
            404,
            "not_found",
        ),
        ("GET", "/v1/inbox/conversations/nope", None, 404, "not_found"),
        ("GET", "/v1/agents/nobody/webhook", None, 404, "not_found"),
        (
            "GET",
            "/v1/agents/support/webhook/deliveries?status=lost",
            None,
            400,
            "invalid_query",
        ),
        ("GET", "/v1/agents/support/webhook/deliveries/999999", None, 404, "not_found"),
        (
            "POST",
            "/v1/agents/support/webhook/deliveries/abc/redeliver",
            None,
            404,
            "not_found",
        ),
        (
            "PUT",
            "/v1/agents/support/webhook",
            b'{"url": "ftp://x"}',
            400,
            "invalid_settings",
        ),
        (
            "PUT",
            "/v1/agents/support/webhook",
            b'{"header": "X-A: b\\r\\nX-B: c"}',
            400,
            "invalid_settings",
        ),
        (
            "PUT",
            "/v1/agents/support/webhook",
            b'{"events": ["NOPE"]}',
            400,
            "invalid_settings",
        ),
        (
            "PUT",
            "/v1/agents/support/webhook",
            b'{"url": "http://169.254.169.254/latest"}',
            400,
            "invalid_settings",
        ),
        (
            "PUT",
            "/v1/agents/support/webhook",
            b'{"userInfoUrl": "http://[::ffff:10.0.0.1]/"}',
            400,
            "invalid_settings",
        ),
        ("PUT", "/v1/agents/support/webhook?test=yes", b"{}", 400, "invalid_query"),
        (
            "POST",
            "/v1/agents/support/webhook/rotate-secret?graceSeconds=-5",
            None,
            400,
            "invalid_query",
        ),
        ("GET", "/v1/no/such/route", None, 404, "not_found"),
        ("DELETE", "/v1/agents/support/webhook", None, 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(
    api: httpx.Client,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    json_body = {"content-type": "application/json"} if body is not None else {}
    r = api.request(method, path, content=body, headers=json_body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]


def test_oversized_bodies_and_texts_are_413(api: httpx.Client) -> None:
    r = api.post(
        "/v1/agents/support/messages",
        content=b"x" * (1024 * 1024 + 1),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    big = {"conversationId": "big", "channel": "api", "text": "é" * 40_000}
    r = api.post("/v1/agents/support/messages", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "text_too_large"


def test_settings_errors_keep_what_was_saved(api: httpx.Client) -> None:
    before = api.get("/v1/agents/support/webhook").json()
    assert api.put("/v1/agents/support/webhook", json={"url": "not a url"}).status_code == 400
    assert api.get("/v1/agents/support/webhook").json() == before
