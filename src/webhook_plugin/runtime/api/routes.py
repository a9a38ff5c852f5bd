"""The HTTP API of the reference runtime (``CONTRACT.md`` section 4): its
handlers and its route table. What every input goes through, and the shape
of every answer and error, is in :mod:`.api_io`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...delivery.metrics import CONTENT_TYPE, merge
from ...events import WebhookEventType
from ...exceptions import NotFound, SettingsError
from ...models import Attachment, Group
from ...settings import SettingsInput, WebhookSettings
from ...storage.base import DELIVERY_STATUSES
from .. import timestamps
from ..chat.inbox import MAX_PAGE, PAGE
from ..chat.middleware import pipeline_from
from .io import (
    MAX_ID,
    ApiError,
    ConversationPatch,
    InboxMessageIn,
    RecoverIn,
    SettingsIn,
    UserMessageIn,
    attempt_json,
    check_text,
    checked_created_at,
    checked_id,
    decode,
    delivery_json,
    json,
    moment,
    page_query,
    parse_id,
    path_id,
    unmask_header,
)

__all__ = ["routes"]


# -- chat -------------------------------------------------------------------------------------


async def post_message(request: Request) -> Response:
    agent_id = path_id(request, "agent_id", "agent id")
    body: UserMessageIn = await decode(request, UserMessageIn)
    check_text(body.text)
    created_at = checked_created_at(body.created_at)
    contact = msgspec.to_builtins(body.contact) if body.contact else None
    group = body.group
    outcome = await pipeline_from(request).user_message(
        agent_id,
        conversation_id=checked_id("conversationId", body.conversation_id),
        channel=body.channel,
        text=body.text,
        message_id=None if body.message_id is None else checked_id("messageId", body.message_id),
        created_at=created_at,
        contact=contact,
        group=Group(id=checked_id("group.id", group.id), name=group.name, mentioned=group.mentioned)
        if group
        else None,
        attachments=tuple(
            Attachment(url=a.url, mime_type=a.mime_type, name=a.name, size=a.size)
            for a in body.attachments
        ),
    )
    return json(outcome)


async def patch_conversation(request: Request) -> Response:
    body: ConversationPatch = await decode(request, ConversationPatch)
    record = await pipeline_from(request).set_ai(
        path_id(request, "conversation_id", "conversation id"), body.ai_enabled
    )
    return json({"conversationId": record.id, "aiEnabled": record.ai_enabled})


async def post_inbox_message(request: Request) -> Response:
    body: InboxMessageIn = await decode(request, InboxMessageIn)
    check_text(body.text)
    outcome = await pipeline_from(request).inbox_message(
        path_id(request, "conversation_id", "conversation id"), body.text
    )
    return json(outcome)


async def get_inbox_conversation(request: Request) -> Response:
    conversation_id = path_id(request, "conversation_id", "conversation id")
    before, limit = page_query(request, default=PAGE, most=MAX_PAGE)
    view = await pipeline_from(request).inbox_view(conversation_id, before=before, limit=limit)
    return json(view)


# -- webhook settings and the delivery log ---------------------------------------------------------


async def _settings_or_404(request: Request) -> tuple[str, WebhookSettings]:
    pipeline = pipeline_from(request)
    agent_id = path_id(request, "agent_id", "agent id")
    await pipeline.agent(agent_id)  # 404 for an unknown agent
    settings = await pipeline.engine.get_settings(agent_id)
    return agent_id, settings or WebhookSettings()


async def get_webhook(request: Request) -> Response:
    agent_id, settings = await _settings_or_404(request)
    return json({"agentId": agent_id, **settings.public()})


async def put_webhook(request: Request) -> Response:
    pipeline = pipeline_from(request)
    agent_id = path_id(request, "agent_id", "agent id")
    body: SettingsInput = await decode(request, SettingsIn)
    current = await pipeline.engine.get_settings(agent_id) or WebhookSettings()
    settings = WebhookSettings.validated(
        url=body.url,
        header=unmask_header("header", body.header, current.header, body.url, current.url),
        # None keeps the current secret, read in the transaction that writes:
        # passing the one read here would undo a rotation made meanwhile
        signing_secret=body.signing_secret,
        events=body.events,
        user_info_url=body.user_info_url,
        user_info_header=unmask_header(
            "userInfoHeader",
            body.user_info_header,
            current.user_info_header,
            body.user_info_url,
            current.user_info_url,
        ),
        ordering=body.ordering,
        ordering_max_wait=body.ordering_max_wait,
        operations_url=body.operations_url,
    )
    for field, url in (
        ("url", settings.url),
        ("userInfoUrl", settings.user_info_url),
        ("operationsUrl", settings.operations_url),
    ):
        reason = pipeline.engine.guard.refuses(url) if url else None
        if reason:
            raise SettingsError(field, reason)
    held_events = body.held_events  # type: ignore[attr-defined]  # SettingsIn has it
    test = request.query_params.get("test", "false")
    if test not in ("true", "false"):
        raise ApiError(400, "invalid_query", "test must be true or false")
    saved, generated = await pipeline.save_settings(agent_id, settings, held_events=held_events)
    answer: dict[str, Any] = {"agentId": agent_id, **saved.public()}
    if generated is not None:  # the agent's first secret: shown this once, never again
        answer["signingSecret"] = generated
    if test == "true":
        # as ChatVolt does on save: one signed request, reported, never queued
        tested = await pipeline.engine.test_endpoint(agent_id) if saved.url else None
        answer["test"] = msgspec.to_builtins(tested)
    return json(answer)


async def rotate_secret(request: Request) -> Response:
    agent_id, _ = await _settings_or_404(request)
    engine = pipeline_from(request).engine
    grace: float | None = None
    if "graceSeconds" in request.query_params:
        try:
            grace = float(request.query_params["graceSeconds"])
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= 30 * 86400:
            raise ApiError(400, "invalid_query", "graceSeconds must be 0 to 2592000")
    secret = await engine.rotate_secret(agent_id, grace=grace)
    settings = await engine.get_settings(agent_id)
    expires_at = settings.previous_secret_expires_at if settings else None
    return json(
        {
            "signingSecret": secret,
            # until then, webhooks carry a second signature made with the old secret
            "previousSecretExpiresAt": None if expires_at is None else timestamps.iso(expires_at),
        }
    )


async def list_deliveries(request: Request) -> Response:
    agent_id, _ = await _settings_or_404(request)
    query = request.query_params
    status = query.get("status") or None
    if status not in (None, *DELIVERY_STATUSES):
        raise ApiError(
            400, "invalid_query", f"status must be one of {', '.join(DELIVERY_STATUSES)}"
        )
    event_type = query.get("eventType") or None
    if event_type is not None and event_type not in {e.value for e in WebhookEventType}:
        raise ApiError(400, "invalid_query", f"eventType {event_type!r:.60} is not an event type")
    conversation_id = query.get("conversationId") or None
    if conversation_id is not None:
        conversation_id = checked_id("conversationId", conversation_id)
    webhook_id = query.get("webhookId") or None
    if webhook_id is not None and len(webhook_id) > 200:
        raise ApiError(400, "invalid_query", "webhookId is longer than any webhook-id")
    since, until = moment("since", query.get("since")), moment("until", query.get("until"))
    limit_text = request.query_params.get("limit", "100")
    limit = parse_id(limit_text)
    if limit is None or limit > 1000:
        raise ApiError(
            400,
            "invalid_query",
            f"limit must be a whole number from 1 to 1000, not {limit_text!r:.40}",
        )
    # the cursor is the id of the last delivery of the page before (as ``before``)
    name = "cursor" if "cursor" in query else "before"
    before = query.get(name)
    before_id = parse_id(before) if before else None
    if before and before_id is None:
        raise ApiError(
            400,
            "invalid_query",
            f"{name} must be a delivery id, a whole number from 1 to {MAX_ID}, not {before!r:.40}",
        )
    rows = await pipeline_from(request).engine.list_deliveries(
        agent_id=agent_id,
        status=status,  # checked above
        limit=limit,
        before_id=before_id,
        event_type=event_type,
        conversation_id=conversation_id,
        webhook_id=webhook_id,
        since=since,
        until=until,
    )
    answer = json([delivery_json(r) for r in rows])
    if len(rows) == limit:  # the next page, as GitHub's API links it
        params = {k: v for k, v in query.items() if k not in ("cursor", "before")}
        params["cursor"] = str(rows[-1].id)
        answer.headers["link"] = f'<{request.url.path}?{urlencode(params)}>; rel="next"'
    return answer


def _delivery_id(request: Request) -> int:
    text = request.path_params["delivery_id"]
    delivery_id = parse_id(text)
    if delivery_id is None:  # not an id any delivery can have
        raise NotFound(f"delivery {text!r:.60} does not exist")
    return delivery_id


async def get_delivery(request: Request) -> Response:
    agent_id, settings = await _settings_or_404(request)
    engine = pipeline_from(request).engine
    record = await engine.get_delivery(_delivery_id(request), agent_id)
    attempts = await engine.list_attempts(record.id)
    return json(
        {
            **delivery_json(record),
            # after the retention the payload is gone, and says so
            "payload": msgspec.json.decode(record.body) if record.body else None,
            "payloadExpired": not record.body,
            "attemptLog": [attempt_json(record, a, settings) for a in attempts],
        }
    )


async def recover(request: Request) -> Response:
    agent_id, _ = await _settings_or_404(request)
    body: RecoverIn = await decode(request, RecoverIn)
    since = moment("since", body.since, "invalid_body")
    until = moment("until", body.until, "invalid_body")
    assert since is not None  # required by RecoverIn
    if until is not None and until <= since:
        raise ApiError(400, "invalid_body", "until must be later than since")
    queued = await pipeline_from(request).engine.recover(
        agent_id,
        since=since,
        until=until,
        event_types=[str(e) for e in body.event_types] if body.event_types else None,
    )
    return json({"queued": queued})


async def redeliver(request: Request) -> Response:
    agent_id, _ = await _settings_or_404(request)
    record = await pipeline_from(request).engine.redeliver(_delivery_id(request), agent_id)
    return json(delivery_json(record))


async def metrics(request: Request) -> Response:
    pipeline = pipeline_from(request)
    text = await pipeline.engine.render_metrics()
    if pipeline.worker_process is not None:  # its attempts are counted there
        text = merge(text, await pipeline.worker_process.metrics())
    return Response(text, media_type=CONTENT_TYPE)


async def healthz(request: Request) -> Response:
    """Liveness: 200 ``{"status": "ok"}``, or 503 with the reason when the delivery
    engine is not running, one of its loops failed within the last minute, the
    database cannot be read or written, or the delivery worker process is down."""
    pipeline = pipeline_from(request)
    problem = await pipeline.engine.check_health()
    if problem is None and pipeline.worker_process is not None:
        problem = pipeline.worker_process.problem()
    if problem is not None:
        return json({"status": "failing", "reason": problem}, 503)
    return json({"status": "ok"})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/agents/{agent_id}/messages", post_message, methods=["POST"]),
    # a conversation's id may hold a "/" (runtime/ids.py): it takes the rest of the path
    Route("/v1/conversations/{conversation_id:path}", patch_conversation, methods=["PATCH"]),
    Route(
        "/v1/conversations/{conversation_id:path}/inbox-messages",
        post_inbox_message,
        methods=["POST"],
    ),
    Route(
        "/v1/inbox/conversations/{conversation_id:path}", get_inbox_conversation, methods=["GET"]
    ),
    Route("/v1/agents/{agent_id}/webhook", get_webhook, methods=["GET"]),
    Route("/v1/agents/{agent_id}/webhook", put_webhook, methods=["PUT"]),
    Route("/v1/agents/{agent_id}/webhook/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/agents/{agent_id}/webhook/recover", recover, methods=["POST"]),
    Route("/v1/agents/{agent_id}/webhook/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/agents/{agent_id}/webhook/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route(
        "/v1/agents/{agent_id}/webhook/deliveries/{delivery_id}/redeliver",
        redeliver,
        methods=["POST"],
    ),
]
