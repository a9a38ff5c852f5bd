"""A page on another site, in Chromium, against the default `make run` (no API
token, loopback): it cannot inject a message or rotate the secret through the
visitor's browser (``fetch`` with ``mode: "no-cors"``, a cross-site form), and
a name rebound to 127.0.0.1 (DNS rebinding) is answered nothing."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver import Receiver
from servers import SECRET, Server

pytestmark = pytest.mark.browser

REQUIRE = os.environ.get("WEBHOOK_PLUGIN_REQUIRE_BROWSER") == "1"
CHROMIUM = os.environ.get("WEBHOOK_PLUGIN_CHROMIUM") or shutil.which("chromium")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the reason is given below
    sync_playwright = None  # type: ignore[assignment]


ATTACK = """<!doctype html><title>cute cats</title>
<form id="f" method="POST" enctype="text/plain" action="{target}/v1/agents/support/messages">
<input name='{{"conversationId": "by-form", "channel": "web", "text": "pwned' value='"}}'>
</form>
<script>
const target = "{target}";
const body = JSON.stringify({{conversationId: "by-fetch", channel: "web", text: "pwned"}});
Promise.allSettled([
  fetch(target + "/v1/agents/support/messages",
        {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}}),
  fetch(target + "/v1/agents/support/webhook/rotate-secret", {{method: "POST", mode: "no-cors"}}),
]).then(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script>
"""


class AttackerSite:
    """A page served on another origin (``evil.example``, mapped to 127.0.0.1)."""

    def __init__(self, target: str) -> None:
        page = ATTACK.format(target=target).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[Server, Receiver]]:
    """`webhook-plugin serve` as `make run` starts it: no token, loopback."""
    if sync_playwright is None or not CHROMIUM:
        reason = "Playwright or Chromium is missing (apt-get install chromium)"
        if REQUIRE:
            pytest.fail(f"browser tests are required: {reason}")
        pytest.skip(reason)
    with Receiver() as rx:
        config = tmp_path / "webhook-plugin.toml"
        config.write_text(
            f'[runtime]\ndatabase = "sqlite:///{tmp_path / "run.db"}"\n'
            '[webhook]\nallow_private_hosts = ["127.0.0.1"]\npoll_interval = 0.1\n'
            f'[[agents]]\nid = "support"\n[agents.webhook]\nurl = "{rx.url}/hook"\n'
            f'signing_secret = "{SECRET}"\n'
        )
        server = Server(config, tmp_path)
        try:
            yield server, rx
        finally:
            server.stop()


def test_a_page_on_another_site_cannot_drive_the_api(make_run: tuple[Server, Receiver]) -> None:
    server, rx = make_run
    site = AttackerSite(server.url)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--host-resolver-rules=MAP evil.example 127.0.0.1"]
            )
            try:
                page = browser.new_page()
                page.goto(f"http://evil.example:{site.port}/")
                page.wait_for_url(f"{server.url}/**", timeout=10_000)  # the form went
                assert page.locator("body").inner_text().count("cross_origin") == 1
                # DNS rebinding: the attacker's name, now pointing at the server
                rebound = f"http://evil.example:{server.port}"
                for path in ("/v1/inbox/conversations/by-fetch", "/agents", "/inbox"):
                    response = page.goto(rebound + path)
                    assert response is not None and response.status == 400, path
                    assert "support" not in page.content()
            finally:
                browser.close()
    finally:
        site.server.shutdown()
        site.server.server_close()
    with httpx.Client(base_url=server.url, timeout=10) as api:
        for conversation in ("by-fetch", "by-form"):
            r = api.get(f"/v1/inbox/conversations/{conversation}")
            assert r.status_code == 404, r.text  # nothing was injected
        r = api.post(
            "/v1/agents/support/messages",
            json={"conversationId": "real", "channel": "web", "text": "hello"},
        )
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while not rx.requests:
        assert time.monotonic() < deadline, "the real message's webhook never came"
        time.sleep(0.05)
    hook = rx.requests[0]
    # still signed with the secret the owner set: the page did not rotate it
    payload = Webhook(SECRET).verify(hook.body, dict(hook.headers))
    assert payload["conversationId"] == "real" and json.loads(hook.body)["userMessage"] == "hello"
