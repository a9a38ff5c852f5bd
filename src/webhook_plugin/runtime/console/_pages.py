"""The console's pages (``CONTRACT.md`` section 5): Starlette routes, Jinja2 templates.

Every page is rendered on the server and works with JavaScript off: forms
post, the handler acts through the same Python APIs as the ``/v1`` routes
(and their validation), then redirects to a page that says what happened.
The one exception is *Rotate signing secret*, whose answer is the page with
the new secret: a secret must not travel in a cookie or a URL.
"""

from __future__ import annotations

import hmac
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote, urlencode

import anyio
import jinja2
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..._version import __version__
from ...events import WebhookEventType
from ...exceptions import NotFound, SettingsError, StorageError
from ...settings import (
    WebhookSettings,
    mask_header,
    parse_events,
    parse_header,
    validate_url,
)
from ...storage.base import DeliveryStatus
from .. import channels
from ..middleware import pipeline_from
from ..routes import MAX_TEXT_BYTES, ApiError, _unmask, check_agent_id, parse_id
from ._health import BUCKET_SECONDS, HOURS, duration, health_strip
from ._openapi import openapi_document
from ._session import FormRefused, read_form, session_of

__all__ = ["console_routes", "exception_handlers", "templates"]

HERE: Final = Path(__file__).parent
PAGE_SIZE: Final = 50

#: what each event type means, next to its checkbox
EVENT_HINTS: Final = {
    WebhookEventType.USER_MESSAGE_RECEIVED: "a user's message, while AI is disabled",
    WebhookEventType.AGENT_MESSAGE_SENDED: "an operator's message went out from the Inbox",
    WebhookEventType.AGENT_USER_MESSAGE: "the AI agent answered a user (the default event)",
    WebhookEventType.AGENT_MESSAGE_BLOCKED: "WhatsApp or Instagram refused an agent message",
    WebhookEventType.AGENT_MESSAGE_NOTED: "an agent message was kept as a note (API, Dashboard)",
    WebhookEventType.GROUP_MESSAGE_RECEIVED: "a group message that did not mention the agent",
}
EVENTS: Final = tuple(WebhookEventType)
_AUTHORS: Final = {"user": "User", "agent": "AI agent", "operator": "Operator"}


# -- rendering ------------------------------------------------------------------------------------


def _when(ts: float | str | None, zone: bool = True) -> str:
    """A time as operators read it: ``2026-11-25 12:00:05 UTC``."""
    if ts is None:
        return "—"
    try:
        moment = (
            datetime.fromisoformat(ts) if isinstance(ts, str) else datetime.fromtimestamp(ts, UTC)
        )
    except (ValueError, OverflowError, OSError):
        return str(ts)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if zone else ""))


def _iso(ts: float | str | None) -> str:
    if ts is None:
        return ""
    if isinstance(ts, str):
        return ts
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return ""


def _seg(value: str) -> str:
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
    env.filters.update(when=_when, iso=_iso, seg=_seg, as_text=_as_text, duration=duration)
    env.globals.update(version=__version__, static=lambda name: f"/static/{name}?v={__version__}")
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    session = session_of(request)
    base = {
        "csrf": session.csrf,
        "sign_in_needed": bool(request.app.state.api_token),
        "flash": session.pop_flash(),
        "section": "",
    }
    return templates.TemplateResponse(request, template, {**base, **context}, status_code=status)


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _local(target: str | None, default: str) -> str:
    """``target`` when it is a path on this site, else ``default`` (no open redirect)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and not any(ord(c) < 0x21 or c == "\\" for c in target)
    ):
        return target
    return default


def _field(fields: dict[str, list[str]], name: str) -> str:
    return fields.get(name, [""])[0]


async def _db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def _agent_id(request: Request) -> str:
    agent_id: str = request.path_params["agent_id"]
    check_agent_id(agent_id)
    return agent_id


async def _agent_label(request: Request, agent_id: str) -> tuple[str, bool]:
    """The agent's name (or id) and whether it exists."""
    row = await _db(pipeline_from(request).store.get_agent, agent_id)
    if row is None:
        return agent_id, False
    return str(row.get("name") or agent_id), True


# -- sign-in -----------------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    return _redirect("/agents")


async def login_page(request: Request) -> Response:
    target = _local(request.query_params.get("next"), "/agents")
    if not request.app.state.api_token or session_of(request).signed_in:
        return _redirect(target)
    return render(request, "login.html", next=target, error=None)


async def login(request: Request) -> Response:
    fields = await read_form(request)
    target = _local(_field(fields, "next"), "/agents")
    expected: str | None = request.app.state.api_token
    if not expected:
        return _redirect(target)
    if hmac.compare_digest(_field(fields, "token").encode(), expected.encode()):
        session_of(request).sign_in()
        return _redirect(target)
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
    return _redirect("/login" if request.app.state.api_token else "/agents")


# -- agents and the WebHook tab -------------------------------------------------------------------------


async def agents(request: Request) -> Response:
    pipeline = pipeline_from(request)
    rows = await _db(pipeline.store.list_agents)
    settings = await _db(pipeline.engine.store.all_settings)
    listed = [
        {
            "id": row["id"],
            "label": row.get("name") or row["id"],
            "settings": settings.get(str(row["id"])),
        }
        for row in rows
    ]
    return render(request, "agents.html", section="agents", agents=listed, new_error=None)


async def open_agent(request: Request) -> Response:
    """The *Open* form of the agents page: any agent id, existing or new."""
    agent_id = request.query_params.get("agentId", "").strip()
    problem = None
    if not 0 < len(agent_id) <= 200:
        problem = "Type an agent id of 1 to 200 characters."
    elif "/" in agent_id or any(ord(c) < 0x20 for c in agent_id):
        problem = "An agent id cannot contain / or control characters."
    if problem:
        pipeline = pipeline_from(request)
        rows = await _db(pipeline.store.list_agents)
        settings = await _db(pipeline.engine.store.all_settings)
        listed = [
            {"id": r["id"], "label": r.get("name") or r["id"], "settings": settings.get(r["id"])}
            for r in rows
        ]
        return render(
            request, "agents.html", status=400, section="agents", agents=listed,
            new_error=problem, new_value=agent_id,
        )  # fmt: skip
    return _redirect(f"/agents/{_seg(agent_id)}/settings/webhook")


def _form_values(settings: WebhookSettings) -> dict[str, Any]:
    return {
        "url": settings.url or "",
        "header": mask_header(settings.header) or "",
        "user_info_url": settings.user_info_url or "",
        "user_info_header": mask_header(settings.user_info_header) or "",
        "events": {str(e) for e in (settings.events if settings.events is not None else EVENTS)},
    }


async def _webhook_page(
    request: Request,
    agent_id: str,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    new_secret: str | None = None,
    notice: dict[str, str] | None = None,
) -> Response:
    label, exists = await _agent_label(request, agent_id)
    settings = await pipeline_from(request).engine.get_settings(agent_id) or WebhookSettings()
    return render(
        request,
        "webhook.html",
        status=status,
        section="agents",
        agent_id=agent_id,
        agent_label=label,
        agent_exists=exists,
        settings=settings,
        values=values if values is not None else _form_values(settings),
        errors=errors or {},
        events=[(str(e), EVENT_HINTS[e]) for e in EVENTS],
        new_secret=new_secret,
        notice=notice,
        rotation=secrets.token_urlsafe(16),
    )


async def webhook_tab(request: Request) -> Response:
    return await _webhook_page(request, _agent_id(request))


async def webhook_save(request: Request) -> Response:
    agent_id = _agent_id(request)
    fields = await read_form(request)
    pipeline = pipeline_from(request)
    typed = {
        name: _field(fields, name).strip()
        for name in ("url", "header", "user_info_url", "user_info_header")
    }
    chosen = [e for e in fields.get("events", []) if e]
    current = await pipeline.engine.get_settings(agent_id) or WebhookSettings()
    errors: dict[str, str] = {}
    # each field checked on its own, so that every mistake is shown at once,
    # by the same functions (and rules) as PUT /v1/agents/{id}/webhook
    for name, api_name in (("url", "url"), ("user_info_url", "userInfoUrl")):
        if typed[name]:
            try:
                validate_url(typed[name], api_name)
            except SettingsError as exc:
                errors[name] = exc.message
                continue
            reason = pipeline.engine.guard.refuses(typed[name])
            if reason:
                errors[name] = reason
    headers: dict[str, str | None] = {}
    for name, api_name, stored, url, stored_url in (
        ("header", "header", current.header, typed["url"], current.url),
        (
            "user_info_header", "userInfoHeader", current.user_info_header,
            typed["user_info_url"], current.user_info_url,
        ),
    ):  # fmt: skip
        try:
            value = _unmask(api_name, typed[name] or None, stored, url or None, stored_url)
            if value:
                parse_header(value, api_name)
            headers[name] = value
        except SettingsError as exc:
            errors[name] = exc.message
    events: list[str] | None = None
    if not chosen:
        errors["events"] = (
            "check at least one event type (to send nothing, clear the Outbound WebHook URL)"
        )
    else:
        try:
            events = (
                None if set(chosen) == {str(e) for e in EVENTS} else sorted(parse_events(chosen))
            )
        except SettingsError as exc:
            errors["events"] = exc.message
    if errors:
        values = {**typed, "events": set(chosen)}
        return await _webhook_page(request, agent_id, values=values, errors=errors, status=400)
    settings = WebhookSettings.validated(
        url=typed["url"] or None,
        header=headers["header"],
        events=events,
        user_info_url=typed["user_info_url"] or None,
        user_info_header=headers["user_info_header"],
    )
    saved = await pipeline.save_settings(agent_id, settings)
    session = session_of(request)
    if saved.url is None:
        session.flash("ok", "Saved. No Outbound WebHook URL, so no test request was sent.")
    else:
        test = await pipeline.engine.test_endpoint(agent_id)
        took = duration(test.duration_ms)
        if test.status == "ok":
            session.flash(
                "ok", f"Saved. The test request found the endpoint reachable:"
                f" HTTP {test.status_code} in {took}.",
            )  # fmt: skip
        elif test.status == "slow":
            session.flash(
                "warn", f"Saved. The test request found the endpoint slow: HTTP"
                f" {test.status_code} after {took}; answer within 5 s (queue the work).",
            )  # fmt: skip
        else:
            why = test.error or f"HTTP {test.status_code}"
            if test.status_code and test.error and str(test.status_code) not in test.error:
                why = f"HTTP {test.status_code}: {test.error}"
            session.flash(
                "error", f"Saved. The test request found the endpoint unreachable: {why}."
                " Webhooks are queued and retried meanwhile.",
            )  # fmt: skip
    return _redirect(f"/agents/{_seg(agent_id)}/settings/webhook")


async def rotate_secret(request: Request) -> Response:
    agent_id = _agent_id(request)
    fields = await read_form(request)
    engine = pipeline_from(request).engine
    # The answer is the page with the secret (no redirect: the secret must not
    # travel in a cookie or a URL), so a reload would send the form again: each
    # rendered form rotates once, and a second send only says so.
    session = session_of(request)
    nonce = _field(fields, "rotation")
    if not nonce or session.data.get("rotation") == nonce:
        return await _webhook_page(
            request, agent_id, notice={
                "kind": "warn",
                "text": "This form already rotated the secret, which was shown once then."
                " To make another one, press Rotate signing secret again.",
            },
        )  # fmt: skip
    session.data["rotation"] = nonce
    session.changed = True
    try:
        secret = await engine.rotate_secret(agent_id)
    except NotFound:
        session_of(request).flash(
            "error", "This agent has no webhook settings yet: save them first."
        )
        return _redirect(f"/agents/{_seg(agent_id)}/settings/webhook")
    settings = await engine.get_settings(agent_id)
    until = settings.previous_secret_expires_at if settings else None
    text = "A new signing secret was made. Copy it now: it is not shown again."
    if until:
        text += f" The old secret signs too until {_when(until)}."
    else:
        text += " Webhooks are signed with it from now on."
    return await _webhook_page(
        request, agent_id, new_secret=secret, notice={"kind": "ok", "text": text}
    )


# -- the Inbox ------------------------------------------------------------------------------------------


async def inbox(request: Request) -> Response:
    pipeline = pipeline_from(request)
    agent_filter = request.query_params.get("agent") or None
    rows = await _db(pipeline.store.list_conversations, agent_id=agent_filter, limit=200)
    names = {
        str(r["id"]): str(r.get("name") or r["id"]) for r in await _db(pipeline.store.list_agents)
    }
    conversations = [
        {
            "id": record.id,
            "label": record.contact.get("name") or record.contact.get("phoneNumber")
            or record.contact.get("email") or record.id,
            "channel": record.channel,
            "agent": names.get(record.agent_id, record.agent_id),
            "ai_enabled": record.ai_enabled,
            "last": last,
        }
        for record, last in rows
    ]  # fmt: skip
    return render(
        request, "inbox.html", section="inbox", conversations=conversations, agent=agent_filter
    )


def _reason(channel: str, status: str) -> str | None:
    """Why a message was blocked or noted: the channel's rule (they depend on nothing else)."""
    if status not in ("blocked", "noted"):
        return None
    verdict, reason = channels.decide(channel, None, 0.0)
    return reason if verdict == status and reason else f"the {channel} channel did not carry it"


async def conversation(request: Request) -> Response:
    pipeline = pipeline_from(request)
    conversation_id: str = request.path_params["conversation_id"]
    # the user-info hook runs here, before the page renders, within its time box
    view = await pipeline.inbox_view(conversation_id)
    record = await pipeline.conversation(conversation_id)
    agent = await pipeline.agent(record.agent_id)
    verdict, reason = channels.decide(record.channel, record.last_user_message_at, time.time())
    messages = [
        {**m, "who": _AUTHORS.get(m["author"], m["author"]), "reason": _reason(view["channel"], m["status"])}
        for m in view["messages"]
    ]  # fmt: skip
    contact = view["contact"]
    return render(
        request,
        "conversation.html",
        section="inbox",
        view=view,
        messages=messages,
        label=contact.get("name") or contact.get("phoneNumber") or contact.get("email")
        or conversation_id,
        agent_label=agent.name or agent.id,
        prediction={"verdict": verdict, "reason": reason},
        info_items=list((view["userInfo"] or {}).items())[:100],
        timeout=pipeline.engine.config.user_info_timeout,
        max_text=MAX_TEXT_BYTES,
    )  # fmt: skip


async def send_message(request: Request) -> Response:
    pipeline = pipeline_from(request)
    conversation_id: str = request.path_params["conversation_id"]
    fields = await read_form(request)
    text = _field(fields, "text")
    page = f"/inbox/{_seg(conversation_id)}"
    record = await pipeline.conversation(conversation_id)  # 404 before anything else
    session = session_of(request)
    if not text.strip():
        session.flash("error", "Type a message first.")
        return _redirect(page)
    if len(text.encode()) > MAX_TEXT_BYTES:
        session.flash("error", f"The message is longer than {MAX_TEXT_BYTES} bytes.")
        return _redirect(page)
    outcome = await pipeline.inbox_message(conversation_id, text)
    status = outcome["status"]
    if status == "sent":
        session.flash("ok", "Sent.")
    else:
        what = "Blocked" if status == "blocked" else "Noted"
        session.flash("warn", f"{what}: {_reason(record.channel, status)}.")
    return _redirect(page)


async def set_ai(request: Request) -> Response:
    conversation_id: str = request.path_params["conversation_id"]
    fields = await read_form(request)
    enabled = _field(fields, "ai_enabled") == "on"
    await pipeline_from(request).set_ai(conversation_id, enabled)
    session_of(request).flash(
        "ok",
        "AI enabled: the agent answers this conversation's messages."
        if enabled
        else "AI disabled: user messages now wait for an operator (USER_MESSAGE_RECEIVED).",
    )
    return _redirect(f"/inbox/{_seg(conversation_id)}")


# -- the delivery log ---------------------------------------------------------------------------------


async def deliveries(request: Request) -> Response:
    agent_id = _agent_id(request)
    pipeline = pipeline_from(request)
    agent = await pipeline.agent(agent_id)  # 404 for an unknown agent
    given = request.query_params.get("status") or None
    status = cast("DeliveryStatus", given) if given in ("pending", "succeeded", "failed") else None
    before = parse_id(request.query_params.get("before", ""))
    rows = await pipeline.engine.list_deliveries(
        agent_id=agent_id, status=status, limit=PAGE_SIZE + 1, before_id=before
    )
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        query = {"before": rows[-1].id, **({"status": status} if status else {})}
        older = f"?{urlencode(query)}"
    since = time.time() - HOURS * BUCKET_SECONDS
    stats = await _db(
        pipeline.engine.store.attempt_stats, agent_id, since=since, bucket_seconds=BUCKET_SECONDS,
        buckets=HOURS,
    )  # fmt: skip
    settings = await pipeline.engine.get_settings(agent_id) or WebhookSettings()
    return render(
        request,
        "deliveries.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        rows=rows,
        filter_status=status,
        older=older,
        paged=before is not None,
        health=health_strip(stats, since=since),
        settings=settings,
    )


def _delivery_id(request: Request) -> int:
    delivery_id = parse_id(request.path_params["delivery_id"])
    if delivery_id is None:
        raise NotFound("no such delivery")
    return delivery_id


async def delivery(request: Request) -> Response:
    agent_id = _agent_id(request)
    pipeline = pipeline_from(request)
    agent = await pipeline.agent(agent_id)
    record = await pipeline.engine.get_delivery(_delivery_id(request), agent_id)
    attempts = await pipeline.engine.list_attempts(record.id)
    try:
        payload = msgspec.json.format(record.body, indent=2).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        payload = record.body.decode(errors="replace")
    return render(
        request,
        "delivery.html",
        section="agents",
        agent_id=agent_id,
        agent_label=agent.name or agent_id,
        d=record,
        attempts=attempts,
        payload=payload,
    )


async def redeliver(request: Request) -> Response:
    agent_id = _agent_id(request)
    fields = await read_form(request)
    record = await pipeline_from(request).engine.redeliver(_delivery_id(request), agent_id)
    session_of(request).flash(
        "ok",
        f"Delivery {record.id} ({record.event_type}) is queued again, with the same webhook-id.",
    )
    return _redirect(_local(_field(fields, "next"), f"/agents/{_seg(agent_id)}/deliveries"))


async def redeliver_failed(request: Request) -> Response:
    agent_id = _agent_id(request)
    await read_form(request)
    await pipeline_from(request).agent(agent_id)
    count = await pipeline_from(request).engine.redeliver_failed(agent_id=agent_id)
    session_of(request).flash(
        "ok",
        f"{count} failed deliver{'y is' if count == 1 else 'ies are'} queued again."
        if count
        else "No failed deliveries to queue again.",
    )
    return _redirect(f"/agents/{_seg(agent_id)}/deliveries")


# -- the API, described --------------------------------------------------------------------------------


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document())


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rpartition("/")[2]
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(schema.get('items', {}))}"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return str(kind)


def _fields(schema: dict[str, Any]) -> list[tuple[str, str, bool]]:
    required = set(schema.get("required", ()))
    return [
        (name, _schema_type(prop), name in required)
        for name, prop in schema.get("properties", {}).items()
    ]


async def api_page(request: Request) -> Response:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    operations = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            body_name = _schema_type(body["schema"]) if body else None
            answer = op["responses"]["200"].get("content", {})
            answer_schema = next(iter(answer.values()), {"schema": None})["schema"]
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op["summary"],
                    "description": op.get("description"),
                    "body": body_name,
                    "body_fields": _fields(schemas[body_name]) if body_name in schemas else [],
                    "answer": _schema_type(answer_schema) if answer_schema else None,
                    "errors": [s for s in op["responses"] if s != "200"],
                    "public": op.get("security") == [],
                }
            )
    webhooks = []
    for event, item in doc["webhooks"].items():
        name = _schema_type(item["post"]["requestBody"]["content"]["application/json"]["schema"])
        webhooks.append(
            {"event": event, "summary": item["post"]["summary"], "fields": _fields(schemas[name])}
        )
    return render(
        request, "api.html", section="api", doc=doc, operations=operations, webhooks=webhooks
    )


# -- errors -------------------------------------------------------------------------------------------


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
        Route(f"{agent}/deliveries", deliveries, methods=["GET"]),
        Route(f"{agent}/deliveries/redeliver-failed", redeliver_failed, methods=["POST"]),
        Route(f"{agent}/deliveries/{{delivery_id}}", delivery, methods=["GET"]),
        Route(f"{agent}/deliveries/{{delivery_id}}/redeliver", redeliver, methods=["POST"]),
        Route("/inbox", inbox, methods=["GET"]),
        Route("/inbox/{conversation_id}", conversation, methods=["GET"]),
        Route("/inbox/{conversation_id}/messages", send_message, methods=["POST"]),
        Route("/inbox/{conversation_id}/ai", set_ai, methods=["POST"]),
        Route("/api", api_page, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
