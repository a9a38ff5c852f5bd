"""The reference runtime as users run it: `webhook-plugin serve` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import POSTGRES_URL, REQUIRE_POSTGRES, closed_port_url, postgres_available
from receiver import Receiver, Recorded, Reply

TOKEN = "test-token-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLI = [sys.executable, "-m", "webhook_plugin.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, receiver_url: str, database: str | None = None, **runtime: str) -> Path:
    runtime_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in runtime.items())
    path = tmp / "webhook-plugin.toml"
    database = database or f"sqlite:///{tmp / 'runtime.db'}"
    path.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin"]
database = "{database}"
api_token = "{TOKEN}"
{runtime_lines}

[webhook]
allow_private_hosts = ["127.0.0.1"]
retry_schedule = [0, 0.1, 0.1]
poll_interval = 0.1
timeout = 3.0

[[agents]]
id = "support"
name = "Support Bot"
organization_id = "org_9"

[agents.webhook]
url = "{receiver_url}/hook"
header = "Authorization: Bearer receiver-secret-value"
signing_secret = "{SECRET}"
user_info_url = "{receiver_url}/lookup"
user_info_header = "X-Api-Key: crm-key-value"
"""
    )
    return path


class Server:
    def __init__(self, config: Path, cwd: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*CLI, "serve", "--config", str(config), "--port", str(self.port), *extra],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def crm(r: Recorded) -> Reply:
    if r.path == "/lookup":
        return Reply(200, body=b'{"plan": "gold", "customerSince": "2021-03-14"}')
    return Reply(204, body=b"")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
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


def postgres_database(schema: str) -> str:
    """A database URL for a fresh schema, or skip (fail in CI) without a server."""
    reason = postgres_available()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    return f"{POSTGRES_URL}?schema={schema}"


@pytest.fixture
def api(env: tuple[Server, Receiver, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env[0].url, headers=AUTH, timeout=10) as client:
        yield client


def hooks_for(rx: Receiver, webhook_id: str, timeout: float = 10) -> list[Recorded]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in rx.requests if r.headers.get("webhook-id") == webhook_id]
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"webhook {webhook_id} never arrived")


def post_message(api: httpx.Client, conversation: str, **body: object) -> dict:
    payload = {
        "conversationId": conversation,
        "channel": "whatsapp",
        "text": "Olá, tudo bem?",
        **body,
    }
    response = api.post("/v1/agents/support/messages", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


# -- auth and bad input ------------------------------------------------------------------------


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
        ("POST", "/v1/agents/support/messages", b'{"conversationId": 5}', 400, "invalid_body"),
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
        ("PATCH", "/v1/conversations/nope", b'{"aiEnabled": "yes"}', 400, "invalid_body"),
        ("POST", "/v1/conversations/nope/inbox-messages", b'{"text": "hi"}', 404, "not_found"),
        ("GET", "/v1/inbox/conversations/nope", None, 404, "not_found"),
        ("GET", "/v1/agents/nobody/webhook", None, 404, "not_found"),
        ("GET", "/v1/agents/support/webhook/deliveries?status=lost", None, 400, "invalid_query"),
        ("GET", "/v1/agents/support/webhook/deliveries/999999", None, 404, "not_found"),
        ("POST", "/v1/agents/support/webhook/deliveries/abc/redeliver", None, 404, "not_found"),
        ("PUT", "/v1/agents/support/webhook", b'{"url": "ftp://x"}', 400, "invalid_settings"),
        (
            "PUT",
            "/v1/agents/support/webhook",
            b'{"header": "X-A: b\\r\\nX-B: c"}',
            400,
            "invalid_settings",
        ),
        ("PUT", "/v1/agents/support/webhook", b'{"events": ["NOPE"]}', 400, "invalid_settings"),
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
    api: httpx.Client, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    r = api.request(method, path, content=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]


def test_oversized_bodies_and_texts_are_413(api: httpx.Client) -> None:
    r = api.post("/v1/agents/support/messages", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    big = {"conversationId": "big", "channel": "api", "text": "é" * 40_000}
    r = api.post("/v1/agents/support/messages", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "text_too_large"


def test_settings_errors_keep_what_was_saved(api: httpx.Client) -> None:
    before = api.get("/v1/agents/support/webhook").json()
    assert api.put("/v1/agents/support/webhook", json={"url": "not a url"}).status_code == 400
    assert api.get("/v1/agents/support/webhook").json() == before


# -- the chat stages and their events ----------------------------------------------------------------


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
        api, "group-1", channel="zapi", group={"id": "g-1", "name": "Team", "mentioned": False}
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


# -- settings and the delivery log -------------------------------------------------------------------


def test_settings_are_masked_and_the_secret_never_shown(api: httpx.Client) -> None:
    settings = api.get("/v1/agents/support/webhook").json()
    assert settings["header"] == "Authorization: ****"
    assert settings["userInfoHeader"] == "X-Api-Key: ****"
    text = json.dumps(settings)
    assert "receiver-secret-value" not in text and "whsec_" not in text


def test_put_replaces_settings_and_a_masked_header_round_trips(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    rx = env[1]
    current = api.get("/v1/agents/new-agent/webhook")
    assert current.status_code == 404
    put = api.put(
        "/v1/agents/new-agent/webhook",
        json={
            "url": rx.url + "/hook",
            "header": "X-Token: abc123",
            "events": ["AGENT_USER_MESSAGE"],
        },
    )
    assert put.status_code == 200 and put.json()["header"] == "X-Token: ****"
    # GET + PUT back, as a settings form would: the stored header value is kept
    again = api.put(
        "/v1/agents/new-agent/webhook", json={k: put.json()[k] for k in ("url", "header", "events")}
    )
    assert again.status_code == 200
    r = api.post(
        "/v1/agents/new-agent/messages",
        json={"conversationId": "na-1", "channel": "web", "text": "hi"},
    )
    [hook] = hooks_for(rx, r.json()["events"][0]["webhookId"])
    assert hook.headers["x-token"] == "abc123"


def test_saving_settings_with_test_true_reports_the_test_request(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    rx = env[1]
    r = api.put(
        "/v1/agents/tester/webhook?test=true",
        json={"url": rx.url + "/tested", "header": "X-Token: tester-token"},
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["test"]["status"] == "ok" and answer["test"]["statusCode"] == 204
    assert answer["header"] == "X-Token: ****" and "tester-token" not in r.text
    [got] = [q for q in rx.requests if q.path == "/tested"]
    assert got.headers["x-token"] == "tester-token"
    assert json.loads(got.body)["eventType"] == "WEBHOOK_TEST"
    assert api.get("/v1/agents/tester/webhook/deliveries").json() == []  # never queued
    # an unreachable URL is saved all the same (as ChatVolt does), and said to be so
    closed = closed_port_url()
    r = api.put("/v1/agents/tester/webhook?test=true", json={"url": closed})
    assert r.json()["url"] == closed
    assert r.json()["test"]["status"] == "unreachable"
    assert r.json()["test"]["error"].startswith("connect_error:")
    # without a URL there is nothing to test
    assert api.put("/v1/agents/tester/webhook?test=true", json={}).json()["test"] is None
    assert "test" not in api.put("/v1/agents/tester/webhook", json={}).json()


def test_metrics_need_the_token_and_count_the_events(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    assert httpx.get(f"{env[0].url}/metrics").status_code == 401
    post_message(api, "metrics-1")
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    queued = [
        line
        for line in r.text.splitlines()
        if line.startswith("webhook_plugin_events_queued_total")
    ]
    assert sum(float(line.rpartition(" ")[2]) for line in queued) >= 1
    assert "# TYPE webhook_plugin_attempt_duration_seconds histogram" in r.text
    assert "webhook_plugin_pending_deliveries " in r.text


def test_rotate_secret_then_later_events_use_it(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    api.put("/v1/agents/rotator/webhook", json={"url": env[1].url + "/hook"})
    r = api.post("/v1/agents/rotator/webhook/rotate-secret")
    secret = r.json()["signingSecret"]
    assert secret.startswith("whsec_")
    assert r.json()["previousSecretExpiresAt"] is None  # by default the old one is gone
    # on request, the old secret keeps signing (a second signature) for a while
    r = api.post("/v1/agents/rotator/webhook/rotate-secret?graceSeconds=86400")
    until = datetime.fromisoformat(r.json()["previousSecretExpiresAt"])
    assert abs((until - datetime.now(UTC)).total_seconds() - 86400) < 60
    secret = r.json()["signingSecret"]
    assert "whsec_" not in api.get("/v1/agents/rotator/webhook").text
    out = api.post(
        "/v1/agents/rotator/messages",
        json={"conversationId": "rot-1", "channel": "web", "text": "hi"},
    )
    [hook] = hooks_for(env[1], out.json()["events"][0]["webhookId"])
    Webhook(secret).verify(hook.body, hook.headers)


def test_delivery_log_and_redelivery(env: tuple[Server, Receiver, Path], api: httpx.Client) -> None:
    rx = env[1]
    out = post_message(api, "log-1")
    webhook_id = out["events"][0]["webhookId"]
    hooks_for(rx, webhook_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = api.get(
            "/v1/agents/support/webhook/deliveries", params={"status": "succeeded"}
        ).json()
        row = next((d for d in rows if d["webhookId"] == webhook_id), None)
        if row:
            break
        time.sleep(0.05)
    assert row is not None
    assert set(row) == {
        "id",
        "webhookId",
        "eventType",
        "status",
        "attempts",
        "lastStatusCode",
        "lastError",
        "createdAt",
        "nextAttemptAt",
    }
    assert row["attempts"] == 1 and row["lastStatusCode"] == 204 and row["nextAttemptAt"] is None
    r = api.post(f"/v1/agents/support/webhook/deliveries/{row['id']}/redeliver")
    assert r.status_code == 200 and r.json()["webhookId"] == webhook_id
    deadline = time.monotonic() + 10
    while len([x for x in rx.requests if x.headers.get("webhook-id") == webhook_id]) < 2:
        assert time.monotonic() < deadline, "redelivery never arrived"
        time.sleep(0.02)
    detail = api.get(f"/v1/agents/support/webhook/deliveries/{row['id']}").json()
    assert [a["statusCode"] for a in detail["attemptLog"]] == [204, 204]


def test_cli_deliveries_and_redeliver(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    _server, rx, tmp = env
    post_message(api, "cli-1")
    config = str(tmp / "webhook-plugin.toml")
    out = subprocess.run(
        [*CLI, "deliveries", "--config", config, "--agent", "support"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "AGENT", "EVENT", "STATUS"]
    assert any("AGENT_USER_MESSAGE" in line for line in lines[1:])
    as_json = json.loads(
        subprocess.run(
            [*CLI, "deliveries", "--config", config, "--json", "--limit", "1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    [latest] = as_json
    red = subprocess.run(
        [*CLI, "redeliver", str(latest["id"]), "--config", config],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"delivery {latest['id']}" in red.stdout
    hooks = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hooks = [r for r in rx.requests if r.headers.get("webhook-id") == latest["webhookId"]]
        if len(hooks) >= 2:
            break
        time.sleep(0.05)
    assert hooks is not None and len(hooks) >= 2


# -- lifecycle, config and the other commands -------------------------------------------------------


def test_saved_settings_win_over_the_config_and_survive_restart(tmp_path: Path) -> None:
    with Receiver() as rx, Receiver() as other:
        config = write_config(tmp_path, rx.url)
        server = Server(config, tmp_path)
        try:
            with httpx.Client(base_url=server.url, headers=AUTH) as api:
                assert (
                    api.put(
                        "/v1/agents/support/webhook", json={"url": other.url + "/moved"}
                    ).status_code
                    == 200
                )
        finally:
            server.stop()
        server = Server(config, tmp_path)
        try:
            with httpx.Client(base_url=server.url, headers=AUTH) as api:
                assert api.get("/v1/agents/support/webhook").json()["url"] == other.url + "/moved"
                out = post_message(api, "after-restart")
                other.wait_for(1)
                assert rx.requests == []
                assert out["events"]
        finally:
            server.stop()


def test_serve_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "api_token" in r.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[webhook]\ntimeout = 'fast'\n", "Expected `float`, got `str` - at `webhook.timeout`"),
        ("[webhook]\ntimeout = -1\n", "webhook.timeout"),
        ("[webhok]\n", "unknown field `webhok`"),
        ("[runtime]\napi_token = ''\n", "runtime.api_token"),
        (
            "[[agents]]\nid = 'a'\n[agents.webhook]\nheader = \"X-A: b\\nc\"\n",
            "agents[0].webhook.header",
        ),
        ("[[agents]]\nid = 'a'\n[agents.webhook]\nevents = ['SENT']\n", "unknown event type"),
        ("[[agents]]\nid = 'a'\n[[agents]]\nid = 'a'\n", "appears twice"),
        ("[runtime]\ndatabase = 'mysql://x'\n", "sqlite:///FILE or postgresql://"),
        ("not toml at all =\n", "not valid TOML"),
    ],
)
def test_config_errors_say_where_and_what(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    r = subprocess.run(
        [*CLI, "serve", "--config", str(path), "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[-1500:]


def test_schema_command_prints_every_payload_schema() -> None:
    r = subprocess.run([*CLI, "schema"], capture_output=True, text=True, check=True)
    schemas = json.loads(r.stdout)
    assert len(schemas) == 6 and "GROUP_MESSAGE_RECEIVED" in schemas


@pytest.mark.slow
def test_demo_shows_all_six_events_with_valid_signatures(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=90, env={**os.environ}
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all 6 event types arrived, every signature valid." in r.stdout
    assert "INVALID" not in r.stdout
    assert r.stdout.count("signature valid") >= 6
    assert list(tmp_path.iterdir()) == []  # the demo leaves nothing behind


def test_worker_needs_postgresql(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[runtime]\ndatabase = "sqlite:///{tmp_path / "x.db"}"\n')
    r = subprocess.run(
        [*CLI, "worker", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "PostgreSQL" in r.stderr


def test_cli_on_a_missing_database_says_so(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "deliveries"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "no database at webhook-plugin.db" in r.stderr
    assert list(tmp_path.iterdir()) == []  # and does not create one


def test_json_logs_on_request(tmp_path: Path) -> None:
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path, "--log-format", "json")
        with httpx.Client(base_url=server.url, headers=AUTH) as api:
            post_message(api, "json-logs")
            rx.wait_for(1)
        log = server.stop()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"engine.started", "runtime.started"} <= names
    assert all("level" in e and "timestamp" in e for e in events)


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
