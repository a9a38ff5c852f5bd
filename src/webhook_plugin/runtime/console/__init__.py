"""The web console (``CONTRACT.md`` section 5): pages for agent owners and operators.

The agents, each agent's WebHook tab and delivery log, the Inbox, sign-in,
and ``/openapi.json`` with a page that shows it, served at ``/`` of the
runtime's app. :class:`Console` is pure ASGI: it answers the console's paths
and passes every other request (``/v1``, ``/metrics``, ``/healthz``) on,
untouched, to the app it wraps. The pages sign in with the API token into a
session of their own (:mod:`._session`); the ``/v1`` bearer token check is
not theirs.
"""

from __future__ import annotations

from typing import Final

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from ..http.security import BodyLimitMiddleware, Guesses
from ._openapi import openapi_document
from ._pages import console_routes, exception_handlers
from ._session import ConsoleGuard

__all__ = ["CONSOLE_PATHS", "Console", "openapi_document"]

#: the paths the console answers (each, and everything under it)
CONSOLE_PATHS: Final = (
    "/login",
    "/logout",
    "/agents",
    "/inbox",
    "/inbox-events",
    "/api",
    "/openapi.json",
    "/static",
)
#: a console form is small; the 1 MiB of the API would only invite abuse
MAX_FORM_BYTES: Final = 256 * 1024


class Console:
    """Serve the web console; pass everything else to ``app``.

    :param app: the API app (its token check, body limit and routes).
    :param api_token: the config's ``api_token``: when set, the pages need a
        session signed in with it.
    """

    def __init__(
        self, app: ASGIApp, api_token: str | None = None, guesses: Guesses | None = None
    ) -> None:
        self.app = app
        pages = Starlette(routes=console_routes(), exception_handlers=exception_handlers)
        pages.state.api_token = api_token
        pages.state.guesses = guesses or Guesses()
        self.pages: ASGIApp = ConsoleGuard(BodyLimitMiddleware(pages, MAX_FORM_BYTES), api_token)

    _SUBPATHS = tuple(prefix + "/" for prefix in CONSOLE_PATHS)

    @staticmethod
    def owns(path: str) -> bool:
        return path == "/" or path in CONSOLE_PATHS or path.startswith(Console._SUBPATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.owns(scope["path"]):
            await self.pages(scope, receive, send)
        else:
            await self.app(scope, receive, send)
