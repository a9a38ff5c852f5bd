"""Helpers for the web console's in-process tests: the real app, driven by httpx."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from webhook_plugin.runtime.app import create_app
from webhook_plugin.runtime.config import RuntimeConfig, RuntimeSection, WebhookSection

TOKEN = "console-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def console_config(tmp: Path, *, token: str | None = TOKEN) -> RuntimeConfig:
    return RuntimeConfig(
        runtime=RuntimeSection(
            database=f"sqlite:///{tmp / 'console.db'}", load_entry_points=False, api_token=token
        ),
        webhook=WebhookSection(
            allow_private_hosts=("127.0.0.1",),
            timeout=1.0,
            retry_schedule=(0, 0.05),
            jitter=0.0,
            poll_interval=0.05,
            shutdown_grace=0.5,
            user_info_timeout=0.5,
        ),
    )


@asynccontextmanager
async def running_console(
    tmp: Path, *, token: str | None = TOKEN, base_url: str = "http://localhost"
) -> AsyncIterator[httpx.AsyncClient]:
    """The real runtime app in-process, its engine running; the client keeps cookies."""
    app: Any = create_app(console_config(tmp, token=token))
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match[1]


async def sign_in(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    page = await client.get("/login")
    assert page.status_code == 200, page.text
    return await client.post(
        "/login", data={"csrf": csrf_of(page.text), "token": token, "next": "/agents"}
    )


async def post_form(
    client: httpx.AsyncClient, page_path: str, action: str, data: dict[str, Any]
) -> httpx.Response:
    """Open ``page_path`` and post ``data`` to ``action`` with the page's CSRF token."""
    page = await client.get(page_path)
    assert page.status_code == 200, page.text
    return await client.post(action, data={"csrf": csrf_of(page.text), **data})


class PageAudit(HTMLParser):
    """What a page would load or run: scripts, inline handlers, inline styles, URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.script_srcs: list[str] = []
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"{tag} {name}={value}")
            if name == "style":
                self.styles.append(tag)
            if name in ("href", "src", "action", "formaction", "srcset", "poster", "data"):
                self.urls.append(value or "")
        if tag == "style":
            self.styles.append("<style>")
        if tag == "script":
            if values.get("src"):
                self.script_srcs.append(values["src"] or "")
            else:
                self.inline_scripts += 1


def audit(html: str) -> PageAudit:
    parser = PageAudit()
    parser.feed(html)
    return parser
