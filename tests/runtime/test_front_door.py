"""What a browser can reach (``CONTRACT.md`` section 4): a ``Host`` allow-list
against DNS rebinding, no state change from another origin, JSON bodies only on
``/v1``. In-process, on the real app; the browser itself is in
``console/test_console_browser.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console_client import BEARER, console_config, csrf_of
from webhook_plugin.exceptions import ConfigError
from webhook_plugin.runtime.app import create_app
from webhook_plugin.runtime.config import parse_config

pytestmark = pytest.mark.anyio

MESSAGE = {"conversationId": "c1", "channel": "web", "text": "hi"}


async def app_for(tmp: Path, *, token: str | None = None, hosts: tuple[str, ...] = ()) -> Any:
    config = console_config(tmp, token=token)
    runtime = msgspec.structs.replace(config.runtime, allowed_hosts=list(hosts))
    return create_app(msgspec.structs.replace(config, runtime=runtime))


def client(app: Any, base_url: str = "http://127.0.0.1:8000") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.mark.parametrize("token", [None, "front-door-token-0123456789"])
async def test_a_rebound_host_is_answered_nothing(tmp_path: Path, token: str | None) -> None:
    app = await app_for(tmp_path, token=token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with app.running(), client(app) as c:
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
            for path in ("/v1/inbox/conversations/c1", "/agents", "/healthz", "/"):
                r = await c.get(path, headers={**headers, "Host": host})
                assert r.status_code == 400, (host, path, r.text)
                assert "c1" not in r.text
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "app.localhost"):
            r = await c.get("/healthz", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)


async def test_allowed_hosts_are_served_too(tmp_path: Path) -> None:
    app = await app_for(tmp_path, hosts=("chat.example.com", "*.example.org"))
    async with app.running(), client(app) as c:
        for host, status in (
            ("chat.example.com", 200),
            ("CHAT.example.com:443", 200),
            ("eu.example.org", 200),
            ("example.com", 400),
            ("chat.example.com.evil", 400),
        ):
            r = await c.get("/healthz", headers={"Host": host})
            assert r.status_code == status, host


@pytest.mark.parametrize("token", [None, "front-door-token-0123456789"])
async def test_a_state_change_from_another_origin_is_403_token_or_not(
    tmp_path: Path, token: str | None
) -> None:
    app = await app_for(tmp_path, token=token)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with app.running(), client(app) as c:
        for foreign in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": "http://127.0.0.1:3000"},  # another local server's page
            {"Origin": "http://localhost:8000"},  # another name is another origin
            {"Sec-Fetch-Site": "cross-site"},
        ):
            r = await c.post("/v1/agents/bot/messages", json=MESSAGE, headers={**auth, **foreign})
            assert r.status_code == 403, (foreign, r.text)
            assert r.json()["error"]["code"] == "cross_origin"
            r = await c.post("/v1/agents/bot/webhook/rotate-secret", headers={**auth, **foreign})
            assert r.status_code == 403, foreign
            r = await c.post("/login", data={"token": "x"}, headers=foreign)
            assert r.status_code == 403, foreign
        r = await c.get("/v1/inbox/conversations/c1", headers={**auth, "Origin": "http://x.y"})
        assert r.status_code == 404  # reading is the Host check's and the token's to refuse
        same = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
        r = await c.post("/v1/agents/bot/messages", json=MESSAGE, headers={**auth, **same})
        assert r.status_code == 200, r.text
        r = await c.post("/v1/agents/bot/messages", json={**MESSAGE, "text": "two"}, headers=auth)
        assert r.status_code == 200, r.text  # no Origin: not a browser


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_v1_body_that_is_not_json_is_415(tmp_path: Path, ctype: str | None) -> None:
    app = await app_for(tmp_path)
    async with app.running(), client(app) as c:
        headers = {"Content-Type": ctype} if ctype else {}
        r = await c.post(
            "/v1/agents/bot/messages", content=msgspec.json.encode(MESSAGE), headers=headers
        )
        assert r.status_code == 415, r.text
        assert r.json()["error"]["code"] == "unsupported_media_type"
        r = await c.post(
            "/v1/agents/bot/messages",
            content=msgspec.json.encode(MESSAGE),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 200, r.text
        assert (await c.get("/v1/inbox/conversations/c1")).json()["messages"][0]["text"] == "hi"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(origin=st.text(max_size=80), host=st.text(max_size=40))
def test_any_origin_and_host_get_an_answer_never_an_error(origin: str, host: str) -> None:
    import anyio

    from webhook_plugin.runtime.http.security import BrowserGuard

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> int:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/x",
            "scheme": "http",
            "headers": [
                (b"host", host.encode("utf-8", "surrogateescape")),
                (b"origin", origin.encode("utf-8", "surrogateescape")),
            ],
        }
        await BrowserGuard(app)(scope, receive, send)
        return int(sent[0]["status"])

    status = anyio.run(main)
    assert status in (204, 400, 403)
    if status == 204:  # only a loopback Host, and that very origin
        name = urlsplit(origin).hostname or ""
        assert name in ("localhost", "127.0.0.1", "::1") or name.endswith(".localhost")


@pytest.mark.parametrize(
    "hosts", [["http://chat.example.com"], ["chat.example.com:8000"], ["a*.example.com"], [""]]
)
def test_allowed_hosts_are_host_names_only(hosts: list[str]) -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        parse_config({"runtime": {"allowed_hosts": hosts}})


async def test_the_api_token_is_still_asked(tmp_path: Path) -> None:
    app = create_app(console_config(tmp_path))
    async with app.running(), client(app) as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/agents/bot/messages", json=MESSAGE)
        assert r.status_code == 401
        r = await c.post("/v1/agents/bot/messages", json=MESSAGE, headers=BEARER)
        assert r.status_code == 200


# guessing costs time and leaves a trace -------------------------------------------------


def test_a_bucket_lets_a_few_wrong_tries_through_then_one_every_few_seconds() -> None:
    from webhook_plugin.runtime.http.security import Guesses

    now = [100.0]
    g = Guesses(burst=3, per=5.0, clock=lambda: now[0], max_clients=2)
    for _ in range(3):
        assert g.retry_after("a") is None
        g.failed("a")
    assert g.retry_after("a") == 5
    now[0] += 2.0
    assert g.retry_after("a") == 3
    now[0] += 3.0
    assert g.retry_after("a") is None  # one more try earned
    g.failed("a")
    assert g.retry_after("a") == 5
    assert g.retry_after("b") is None  # another address is not concerned
    g.failed("b")
    g.failed("c")  # over max_clients: the least recent is forgotten
    assert len(g._buckets) == 2 and "a" not in g._buckets


async def test_wrong_tokens_are_answered_429_with_retry_after_and_logged(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    token = "front-door-token-0123456789"
    app = await app_for(tmp_path, token=token)
    guesser = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
    async with (
        app.running(),
        httpx.AsyncClient(transport=guesser, base_url="http://127.0.0.1") as c,
        client(app) as other,
    ):
        with capture_logs() as logs:
            for n in range(10):
                r = await c.get(
                    "/v1/inbox/conversations/c1", headers={"Authorization": f"Bearer {n}"}
                )
                assert r.status_code == 401
            r = await c.get("/v1/inbox/conversations/c1", headers={"Authorization": "Bearer x"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_attempts"
            assert 1 <= int(r.headers["retry-after"]) <= 6
            right = {"Authorization": f"Bearer {token}"}
            r = await c.get("/v1/inbox/conversations/c1", headers=right)
            assert r.status_code == 429  # even the right token: no oracle
            r = await other.get("/v1/inbox/conversations/c1", headers=right)
            assert r.status_code == 404  # another address is served
            csrf = csrf_of((await other.get("/login")).text)
            for n in range(10):  # wrong sign-ins count like wrong tokens
                r = await other.post("/login", data={"csrf": csrf, "token": f"wrong {n}"})
                assert r.status_code == 401
            page = await other.post("/login", data={"csrf": csrf, "token": token})
            assert page.status_code == 429 and "try again in" in page.text
            assert 1 <= int(page.headers["retry-after"]) <= 6
    refusals = [e for e in logs if e["event"] == "auth.refused"]
    assert [e["reason"] for e in refusals[:12]] == ["wrong_token"] * 10 + [
        "too_many_wrong_tokens"
    ] * 2
    assert all(e["client"] == "203.0.113.7" for e in refusals[:12])
    assert token not in str(logs)


#: the fail2ban filter the README gives, with <HOST> as fail2ban expands it
FAIL2BAN = (
    r'^\{"client": "<HOST>", "path": "(?:[^"\\]|\\.)*",'
    r' "reason": "(?:wrong|too_many)_[a-z_]+", "event": "auth\.refused"'
)


def test_the_documented_fail2ban_filter_matches_what_serve_logs(tmp_path: Path) -> None:
    import re

    from servers import Server

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"failregex = {FAIL2BAN}" in readme
    config = tmp_path / "c.toml"
    config.write_text(
        f'[runtime]\ndatabase = "sqlite:///{tmp_path / "g.db"}"\n'
        'api_token = "front-door-token-0123456789"\n'
    )
    server = Server(config, tmp_path, "--log-format", "json")
    try:
        for path in ("x", "x%22y", "x%5C%22y"):  # a quote in the path cannot dodge the rule
            httpx.get(
                f"{server.url}/v1/inbox/conversations/{path}",
                headers={"Authorization": f"Bearer {path}"},
            )
        httpx.get(f"{server.url}/v1/inbox/conversations/x")  # no token: not a guess
    finally:
        logged = server.stop()
    pattern = re.compile(FAIL2BAN.replace("<HOST>", r"(?P<host>[^\"]+)"))
    hosts = [m["host"] for line in logged.splitlines() if (m := pattern.match(line))]
    assert hosts == ["127.0.0.1"] * 3, logged[-2000:]


# health tells the truth about writes ------------------------------------------------------


async def test_a_write_locked_database_is_unhealthy_and_a_message_is_503_not_a_hang(
    tmp_path: Path,
) -> None:
    """Another process holds the SQLite file's write lock for a long time."""
    import sqlite3
    import time

    app = await app_for(tmp_path)
    async with app.running(), client(app) as c:
        assert (await c.get("/healthz")).status_code == 200
        other = sqlite3.connect(tmp_path / "console.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the other process's long write
        try:
            await anyio.sleep(1.1)  # the database is asked at most once a second
            started = time.monotonic()
            health = await c.get("/healthz")
            assert health.status_code == 503, health.text
            assert "cannot be written" in health.json()["reason"]
            assert time.monotonic() - started < 4
            started = time.monotonic()
            r = await c.post("/v1/agents/bot/messages", json={**MESSAGE, "messageId": "m-1"})
            took = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "storage_unavailable"
            assert r.headers["retry-after"] == "5"
            assert took < 8, f"the message waited {took:.1f} s"
        finally:
            other.execute("ROLLBACK")
            other.close()
        await anyio.sleep(1.1)
        assert (await c.get("/healthz")).status_code == 200
        r = await c.post("/v1/agents/bot/messages", json={**MESSAGE, "messageId": "m-1"})
        assert r.status_code == 200, r.text  # the retry, once the lock is gone


async def test_a_host_without_a_port_is_the_default_port(tmp_path: Path) -> None:
    """Another server on the same name (a page on localhost:3000) is another
    origin, though Host names no port (serve on port 80, or behind a proxy)."""
    app = await app_for(tmp_path, hosts=("chat.example.com",))
    async with app.running(), client(app) as c:
        for host, origin, status in (
            ("localhost", "http://localhost:3000", 403),
            ("localhost", "http://localhost", 200),
            ("localhost", "http://localhost:80", 200),
            ("localhost", "https://localhost", 200),  # a TLS proxy in front
            ("localhost", "https://localhost:8443", 403),
            # a proxy that rewrites Host: the browser's origin is a listed name
            ("127.0.0.1:8000", "https://chat.example.com", 200),
            ("127.0.0.1:8000", "https://evil.example.com", 403),
        ):
            r = await c.post(
                "/v1/agents/bot/messages",
                json={**MESSAGE, "text": f"{host} {origin}"},
                headers={"Host": host, "Origin": origin},
            )
            assert r.status_code == status, (host, origin, r.text)
