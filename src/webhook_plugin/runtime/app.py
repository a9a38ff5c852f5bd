"""The reference chat runtime: a Starlette app with the webhook plugin enabled."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.types import ASGIApp

from .api.io import exception_handlers
from .api.routes import routes
from .chat.middleware import WebhookMiddleware
from .config import RuntimeConfig
from .console import Console
from .http.security import BodyLimitMiddleware, BrowserGuard, Guesses, TokenAuthMiddleware
from .worker.process import WorkerProcess

__all__ = ["create_app"]

MAX_BODY_BYTES = 1024 * 1024


def create_app(
    config: RuntimeConfig | None = None,
    *,
    workers: bool = True,
    worker_process: WorkerProcess | None = None,
) -> ASGIApp:
    """Build the runtime's ASGI app.

    The layers, outermost first: the webhook middleware (owns the plugins and
    the delivery engine), what a browser may reach (``Host``, ``Origin``, JSON
    bodies), the web console (answers its own pages, with its own sign-in, and
    passes every other path on), the API token check (when ``api_token`` is
    set), the 1 MiB body limit, then Starlette's routes.

    :param workers: ``False`` serves the API without delivery workers
        (``webhook-plugin serve --no-workers``).
    :param worker_process: deliver from this child process rather than in
        this one (``webhook-plugin serve`` on two cores or more).
    """
    config = config or RuntimeConfig()
    app: ASGIApp = Starlette(routes=routes, exception_handlers=exception_handlers)
    app = BodyLimitMiddleware(app, MAX_BODY_BYTES)
    guesses = Guesses()  # wrong tokens and wrong sign-ins count alike
    if config.runtime.api_token:
        app = TokenAuthMiddleware(app, config.runtime.api_token, guesses=guesses)
    app = Console(app, config.runtime.api_token, guesses)
    app = BrowserGuard(app, config.runtime.allowed_hosts)
    return WebhookMiddleware(app, config, workers=workers, worker_process=worker_process)
