"""The console's pages (``CONTRACT.md`` section 5): the route table and the error pages.

Every page is rendered on the server and works with JavaScript off: forms
post, the handler acts through the same Python APIs as the ``/v1`` routes
(and their validation), then redirects to a page that says what happened.
The one exception is *Rotate signing secret*, whose answer is the page with
the new secret: a secret must not travel in a cookie or a URL.

The handlers live by job: :mod:`._signin`, :mod:`._agents` (the agents and
the WebHook tab), :mod:`._log` (the delivery log), :mod:`._inbox` and
:mod:`._api_page`; what they share is in :mod:`._render`.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...exceptions import NotFound, StorageError
from ..api.io import ApiError
from ._agents import (
    agents,
    index,
    open_agent,
    rotate_secret,
    send_example,
    webhook_save,
    webhook_tab,
)
from ._api_page import api_page, openapi_json
from ._inbox import conversation, conversation_events, inbox, send_message, set_ai
from ._log import deliveries, delivery, recover, redeliver, redeliver_failed
from ._render import HERE, render
from ._session import FormRefused
from ._signin import login, login_page, logout

__all__ = ["console_routes", "exception_handlers"]


def _error_page(status: int, title: str, message: str) -> Any:
    async def handler(request: Request, exc: Exception) -> Response:
        text = message or str(exc)
        return render(request, "error.html", status=status, title=title, message=text)

    return handler


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return render(
        request, "error.html", status=exc.status, title="Not possible", message=exc.message
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not found", 405: "Not allowed"}.get(exc.status_code, "Error")
    return render(
        request, "error.html", status=exc.status_code, title=title, message=str(exc.detail)
    )


exception_handlers: dict[Any, Any] = {
    NotFound: _error_page(404, "Not found", ""),
    FormRefused: _error_page(
        403,
        "Form refused",
        "This form was not accepted: it expired (the server restarted, or you signed in"
        " again meanwhile) or it was not sent from this site. Go back, reload the page and"
        " try again.",
    ),
    StorageError: _error_page(
        503, "Database unavailable", "The database is unavailable; try again shortly."
    ),
    ApiError: _api_error,
    HTTPException: _http_error,
}


def console_routes() -> list[Route | Mount]:
    agent = "/agents/{agent_id}"
    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/agents", agents, methods=["GET"]),
        Route("/agents/open", open_agent, methods=["GET"]),
        Route(f"{agent}/settings/webhook", webhook_tab, methods=["GET"]),
        Route(f"{agent}/settings/webhook", webhook_save, methods=["POST"]),
        Route(f"{agent}/settings/webhook/rotate-secret", rotate_secret, methods=["POST"]),
        Route(f"{agent}/settings/webhook/example", send_example, methods=["POST"]),
        Route(f"{agent}/deliveries", deliveries, methods=["GET"]),
        Route(f"{agent}/deliveries/redeliver-failed", redeliver_failed, methods=["POST"]),
        Route(f"{agent}/deliveries/recover", recover, methods=["POST"]),
        Route(f"{agent}/deliveries/{{delivery_id}}", delivery, methods=["GET"]),
        Route(f"{agent}/deliveries/{{delivery_id}}/redeliver", redeliver, methods=["POST"]),
        Route("/inbox", inbox, methods=["GET"]),
        Route("/inbox-events/{conversation_id:path}", conversation_events, methods=["GET"]),
        Route("/inbox/{conversation_id:path}", conversation, methods=["GET"]),
        Route("/inbox/{conversation_id:path}/messages", send_message, methods=["POST"]),
        Route("/inbox/{conversation_id:path}/ai", set_ai, methods=["POST"]),
        Route("/api", api_page, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
