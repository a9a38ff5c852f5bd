"""The agents list and each agent's WebHook tab: the form, its validation, saving
with a test request, and rotating the signing secret.

The form is checked by the same functions (and rules) as ``PUT /v1/agents/{id}/webhook``.
*Rotate signing secret* answers with the page itself, not a redirect: the new
secret must not travel in a cookie or a URL.
"""

from __future__ import annotations

import secrets
from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ...events import WebhookEventType
from ...exceptions import NotFound, SettingsError
from ...settings import (
    MAX_ORDERING_MAX_WAIT,
    ORDERINGS,
    WebhookSettings,
    mask_header,
    parse_events,
    parse_header,
    validate_url,
)
from ...storage.base import HeldEvents
from ..api.io import unmask_header
from ..chat.middleware import pipeline_from
from ..ids import id_problem, normalized_id
from ._health import duration
from ._render import agent_label, db, field, path_agent_id, redirect, render, seg, when
from ._session import read_form, session_of

__all__ = [
    "agents",
    "index",
    "open_agent",
    "rotate_secret",
    "send_example",
    "webhook_save",
    "webhook_tab",
]

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
#: how long the old secret also signs after a rotation, as the console offers it
GRACE_CHOICES: Final = (
    (0, "no time: stop at once"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
)


async def index(request: Request) -> Response:
    return redirect("/agents")


#: agents on one page of /agents
AGENTS_PAGE: Final = 100


async def _listed(request: Request, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """A page of agents, each with its settings (from memory), and the link to the next."""
    pipeline = pipeline_from(request)
    rows = await db(pipeline.store.list_agents, after=after, limit=AGENTS_PAGE + 1)
    more = len(rows) > AGENTS_PAGE
    rows = rows[:AGENTS_PAGE]
    listed = [
        {
            "id": row["id"],
            "label": row.get("name") or row["id"],
            "settings": pipeline.engine.settings_for(str(row["id"])),
        }
        for row in rows
    ]
    return listed, f"?{urlencode({'after': rows[-1]['id']})}" if more else None


async def agents(request: Request) -> Response:
    after = request.query_params.get("after") or None
    listed, later = await _listed(request, after)
    return render(
        request, "agents.html", section="agents", agents=listed, later=later, new_error=None
    )


async def open_agent(request: Request) -> Response:
    """The *Open* form of the agents page: any agent id, existing or new."""
    agent_id = normalized_id(request.query_params.get("agentId", "").strip())
    problem = id_problem(agent_id, agent=True)
    if problem:
        listed, later = await _listed(request, None)
        return render(
            request, "agents.html", status=400, section="agents", agents=listed, later=later,
            new_error=f"An agent id {problem}.", new_value=agent_id,
        )  # fmt: skip
    return redirect(f"/agents/{seg(agent_id)}/settings/webhook")


def _form_values(settings: WebhookSettings) -> dict[str, Any]:
    return {
        "url": settings.url or "",
        "header": mask_header(settings.header) or "",
        "user_info_url": settings.user_info_url or "",
        "user_info_header": mask_header(settings.user_info_header) or "",
        "events": {str(e) for e in (settings.events if settings.events is not None else EVENTS)},
        "ordering": settings.ordering,
        "ordering_max_wait": f"{settings.ordering_max_wait:g}",
        "operations_url": settings.operations_url or "",
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
    label, exists = await agent_label(request, agent_id)
    engine = pipeline_from(request).engine
    settings = await engine.get_settings(agent_id) or WebhookSettings()
    held = 0
    if settings.disabled:
        held = (await engine.count_deliveries(agent_id))["held"]
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
        grace_choices=GRACE_CHOICES,
        local_receivers=engine.guard.allows_loopback(),
        held=held,
    )


async def webhook_tab(request: Request) -> Response:
    return await _webhook_page(request, path_agent_id(request))


async def webhook_save(request: Request) -> Response:
    agent_id = path_agent_id(request)
    fields = await read_form(request)
    pipeline = pipeline_from(request)
    typed = {
        name: field(fields, name).strip()
        for name in (
            "url", "header", "user_info_url", "user_info_header", "ordering",
            "ordering_max_wait", "operations_url",
        )
    }  # fmt: skip
    chosen = [e for e in fields.get("events", []) if e]
    current = await pipeline.engine.get_settings(agent_id) or WebhookSettings()
    errors: dict[str, str] = {}
    # each field checked on its own, so that every mistake is shown at once,
    # by the same functions (and rules) as PUT /v1/agents/{id}/webhook
    for name, api_name in (
        ("url", "url"),
        ("user_info_url", "userInfoUrl"),
        ("operations_url", "operationsUrl"),
    ):
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
            value = unmask_header(api_name, typed[name] or None, stored, url or None, stored_url)
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
    if typed["ordering"] not in ("", *ORDERINGS):
        errors["ordering"] = f"must be one of {', '.join(ORDERINGS)}"
    max_wait: float | None = None
    if typed["ordering_max_wait"]:
        try:
            max_wait = float(typed["ordering_max_wait"])
            WebhookSettings.validated(ordering_max_wait=max_wait)
        except (ValueError, SettingsError):
            errors["ordering_max_wait"] = (
                f"must be a number of seconds from 1 to {MAX_ORDERING_MAX_WAIT:g}"
            )
    if errors:
        values = {**typed, "events": set(chosen)}
        return await _webhook_page(request, agent_id, values=values, errors=errors, status=400)
    settings = WebhookSettings.validated(
        url=typed["url"] or None,
        header=headers["header"],
        events=events,
        user_info_url=typed["user_info_url"] or None,
        user_info_header=headers["user_info_header"],
        ordering=typed["ordering"] or "none",
        ordering_max_wait=max_wait,
        operations_url=typed["operations_url"] or None,
    )
    held_events: HeldEvents = "discard" if field(fields, "held_events") == "discard" else "send"
    saved, generated = await pipeline.save_settings(agent_id, settings, held_events=held_events)
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
    if generated is not None:
        # the agent's first secret, which signed that test request: shown in this
        # answer only (not a redirect: a secret never travels in a cookie or URL)
        return await _webhook_page(request, agent_id, new_secret=generated)
    return redirect(f"/agents/{seg(agent_id)}/settings/webhook")


async def send_example(request: Request) -> Response:
    agent_id = path_agent_id(request)
    fields = await read_form(request)
    pipeline = pipeline_from(request)
    chosen = field(fields, "event_type")
    session = session_of(request)
    settings = await pipeline.engine.get_settings(agent_id)
    if chosen not in {str(e) for e in EVENTS} or settings is None or settings.url is None:
        session.flash("error", "Choose an event type, and save an Outbound WebHook URL first.")
        return redirect(f"/agents/{seg(agent_id)}/settings/webhook")
    agent = await pipeline.agent(agent_id)
    webhook_id = await pipeline.engine.send_example(agent, WebhookEventType(chosen))
    session.flash(
        "ok",
        f"An example {chosen} is queued to the Outbound WebHook URL (webhook-id {webhook_id});"
        " the delivery log shows how it went.",
    )
    return redirect(f"/agents/{seg(agent_id)}/deliveries?webhook_id={webhook_id}")


async def rotate_secret(request: Request) -> Response:
    agent_id = path_agent_id(request)
    fields = await read_form(request)
    engine = pipeline_from(request).engine
    # The answer is the page with the secret (no redirect: the secret must not
    # travel in a cookie or a URL), so a reload would send the form again: each
    # rendered form rotates once, and a second send only says so.
    session = session_of(request)
    nonce = field(fields, "rotation")
    if not nonce or session.data.get("rotation") == nonce:
        return await _webhook_page(
            request, agent_id, notice={
                "kind": "warn",
                "text": "This form already rotated the secret, which was shown once then."
                " To make another one, press Rotate signing secret again.",
            },
        )  # fmt: skip
    choice = field(fields, "grace") or "86400"
    grace = next((s for s, _ in GRACE_CHOICES if str(s) == choice), None)
    if field(fields, "confirm") != "on" or grace is None:
        why = "check \u201cYes, make a new signing secret\u201d to confirm"
        if grace is None:
            why = "choose how long the old secret also signs, from the list"
        return await _webhook_page(
            request, agent_id, status=400,
            notice={"kind": "error", "text": f"The secret was not rotated: {why}."},
        )  # fmt: skip
    session.data["rotation"] = nonce
    session.changed = True
    try:
        secret = await engine.rotate_secret(agent_id, grace=float(grace))
    except NotFound:
        session_of(request).flash(
            "error", "This agent has no webhook settings yet: save them first."
        )
        return redirect(f"/agents/{seg(agent_id)}/settings/webhook")
    settings = await engine.get_settings(agent_id)
    until = settings.previous_secret_expires_at if settings else None
    text = "A new signing secret was made. Copy it now: it is not shown again."
    if until:
        text += f" The old secret signs too until {when(until)}."
    else:
        text += " Webhooks are signed with it from now on."
    return await _webhook_page(
        request, agent_id, new_secret=secret, notice={"kind": "ok", "text": text}
    )
