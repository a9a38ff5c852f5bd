"""Sign-in and sign-out: the API token, compared in constant time, opens a session."""

from __future__ import annotations

import hmac

import anyio
from starlette.requests import Request
from starlette.responses import Response

from ..http.security import Guesses, client_of, refused
from ._render import field, local_target, redirect, render
from ._session import read_form, session_of

__all__ = ["login", "login_page", "logout"]


async def login_page(request: Request) -> Response:
    target = local_target(request.query_params.get("next"), "/agents")
    if not request.app.state.api_token or session_of(request).signed_in:
        return redirect(target)
    return render(request, "login.html", next=target, error=None)


async def login(request: Request) -> Response:
    fields = await read_form(request)
    target = local_target(field(fields, "next"), "/agents")
    expected: str | None = request.app.state.api_token
    if not expected:
        return redirect(target)
    guesses: Guesses = request.app.state.guesses
    client = client_of(request.scope)
    wait = guesses.retry_after(client)
    if wait is not None:
        refused(client, request.url.path, "too_many_wrong_sign_ins")
        return render(
            request,
            "login.html",
            status=429,
            headers={"retry-after": str(wait)},
            next=target,
            error=f"Too many wrong API tokens from this address: try again in {wait} seconds.",
        )
    if hmac.compare_digest(field(fields, "token").encode(), expected.encode()):
        session_of(request).sign_in()
        return redirect(target)
    guesses.failed(client)
    refused(client, request.url.path, "wrong_sign_in")
    await anyio.sleep(0.2)  # a guesser gets five tries a second per connection, not thousands
    return render(
        request,
        "login.html",
        status=401,
        next=target,
        error="That API token is not right. It is the api_token of the server's config file.",
    )


async def logout(request: Request) -> Response:
    await read_form(request)
    session_of(request).sign_out()
    return redirect("/login" if request.app.state.api_token else "/agents")
