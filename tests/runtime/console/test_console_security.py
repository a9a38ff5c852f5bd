"""The console's web security, in-process: sign-in, the session cookie, CSRF on
every state-changing form, the CSP and frame headers, and text that stays text."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from console_client import (
    BEARER,
    TOKEN,
    audit,
    csrf_of,
    post_form,
    running_console,
    sign_in,
)
from receiver import Receiver, Recorded, Reply
from webhook_plugin.runtime.console import Console
from webhook_plugin.runtime.console._pages import console_routes
from webhook_plugin.runtime.console._session import COOKIE_NAME, CSP

pytestmark = pytest.mark.anyio

PAGES = [
    "/agents",
    "/agents/support/settings/webhook",
    "/agents/support/deliveries",
    "/agents/support/deliveries/1",
    "/inbox",
    "/inbox/conv-1",
    "/api",
]
XSS_TEXT = "<script>window.__xss=1;alert(1)</script>"
XSS_NAME = '<img src=x onerror="alert(2)">'
XSS_INFO = '"><svg onload=alert(3)>'


async def _seed(client: httpx.AsyncClient, url: str = "http://127.0.0.1:9/hook") -> None:
    r = await client.put(
        "/v1/agents/support/webhook",
        json={"url": url, "header": "X-Hook: hook-secret-value"},
        headers=BEARER,
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/agents/support/messages",
        json={"conversationId": "conv-1", "channel": "web", "text": "hello"},
        headers=BEARER,
    )
    assert r.status_code == 200, r.text


def _cookie_header(response: httpx.Response) -> str:
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert headers, "no session cookie was set"
    return headers[-1]


async def test_every_page_needs_a_session_and_the_api_token_signs_in(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await _seed(client)
        for path in ["/", *PAGES]:
            r = await client.get(path)
            assert r.status_code == 303, (path, r.status_code)
            assert r.headers["location"].startswith("/login"), path
        assert (await client.get("/agents/support/deliveries")).headers["location"] == (
            "/login?next=%2Fagents%2Fsupport%2Fdeliveries"
        )

        wrong = await sign_in(client, token="not-the-token")
        assert wrong.status_code == 401
        assert "not right" in wrong.text and 'role="alert"' in wrong.text
        assert (await client.get("/agents")).status_code == 303  # still signed out

        right = await sign_in(client)
        assert right.status_code == 303 and right.headers["location"] == "/agents"
        cookie = _cookie_header(right)
        assert cookie.startswith(f"{COOKIE_NAME}=")
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain HTTP here: a Secure cookie would never come back
        for path in PAGES:
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)
            assert "Sign out" in r.text


async def test_the_session_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    async with running_console(tmp_path, base_url="https://localhost") as client:
        cookie = _cookie_header(await sign_in(client))
        assert "secure" in {f.strip().lower() for f in cookie.split(";")}


async def test_a_redirect_after_sign_in_stays_on_this_site(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
            client.cookies.clear()
            page = await client.get("/login", params={"next": target})
            r = await client.post(
                "/login", data={"csrf": csrf_of(page.text), "token": TOKEN, "next": target}
            )
            assert r.headers["location"] == "/agents", target


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await sign_in(client)
        stolen = client.cookies[COOKIE_NAME]
        r = await post_form(client, "/agents", "/logout", {})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert "max-age=0" in _cookie_header(r).lower()
        assert (await client.get("/agents")).status_code == 303
        client.cookies.set(COOKIE_NAME, stolen)
        assert (await client.get("/agents")).status_code == 303


async def test_a_forged_or_tampered_session_is_refused(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await sign_in(client)
        good = client.cookies[COOKIE_NAME]
        payload, _, signature = good.partition(".")
        forged = base64.urlsafe_b64encode(json.dumps({"auth": True}).encode()).decode().rstrip("=")
        for value in (f"{forged}.{signature}", f"{payload}x.{signature}", "garbage", payload):
            client.cookies.clear()
            client.cookies.set(COOKIE_NAME, value)
            assert (await client.get("/agents")).status_code == 303, value


async def test_every_state_changing_form_refuses_a_request_without_its_csrf_token(
    tmp_path: Path,
) -> None:
    post_paths = [
        r.path.replace("{agent_id}", "support")
        .replace("{conversation_id}", "conv-1")
        .replace("{delivery_id}", "1")
        for r in console_routes()
        if "POST" in (getattr(r, "methods", None) or ())
    ]
    assert len(post_paths) >= 8
    async with running_console(tmp_path) as client:
        await _seed(client)
        await sign_in(client)
        good = csrf_of((await client.get("/agents")).text)
        for path in post_paths:
            for data in ({}, {"csrf": ""}, {"csrf": "x" * 43}):
                r = await client.post(path, data={**data, "url": "http://127.0.0.1:1/x"})
                assert r.status_code == 403, (path, data, r.status_code)
                assert "Form refused" in r.text
            # a JSON body is not a form, even with the right token in it
            r = await client.post(path, json={"csrf": good})
            assert r.status_code == 403, path
        # nothing changed: not the settings, not the session
        settings = (await client.get("/v1/agents/support/webhook", headers=BEARER)).json()
        assert settings["url"] == "http://127.0.0.1:9/hook"
        assert (await client.get("/agents")).status_code == 200


async def test_a_token_from_another_session_does_not_pass(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await _seed(client)
        await sign_in(client)
        theirs = csrf_of((await client.get("/agents")).text)
        client.cookies.clear()
        await sign_in(client)
        r = await client.post("/inbox/conv-1/ai", data={"csrf": theirs, "ai_enabled": "off"})
        assert r.status_code == 403


async def test_every_page_forbids_inline_script_other_origins_and_framing(
    tmp_path: Path,
) -> None:
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert "http" not in CSP and "*" not in CSP
    assert "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
    async with running_console(tmp_path) as client:
        await _seed(client)
        login = await client.get("/login")
        await sign_in(client)
        pages = [login] + [await client.get(p) for p in PAGES]
        pages.append(await client.get("/nope-not-a-page"))  # an API 404: not ours
        for r in pages[:-1]:
            assert r.headers["content-security-policy"] == CSP, r.url
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["cache-control"] == "no-store"
            found = audit(r.text)
            assert found.inline_scripts == 0, r.url
            assert found.handlers == [] and found.styles == [], r.url
            assert found.script_srcs and all(s.startswith("/static/") for s in found.script_srcs)
            for url in found.urls:  # nothing from another origin
                assert url.startswith(("/", "#", "?")) and not url.startswith("//"), (r.url, url)
        assert pages[-1].headers["content-type"] == "application/json"


async def test_static_files_are_ours_and_cacheable(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        for name, kind in (("console.css", "text/css"), ("console.js", "javascript")):
            r = await client.get(f"/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
            assert r.headers["cache-control"] == "public, max-age=600"
            assert "http://" not in r.text and "https://" not in r.text  # no other origin
        assert (await client.get("/static/../app.py")).status_code == 404


async def test_user_receiver_and_user_info_strings_are_text(tmp_path: Path) -> None:
    def crm(r: Recorded) -> Reply:
        return Reply(200, body=json.dumps({"note": XSS_INFO, XSS_NAME: "key too"}).encode())

    with Receiver(crm) as rx:
        async with running_console(tmp_path) as client:
            r = await client.put(
                "/v1/agents/support/webhook",
                json={"userInfoUrl": f"{rx.url}/lookup"},
                headers=BEARER,
            )
            assert r.status_code == 200, r.text
            r = await client.post(
                "/v1/agents/support/messages",
                json={
                    "conversationId": XSS_NAME,
                    "channel": "web",
                    "text": XSS_TEXT,
                    "contact": {"name": XSS_NAME, "email": XSS_INFO},
                },
                headers=BEARER,
            )
            assert r.status_code == 200, r.text
            await sign_in(client)
            inbox = await client.get("/inbox")
            page = await client.get(f"/inbox/{quote(XSS_NAME, safe='')}")
            assert page.status_code == 200, page.text
            assert "key too" in page.text  # the user-info answer is shown
            for html in (inbox.text, page.text):
                for raw in (XSS_TEXT, XSS_NAME, XSS_INFO):
                    assert raw not in html
                found = audit(html)
                assert found.inline_scripts == 0 and found.handlers == []
            assert "&lt;script&gt;window.__xss=1;alert(1)&lt;/script&gt;" in page.text
            assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page.text
            assert "&#34;&gt;&lt;svg onload=alert(3)&gt;" in page.text  # the user-info value


async def test_without_an_api_token_nobody_signs_in_but_forms_still_need_csrf(
    tmp_path: Path,
) -> None:
    async with running_console(tmp_path, token=None) as client:
        await _seed(client)
        r = await client.get("/agents")
        assert r.status_code == 200 and "Sign out" not in r.text
        assert (await client.get("/login")).headers["location"] == "/agents"
        r = await client.post("/inbox/conv-1/ai", data={"ai_enabled": "off"})
        assert r.status_code == 403
        r = await post_form(client, "/inbox/conv-1", "/inbox/conv-1/ai", {"ai_enabled": "off"})
        assert r.status_code == 303
        view = (await client.get("/v1/inbox/conversations/conv-1")).json()
        assert view["aiEnabled"] is False


async def test_the_api_keeps_its_bearer_token_and_json_errors(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await sign_in(client)  # a console session is no API token
        r = await client.get("/v1/agents/support/webhook")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await client.get("/v1/nothing-here", headers=BEARER)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert (await client.get("/healthz")).json() == {"status": "ok"}


def test_the_console_owns_only_its_paths() -> None:
    owns = Console.owns
    assert owns("/") and owns("/agents") and owns("/agents/x/deliveries") and owns("/inbox/c")
    assert owns("/openapi.json") and owns("/static/console.css") and owns("/login")
    for path in ("/v1/agents/x/webhook", "/metrics", "/healthz", "/agentsx", "/inboxes"):
        assert not owns(path), path


async def test_the_session_cookie_tells_nothing_about_the_token(tmp_path: Path) -> None:
    """An anonymous cookie was once signed with HMAC(token, a constant): a guesser
    could test tokens offline. Now it is signed with a random key."""
    import hashlib
    import hmac

    async with running_console(tmp_path) as client:
        await client.get("/login")  # no credentials: a session with a CSRF token
        cookie = client.cookies[COOKIE_NAME]
    payload, _, signature = cookie.partition(".")
    derived = hmac.new(TOKEN.encode(), b"webhook-plugin console session v1", hashlib.sha256)
    guess = hmac.new(derived.digest(), payload.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(guess).decode().rstrip("=") != signature


async def test_sessions_are_shared_by_servers_on_one_database_and_end_with_the_token(
    tmp_path: Path,
) -> None:
    async with running_console(tmp_path) as first:
        await sign_in(first)
        cookie = first.cookies[COOKIE_NAME]
    async with running_console(tmp_path) as second:  # another server, same database
        second.cookies.set(COOKIE_NAME, cookie)
        assert (await second.get("/agents")).status_code == 200
    other = tmp_path / "other"
    other.mkdir()
    async with running_console(other) as stranger:  # same token, another database
        stranger.cookies.set(COOKIE_NAME, cookie)
        assert (await stranger.get("/agents")).status_code == 303
    new_token = "another-token-0123456789"
    async with running_console(tmp_path, token=new_token) as changed:  # the token changed
        changed.cookies.set(COOKIE_NAME, cookie)
        assert (await changed.get("/agents")).status_code == 303
    async with running_console(tmp_path) as back:  # and back: a new key again
        back.cookies.set(COOKIE_NAME, cookie)
        assert (await back.get("/agents")).status_code == 303


def test_servers_starting_together_share_one_key(make_store: object) -> None:
    import threading

    from webhook_plugin.runtime.chat.store import SQLChatStore

    stores = [make_store() for _ in range(4)]  # type: ignore[operator]
    for store in stores:
        store.open()
    try:
        SQLChatStore(stores[0]).open()
        keys: list[bytes] = []
        threads = [
            threading.Thread(target=lambda s=s: keys.append(SQLChatStore(s).session_key("t")))
            for s in stores
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(keys) == 4 and len(set(keys)) == 1
        assert SQLChatStore(stores[0]).session_key("t") == keys[0]
        assert SQLChatStore(stores[0]).session_key("u") != keys[0]
    finally:
        for store in stores:
            store.close()
