"""What every console page shares: the Jinja2 templates and their filters,
:func:`render`, the 303 redirect, and small request and database helpers.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import anyio
import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ..._version import __version__
from .. import timestamps
from ..api.io import path_id
from ..chat.middleware import pipeline_from
from ._health import duration
from ._session import session_of

__all__ = [
    "HERE",
    "agent_label",
    "db",
    "field",
    "local_target",
    "render_off_loop",
    "path_agent_id",
    "redirect",
    "render",
    "seg",
    "templates",
    "when",
]

HERE: Final = Path(__file__).parent


def when(ts: float | str | None, zone: bool = True) -> str:
    """A time as operators read it: ``2026-11-25 12:00:05 UTC``."""
    if ts is None:
        return "—"
    if isinstance(ts, str):
        try:
            return timestamps.human(datetime.fromisoformat(ts).timestamp(), zone=zone)
        except ValueError:
            return ts
    return timestamps.human(ts, zone=zone)


def _iso(ts: float | str | None) -> str:
    if ts is None:
        return ""
    return ts if isinstance(ts, str) else timestamps.iso(ts)


def seg(value: str) -> str:
    """One URL path segment."""
    return quote(str(value), safe="")


def _as_text(value: Any) -> str:
    """A user-info value shown as text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every string from users, receivers and user-info endpoints
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, iso=_iso, seg=seg, as_text=_as_text, duration=duration)
    env.globals.update(version=__version__, static=lambda name: f"/static/{name}?v={__version__}")
    return env


templates = Jinja2Templates(env=_environment())


def render(
    request: Request,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    session = session_of(request)
    base = {
        "csrf": session.csrf,
        "sign_in_needed": bool(request.app.state.api_token),
        "flash": session.pop_flash(),
        "section": "",
    }
    return templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status, headers=headers
    )


async def render_off_loop(request: Request, template: str, **context: Any) -> Response:
    """:func:`render` in a worker thread: for pages that may be large (a page of
    long messages), so that building them never holds up the event loop."""
    return await anyio.to_thread.run_sync(lambda: render(request, template, **context))


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def local_target(target: str | None, default: str) -> str:
    """``target`` when it is a path on this site, else ``default`` (no open redirect)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and not any(ord(c) < 0x21 or c == "\\" for c in target)
    ):
        return target
    return default


def field(fields: dict[str, list[str]], name: str) -> str:
    return fields.get(name, [""])[0]


async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def path_agent_id(request: Request) -> str:
    return path_id(request, "agent_id", "agent id")


async def agent_label(request: Request, agent_id: str) -> tuple[str, bool]:
    """The agent's name (or id) and whether it exists."""
    row = await db(pipeline_from(request).store.get_agent, agent_id)
    if row is None:
        return agent_id, False
    return str(row.get("name") or agent_id), True
