"""The web console in a real browser: Playwright driving Debian's Chromium against
``webhook-plugin serve``, each page used by role and label as a person would.

Every page runs with route interception that records each request the browser
makes (none may leave the server's origin), a dialog watcher (none may open)
and a console watcher (no CSP violation or script error). Skipped, with the
reason, without Playwright or Chromium; ``WEBHOOK_PLUGIN_REQUIRE_BROWSER=1``
(set by CI) makes that a failure. ``UPDATE_SCREENSHOTS=1`` rewrites the
README's screenshots in ``docs/img``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from helpers import ROOT, closed_port_url
from receiver import Receiver, Recorded, Reply
from servers import Server

pytestmark = pytest.mark.browser

TOKEN = "browser-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUIRE = os.environ.get("WEBHOOK_PLUGIN_REQUIRE_BROWSER") == "1"
CHROMIUM = os.environ.get("WEBHOOK_PLUGIN_CHROMIUM") or shutil.which("chromium")
SCREENSHOTS = ROOT / "docs" / "img"
XSS_TEXT = "<script>window.__xss = 1; alert('text')</script>"
XSS_NAME = "<img src=x onerror=\"window.__xss = 2; alert('name')\">"
XSS_INFO = '"><svg onload="window.__xss = 3; alert(\'info\')">'
USER_INFO_TIMEOUT = 1.0

try:
    from playwright.sync_api import Browser, expect, sync_playwright
except ImportError:  # the reason is given by the browser fixture
    sync_playwright = None  # type: ignore[assignment]


def _unavailable() -> str | None:
    if sync_playwright is None:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM:
        return (
            "no Chromium to drive: apt-get install chromium (Debian), or point"
            " WEBHOOK_PLUGIN_CHROMIUM at a Chromium binary"
        )
    return None


class Hooks:
    """The receiver behind every agent: webhooks, user info (fast, slow), failures."""

    def __init__(self) -> None:
        self.failing = True

    def __call__(self, r: Recorded) -> Reply:
        if r.path == "/lookup":
            contact = json.loads(r.body).get("contact", {})
            info: dict[str, object] = {"plan": "gold", "customerSince": "2021-03-14"}
            if contact.get("name") == XSS_NAME:
                info["note"] = XSS_INFO
            else:
                info.update(openTickets=1, lifetimeValue="R$ 1.240,00")
            return Reply(200, body=json.dumps(info).encode())
        if r.path == "/slow-lookup":
            return Reply(200, body=b'{"plan": "late"}', delay=USER_INFO_TIMEOUT + 2)
        if r.path == "/fail" and self.failing:
            return Reply(500, body=b"temporarily broken")
        return Reply(204, body=b"")


def _config(tmp: Path, hooks_url: str) -> Path:
    path = tmp / "console.toml"
    path.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin"]
database = "sqlite:///{tmp / "console.db"}"
api_token = "{TOKEN}"

[webhook]
allow_private_hosts = ["127.0.0.1"]
retry_schedule = [0, 0.1]
jitter = 0.0
poll_interval = 0.1
timeout = 2.0
user_info_timeout = {USER_INFO_TIMEOUT}

[[agents]]
id = "support"
name = "Support Bot"

[agents.webhook]
url = "{hooks_url}/hook"
header = "Authorization: Bearer receiver-secret-value"
user_info_url = "{hooks_url}/lookup"

[[agents]]
id = "slow-crm"
name = "Slow CRM Bot"

[agents.webhook]
user_info_url = "{hooks_url}/slow-lookup"

[[agents]]
id = "flaky"
name = "Flaky Bot"

[agents.webhook]
url = "{hooks_url}/fail"
"""
    )
    return path


def _message(api: httpx.Client, agent: str, conversation: str, channel: str, text: str,
             contact: dict[str, str] | None = None, created_at: str | None = None) -> None:  # fmt: skip
    body: dict[str, Any] = {"conversationId": conversation, "channel": channel, "text": text}
    if contact:
        body["contact"] = contact
    if created_at:
        body["createdAt"] = created_at
    r = api.post(f"/v1/agents/{agent}/messages", json=body)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Receiver, Hooks]]:
    reason = _unavailable()
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"browser tests are required (WEBHOOK_PLUGIN_REQUIRE_BROWSER=1): {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("console")
    hooks = Hooks()
    with Receiver(hooks) as rx:
        server = Server(_config(tmp, rx.url), tmp)
        try:
            old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as api:
                ana = {
                    "name": "Ana Souza",
                    "email": "ana@example.com",
                    "phoneNumber": "+5511999990000",
                }
                _message(
                    api, "support", "c-ana", "whatsapp", "Olá, preciso de ajuda com meu pedido", ana
                )
                _message(
                    api, "support", "c-wa", "whatsapp", "are you there?", {"name": "Bia Late"}, old
                )
                _message(
                    api, "support", "c-api", "api", "status of order 42?", {"name": "Caio Api"}
                )
                _message(api, "slow-crm", "c-slow", "web", "hello", {"name": "Dora Slow"})
                _message(api, "support", "c-xss", "web", XSS_TEXT, {"name": XSS_NAME})
                _message(api, "flaky", "c-flaky", "web", "this one fails first", {"name": "Eva"})
            yield server, rx, hooks
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser(env: tuple[Server, Receiver, Hooks]) -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page with everything it requested, every dialog and every console error."""

    def __init__(self, browser: Browser, origin: str) -> None:
        self.origin = origin
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1000, "height": 800})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        if url == self.origin or url.startswith(self.origin + "/"):
            route.continue_()
        else:
            route.abort()

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        # a status other than 2xx for a page itself is not an error of the page
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def check(self) -> None:
        outside = [u for u in self.requests if not u.startswith(self.origin + "/")]
        assert outside == [], f"requests left the origin: {outside}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.errors == [], f"console errors (CSP violations?): {self.errors}"
        assert self.page.evaluate("window.__xss") is None


def _open(browser: Browser, server: Server, *, signed_in: bool = True) -> Watched:
    watched = Watched(browser, server.url)
    if signed_in:
        page = watched.page
        page.goto(f"{server.url}/login")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Agents", level=1)).to_be_visible()
    return watched


@pytest.fixture
def watched(env: tuple[Server, Receiver, Hooks], browser: Browser) -> Iterator[Watched]:
    w = _open(browser, env[0])
    try:
        yield w
        w.check()
    finally:
        w.context.close()


@pytest.fixture
def anonymous(env: tuple[Server, Receiver, Hooks], browser: Browser) -> Iterator[Watched]:
    w = _open(browser, env[0], signed_in=False)
    try:
        yield w
        w.check()
    finally:
        w.context.close()


def _wait(rx: Receiver, predicate: Any, timeout: float = 10.0) -> Recorded:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in list(rx.requests):
            if predicate(r):
                return r
        time.sleep(0.05)
    raise AssertionError("the receiver never got the expected request")


def _event(r: Recorded) -> str:
    try:
        return str(json.loads(r.body).get("eventType"))
    except ValueError:
        return ""


# -- the tests ---------------------------------------------------------------------------------


def test_sign_in_with_the_api_token_and_sign_out(
    env: tuple[Server, Receiver, Hooks], anonymous: Watched
) -> None:
    server, page = env[0], anonymous.page
    page.goto(f"{server.url}/")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not right")
    expect(page.get_by_label("API token")).to_be_visible()
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_label("API token").press("Enter")
    expect(page.get_by_role("heading", name="Agents", level=1)).to_be_visible()
    expect(page.get_by_role("link", name="Support Bot")).to_be_visible()
    cookie = next(c for c in anonymous.context.cookies() if c["name"].startswith("webhook_plugin"))
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(f"{server.url}/inbox")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Finbox$"))


def test_save_the_webhook_tab_and_the_next_webhook_carries_the_new_header(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server, rx, _ = env
    page = watched.page
    page.get_by_role("link", name="Support Bot").click()
    expect(page.get_by_role("heading", name="WebHook", level=1)).to_be_visible()
    user_info = page.get_by_role("group", name="Fetch External User Information")
    outbound = page.get_by_role("group", name="Outbound WebHook")
    expect(user_info.get_by_label("URL")).to_have_value(f"{rx.url}/lookup")
    expect(outbound.get_by_label("Header (optional)")).to_have_value("Authorization: ****")
    expect(outbound.get_by_role("checkbox", name="AGENT_USER_MESSAGE", exact=True)).to_be_checked()
    outbound.get_by_label("Header (optional)").fill("X-Console: typed-in-the-browser")
    outbound.get_by_role("checkbox", name="GROUP_MESSAGE_RECEIVED").uncheck()
    page.get_by_role("button", name="Save").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text("Saved")
    expect(status).to_contain_text("reachable")
    test = _wait(rx, lambda r: _event(r) == "WEBHOOK_TEST" and "x-console" in r.headers)
    assert test.headers["x-console"] == "typed-in-the-browser"

    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        _message(api, "support", "c-header", "web", "does the header arrive?")
    hook = _wait(
        rx, lambda r: _event(r) == "AGENT_USER_MESSAGE" and b"does the header arrive" in r.body
    )
    assert hook.headers["x-console"] == "typed-in-the-browser"
    assert "authorization" not in hook.headers
    page.reload()
    expect(outbound.get_by_label("Header (optional)")).to_have_value("X-Console: ****")
    expect(outbound.get_by_role("checkbox", name="GROUP_MESSAGE_RECEIVED")).not_to_be_checked()
    assert "typed-in-the-browser" not in page.content()


def test_an_invalid_url_is_refused_next_to_its_field_and_an_unreachable_one_reported(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    page = watched.page
    page.get_by_label("Agent id").fill("scratch-bot")
    page.get_by_role("button", name="Open its WebHook tab").click()
    expect(page.get_by_role("heading", name="WebHook", level=1)).to_be_visible()
    url = page.get_by_role("group", name="Outbound WebHook").get_by_label("URL")
    url.fill("ftp://files.example.com/drop")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("not saved")
    expect(url).to_have_value("ftp://files.example.com/drop")
    expect(url).to_have_attribute("aria-invalid", "true")
    expect(url).to_have_accessible_description(re.compile("http:// or https://"))

    closed = closed_port_url()
    url.fill(closed)
    page.get_by_role("button", name="Save").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text("Saved")
    expect(status).to_contain_text("unreachable")
    expect(status).to_contain_text("connect")
    expect(url).to_have_value(closed)


def test_rotate_shows_the_new_secret_once_and_webhooks_verify_with_it(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server, rx, _ = env
    page = watched.page
    page.goto(f"{server.url}/agents/support/settings/webhook")
    assert "whsec_" not in page.get_by_role("main").inner_text().replace("whsec_ secret", "")
    # it asks to confirm, and the old secret signs too for 24 h unless chosen otherwise
    expect(page.get_by_label("The old secret also signs for")).to_have_value("86400")
    page.get_by_label("Yes, make a new signing secret").check()
    page.get_by_role("button", name="Rotate signing secret").click()
    expect(page.get_by_role("status")).to_contain_text("not shown again")
    expect(page.get_by_role("status")).to_contain_text("The old secret signs too until")
    secret = page.locator("#new-secret").inner_text().strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]{40,}", secret)
    expect(page.get_by_text("Python (")).to_be_visible()
    expect(page.get_by_text("Node (")).to_be_visible()
    expect(page.get_by_text("wh.verify(request_body, request_headers)")).to_be_visible()

    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        _message(api, "support", "c-rotate", "web", "signed with the new secret")
    hook = _wait(rx, lambda r: b"signed with the new secret" in r.body)
    Webhook(secret).verify(hook.body, hook.headers)
    page.reload()  # sends the form again: it does not rotate twice, nor show the secret
    expect(page.get_by_role("status")).to_contain_text("already rotated")
    expect(page.locator("#new-secret")).to_have_count(0)
    page.goto(f"{server.url}/agents/support/settings/webhook")
    assert secret not in page.content()
    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        _message(api, "support", "c-rotate", "web", "still the same secret")
    later = _wait(rx, lambda r: b"still the same secret" in r.body)
    Webhook(secret).verify(later.body, later.headers)


def test_the_inbox_shows_fetched_user_info_and_a_slow_endpoint_never_holds_the_page(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    page = watched.page
    main_nav = page.get_by_role("navigation", name="Main")
    main_nav.get_by_role("link", name="Inbox").click()
    expect(page.get_by_role("heading", name="Inbox", level=1)).to_be_visible()
    page.get_by_role("link", name="Ana Souza").click()
    expect(page.get_by_role("heading", name="Ana Souza", level=1)).to_be_visible()
    info = page.get_by_role("region", name="User information")
    expect(info).to_contain_text("gold")
    expect(info).to_contain_text("2021-03-14")
    expect(page.get_by_role("region", name="Contact")).to_contain_text("ana@example.com")
    expect(page.get_by_text("Olá, preciso de ajuda com meu pedido")).to_be_visible()

    main_nav.get_by_role("link", name="Inbox").click()
    started = time.monotonic()
    page.get_by_role("link", name="Dora Slow").click()
    expect(page.get_by_role("heading", name="Dora Slow", level=1)).to_be_visible()
    took = time.monotonic() - started
    expect(page.get_by_role("region", name="User information")).to_contain_text("Timeout")
    assert took < USER_INFO_TIMEOUT + 1.5, took


def test_the_operators_message_on_a_blocked_and_a_noted_channel(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server, rx, _ = env
    page = watched.page
    for conversation, verdict, event in (
        ("Bia Late", "Blocked", "AGENT_MESSAGE_BLOCKED"),
        ("Caio Api", "Noted", "AGENT_MESSAGE_NOTED"),
    ):
        page.goto(f"{server.url}/inbox")
        page.get_by_role("link", name=conversation).click()
        text = f"operator to {conversation}"
        page.get_by_label("Message").fill(text)
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("status")).to_contain_text(f"{verdict}:")
        item = page.get_by_role("listitem").filter(has_text=text)
        expect(item).to_contain_text(verdict)
        expect(item.locator(".reason")).to_contain_text(
            "24 h" if verdict == "Blocked" else "cannot carry"
        )
        _wait(rx, lambda r, t=text, e=event: _event(r) == e and t.encode() in r.body)
    # the AI switch
    switch = page.get_by_role("switch", name="AI enabled")
    expect(switch).to_be_checked()
    switch.click()
    expect(page.get_by_role("switch", name="AI enabled")).not_to_be_checked()
    expect(page.get_by_role("status")).to_contain_text("AI disabled")


def test_redeliver_from_the_delivery_log(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server, rx, hooks = env
    page = watched.page
    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        deadline = time.monotonic() + 10
        while not api.get("/v1/agents/flaky/webhook/deliveries?status=failed").json():
            assert time.monotonic() < deadline, "the flaky delivery never failed"
            time.sleep(0.1)
    page.goto(f"{server.url}/agents/flaky/deliveries")
    expect(page.get_by_role("heading", name="Delivery log", level=1)).to_be_visible()
    health = page.get_by_role("region", name="Endpoint health")
    expect(health.get_by_role("img")).to_be_visible()
    expect(health).to_contain_text("0.0 % succeeded")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    row = page.get_by_role("row").filter(has_text="AGENT_USER_MESSAGE")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("500")
    row.get_by_role("link").click()  # its attempts
    expect(page.get_by_role("region", name="Attempts")).to_contain_text("temporarily broken")
    webhook_id = page.locator("dd code").first.inner_text()

    hooks.failing = False
    before = len(rx.requests)
    page.get_by_role("button", name="Redeliver").click()
    expect(page.get_by_role("status")).to_contain_text("queued again")
    again = _wait(rx, lambda r: r.path == "/fail" and rx.requests.index(r) >= before)
    assert again.headers["webhook-id"] == webhook_id
    page.goto(f"{server.url}/agents/flaky/deliveries?status=succeeded")
    expect(page.get_by_role("row").filter(has_text="AGENT_USER_MESSAGE")).to_have_count(1)
    page.get_by_role("button", name="Redeliver all failed").click()
    expect(page.get_by_role("status")).to_contain_text("No failed deliveries")


def test_the_webhook_tab_by_keyboard_alone(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server, rx, _ = env
    page = watched.page
    page.goto(f"{server.url}/agents/keyboard-bot/settings/webhook")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")  # skip the navigation

    def tab_to(target_id: str, limit: int = 30) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == target_id:
                return
        raise AssertionError(f"Tab never reached #{target_id}")

    tab_to("webhook-url")
    page.keyboard.type(f"{rx.url}/keyboard")
    page.keyboard.press("Tab")
    page.keyboard.type("X-Keys: pressed")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "USER_MESSAGE_RECEIVED"
    page.keyboard.press("Space")  # uncheck it
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Save":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("reachable")
    outbound = page.get_by_role("group", name="Outbound WebHook")
    expect(outbound.get_by_role("checkbox", name="USER_MESSAGE_RECEIVED")).not_to_be_checked()
    test = _wait(rx, lambda r: r.path == "/keyboard")
    assert test.headers["x-keys"] == "pressed"


def test_script_in_a_message_a_contact_name_and_user_info_stays_text(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server = env[0]
    page = watched.page
    page.goto(f"{server.url}/inbox")
    expect(page.get_by_role("link", name=XSS_NAME)).to_be_visible()
    page.get_by_role("link", name=XSS_NAME).click()
    expect(page.get_by_role("heading", name=XSS_NAME, level=1)).to_be_visible()
    expect(page.get_by_text(XSS_TEXT, exact=True)).to_be_visible()
    expect(page.get_by_role("region", name="User information")).to_contain_text(XSS_INFO)
    assert page.locator("img, svg:not(.strip)").count() == 0
    assert page.evaluate("window.__xss") is None
    # the checks of the fixture follow: no dialog, no script error, nothing fetched elsewhere


def test_no_request_leaves_the_origin_on_any_page_and_the_screenshots(
    env: tuple[Server, Receiver, Hooks], watched: Watched, tmp_path: Path
) -> None:
    server = env[0]
    page = watched.page
    for path in ("/agents", "/agents/support/settings/webhook", "/agents/support/deliveries",
                 "/inbox", "/inbox/c-ana", "/api", "/openapi.json"):  # fmt: skip
        page.goto(f"{server.url}{path}")
    requested = {u.partition("?")[0] for u in watched.requests}
    for asset in ("/static/console.css", "/static/console.js", "/static/favicon.svg"):
        assert f"{server.url}{asset}" in requested, asset

    # the README's pictures: the WebHook tab and the Inbox with its user information
    out = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1000, "height": 800})
    page.goto(f"{server.url}/agents/support/settings/webhook")
    page.screenshot(path=str(out / "webhook-tab.png"), full_page=True)
    page.goto(f"{server.url}/inbox/c-ana")
    page.screenshot(path=str(out / "inbox.png"))
    for name in ("webhook-tab.png", "inbox.png"):
        if out == SCREENSHOTS and shutil.which("pngquant"):  # small files for the README
            subprocess.run(
                ["pngquant", "--force", "--quality=80-95", "--strip", "--output",
                 str(out / name), str(out / name)],
                check=True,
            )  # fmt: skip
        assert (out / name).stat().st_size < 400_000


#: every page of the console, as an owner and an operator reach them
PAGES = (
    "/agents",
    "/agents/support/settings/webhook",
    "/agents/support/deliveries",
    "/inbox",
    "/inbox/c-ana",
    "/api",
)


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_fits_its_width_and_axe_finds_nothing_serious(
    env: tuple[Server, Receiver, Hooks], watched: Watched, width: int, tmp_path: Path
) -> None:
    """No horizontal scrolling on a laptop or a phone, and no serious or critical
    accessibility violation (axe-core), on every page: the sign-in page, each
    page an owner or operator uses, and one delivery's detail."""
    from axe_playwright_python.sync_playwright import Axe

    server = env[0]
    page = watched.page
    page.set_viewport_size({"width": width, "height": 900})
    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        [latest] = api.get("/v1/agents/support/webhook/deliveries?limit=1").json()
    out = SCREENSHOTS / "pages" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    axe = Axe()
    problems = []
    for path in (*PAGES, f"/agents/support/deliveries/{latest['id']}"):
        page.goto(f"{server.url}{path}")
        for details in page.locator("details").all():  # what a click would show
            details.evaluate("d => { d.open = true; }")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        if overflow > 0:
            problems.append(f"{path} at {width} px: {overflow} px of horizontal overflow")
        results = axe.run(page)
        for v in results.response["violations"]:
            if v["impact"] in ("serious", "critical"):
                nodes = [n["target"] for n in v["nodes"]][:3]
                problems.append(f"{path} at {width} px: {v['id']} ({v['impact']}) {nodes}")
        name = path.strip("/").replace("/", "-") or "index"
        if name.startswith("agents-support-deliveries-"):
            name = "agents-support-delivery"
        shot = out / f"{name}-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        if out != tmp_path and shutil.which("pngquant"):  # small files for the docs
            subprocess.run(
                ["pngquant", "--force", "--quality=70-90", "--strip", "--output",
                 str(shot), str(shot)],
                check=True,
            )  # fmt: skip
    assert problems == [], "\n".join(problems)


def test_the_inbox_for_operators_new_messages_filters_and_the_blocked_warning(
    env: tuple[Server, Receiver, Hooks], watched: Watched
) -> None:
    server = env[0]
    page = watched.page
    page.goto(f"{server.url}/inbox/c-ana")
    page.get_by_label("Message").fill("half-typed reply")
    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        _message(api, "support", "c-ana", "whatsapp", "a new question, live", {"name": "Ana Souza"})
    # it appears without a reload, and what the operator was typing stays
    expect(page.get_by_text("a new question, live")).to_be_visible(timeout=10_000)
    expect(page.get_by_label("Message")).to_have_value("half-typed reply")
    expect(page.locator(".message.from-user").last).to_contain_text("a new question, live")
    expect(
        page.locator(".message.from-agent").last
    ).to_be_visible()  # the AI's answer, styled apart
    # a channel that will block the message says so before Send
    page.goto(f"{server.url}/inbox")
    page.get_by_role("link", name="Bia Late").click()
    expect(page.locator("#message-hint")).to_contain_text("Warning: the channel will block it")
    # the Inbox's filters
    page.goto(f"{server.url}/inbox")
    page.get_by_label("Show").select_option("blocked")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("link", name="Bia Late")).to_be_visible()
    expect(page.get_by_role("link", name="Ana Souza")).to_have_count(0)
