"""Chat messages through the /v1 API of a running server: each stage sends its event."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from receiver import Receiver
from servers import SECRET, Server, hooks_for, post_message


def test_ai_reply_sends_agent_user_message_signed(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    _, rx, _ = env
    out = post_message(
        api, "conv-ai", contact={"id": "u1", "name": "Ana", "email": "ana@example.com"}
    )
    assert out["conversationId"] == "conv-ai" and out["reply"]["text"]
    [event] = out["events"]
    assert event["eventType"] == "AGENT_USER_MESSAGE"
    [hook] = hooks_for(rx, event["webhookId"])
    payload = Webhook(SECRET).verify(hook.body, hook.headers)
    assert hook.headers["authorization"] == "Bearer receiver-secret-value"
    assert payload["userMessage"] == "Olá, tudo bem?"
    assert payload["agentResponse"] == out["reply"]["text"]
    assert payload["messageId"] == out["reply"]["messageId"]
    assert payload["userMessageId"] == out["messageId"]
    assert payload["agentName"] == "Support Bot" and payload["organizationId"] == "org_9"
    assert payload["userName"] == "Ana" and "groupId" not in payload


def test_ai_disabled_sends_user_message_received(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    post_message(api, "conv-human")
    r = api.patch("/v1/conversations/conv-human", json={"aiEnabled": False})
    assert r.json() == {"conversationId": "conv-human", "aiEnabled": False}
    out = post_message(api, "conv-human", messageId="user-msg-7")
    assert out["reply"] is None
    assert [e["eventType"] for e in out["events"]] == ["USER_MESSAGE_RECEIVED"]
    [hook] = hooks_for(env[1], out["events"][0]["webhookId"])
    body = json.loads(hook.body)
    assert body["messageId"] == "user-msg-7" and body["isAiEnabled"] is False


def test_inbox_messages_are_sent_blocked_or_noted_by_channel(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    post_message(api, "wa-fresh")
    sent = api.post(
        "/v1/conversations/wa-fresh/inbox-messages", json={"text": "Operator here"}
    ).json()
    assert sent["status"] == "sent"
    assert [e["eventType"] for e in sent["events"]] == ["AGENT_MESSAGE_SENDED"]

    old = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    post_message(api, "wa-stale", createdAt=old)
    blocked = api.post("/v1/conversations/wa-stale/inbox-messages", json={"text": "late"}).json()
    assert blocked["status"] == "blocked"
    [hook] = hooks_for(env[1], blocked["events"][0]["webhookId"])
    assert json.loads(hook.body)["reason"].startswith("whatsapp refuses")

    post_message(api, "api-conv", channel="api")
    noted = api.post("/v1/conversations/api-conv/inbox-messages", json={"text": "a note"}).json()
    assert noted["status"] == "noted"
    assert [e["eventType"] for e in noted["events"]] == ["AGENT_MESSAGE_NOTED"]


def test_group_message_without_mention(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    out = post_message(
        api,
        "group-1",
        channel="zapi",
        group={"id": "g-1", "name": "Team", "mentioned": False},
    )
    assert out["reply"] is None
    [hook] = hooks_for(env[1], out["events"][0]["webhookId"])
    body = json.loads(hook.body)
    assert body["eventType"] == "GROUP_MESSAGE_RECEIVED"
    assert (body["groupId"], body["groupName"]) == ("g-1", "Team")


def test_conversation_of_another_agent_is_a_conflict(api: httpx.Client) -> None:
    post_message(api, "owned")
    r = api.post(
        "/v1/agents/other/messages",
        json={"conversationId": "owned", "channel": "whatsapp", "text": "x"},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def test_inbox_shows_user_info(env: tuple[Server, Receiver, Path], api: httpx.Client) -> None:
    post_message(api, "inbox-1", contact={"id": "u9", "name": "Bia"})
    view = api.get("/v1/inbox/conversations/inbox-1").json()
    assert view["userInfoStatus"] == "ok"
    assert view["userInfo"] == {"plan": "gold", "customerSince": "2021-03-14"}
    assert [m["author"] for m in view["messages"]] == ["user", "agent"]
    assert view["contact"] == {"id": "u9", "name": "Bia"}
    lookup = [r for r in env[1].requests if r.path == "/lookup"][-1]
    assert lookup.headers["x-api-key"] == "crm-key-value"
    assert json.loads(lookup.body)["contact"] == {"id": "u9", "name": "Bia"}


def test_a_retried_message_gets_the_same_answer_and_no_new_events(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    rx = env[1]
    first = post_message(api, "retry-1", messageId="wamid.42")
    again = post_message(api, "retry-1", messageId="wamid.42")
    assert again == first
    hooks_for(rx, first["events"][0]["webhookId"])
    time.sleep(0.3)
    assert (
        len([r for r in rx.requests if json.loads(r.body).get("conversationId") == "retry-1"]) == 1
    )
    view = api.get("/v1/inbox/conversations/retry-1").json()
    assert [m["author"] for m in view["messages"]] == ["user", "agent"]
    other = post_message(api, "retry-1", messageId="wamid.43")  # a new message is new
    assert other["events"][0]["webhookId"] != first["events"][0]["webhookId"]


def test_a_message_id_sent_again_with_another_request_is_an_idempotency_mismatch(
    api: httpx.Client,
) -> None:
    first = post_message(api, "key-1", messageId="wamid.77")
    for change in ({"text": "another text"}, {"channel": "website"}):
        r = api.post(
            "/v1/agents/support/messages",
            json={
                "conversationId": "key-1",
                "channel": "whatsapp",
                "text": "Olá, tudo bem?",
                "messageId": "wamid.77",
                **change,
            },
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "idempotency_mismatch"
        assert "wamid.77" in r.json()["error"]["message"]
        assert first["reply"]["text"] not in r.text  # never the first request's answer
    view = api.get("/v1/inbox/conversations/key-1").json()
    assert len(view["messages"]) == 2  # nothing of the refused requests was stored
