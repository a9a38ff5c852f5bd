"""``GET /openapi.json``: the ``/v1`` API as an OpenAPI 3.1 document.

Request bodies are the msgspec Structs the routes decode; the six webhook
payloads, under ``webhooks``, are the Structs the plugin encodes (what
``webhook-plugin schema`` prints). The answers are described by the Structs
of :mod:`._answers`, which the tests decode real answers into (unknown fields
refused), so the document cannot drift from what the API sends.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from ..._version import __version__
from ...events import OperationalEventType, WebhookEventType
from ...payloads import (
    PAYLOAD_TYPES,
    TEST_EVENT_TYPE,
    OperationalEvent,
    WebhookTest,
    require_sequence,
)
from ...storage.base import DELIVERY_STATUSES
from ..api.io import ConversationPatch, InboxMessageIn, RecoverIn, SettingsIn, UserMessageIn
from ._answers import ANSWERS

__all__ = ["ANSWERS", "openapi_document"]


_REQUESTS = (UserMessageIn, ConversationPatch, InboxMessageIn, SettingsIn, RecoverIn)

_AGENT = {"name": "agentId", "in": "path", "required": True, "schema": {"type": "string"}}
_CONVERSATION = {
    "name": "conversationId",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_DELIVERY = {
    "name": "deliveryId",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    answer: str | dict[str, Any] | None,
    *,
    params: tuple[dict[str, Any], ...] = (),
    body: str | None = None,
    errors: tuple[int, ...] = (400,),
    public: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    if isinstance(answer, str):
        answer = _ref(answer)
    op: dict[str, Any] = {"summary": summary}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = list(params)
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    op["responses"] = {"200": _json(answer or {}, "OK")}
    for status in sorted({*errors, *(() if public else (401,))}):
        what = {
            400: "invalid input (the message says which field)",
            401: "missing or wrong API token",
            404: "unknown agent, conversation or delivery",
            409: "contradicts what is stored: code conflict (another agent's conversation,"
            " another channel) or idempotency_mismatch (a messageId already answered for"
            " another agent, channel, text or group)",
            413: "body over 1 MiB or text over 64 KiB",
            503: "the database is unavailable",
        }[status]
        op["responses"][str(status)] = _json(_ref("Error"), what)
    if public:
        op["security"] = []
    return op


def _paths() -> dict[str, Any]:
    status_q = {
        "name": "status",
        "in": "query",
        "schema": {"enum": list(DELIVERY_STATUSES)},
    }
    filters_q = (
        {
            "name": "eventType",
            "in": "query",
            "schema": {"enum": [str(e) for e in (*WebhookEventType, *OperationalEventType)]},
        },
        {"name": "conversationId", "in": "query", "schema": {"type": "string"}},
        {"name": "webhookId", "in": "query", "schema": {"type": "string"}},
        {
            "name": "since",
            "in": "query",
            "description": "created at or after (RFC 3339, with its offset)",
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "until",
            "in": "query",
            "description": "created before (RFC 3339, with its offset)",
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "cursor",
            "in": "query",
            "description": "the id of the last delivery of the page before (the answer's"
            ' Link header, rel="next", carries it)',
            "schema": {"type": "integer", "minimum": 1},
        },
    )
    limit_q = {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    }
    before_q = {
        "name": "before",
        "in": "query",
        "description": "a delivery id: older ones only",
        "schema": {"type": "integer", "minimum": 1},
    }
    test_q = {
        "name": "test",
        "in": "query",
        "description": "after saving, send the URL one signed WEBHOOK_TEST request and report it",
        "schema": {"type": "boolean", "default": False},
    }
    grace_q = {
        "name": "graceSeconds",
        "in": "query",
        "description": "the old secret signs too this long",
        "schema": {"type": "number", "minimum": 0, "maximum": 2592000},
    }
    return {
        "/v1/agents/{agentId}/messages": {
            "post": _op(
                "A user's message arrives",
                "MessageAnswer",
                params=(_AGENT,),
                body="UserMessageIn",
                errors=(400, 409, 413),
                description="Answers once the events it queued are durably stored. The same"
                " messageId posted again with the same agent, channel, text and group gets the"
                " same answer, with no new events, whichever server it reaches (the first"
                " commit of the key decides); with another request it is a 409"
                " idempotency_mismatch.",
            )
        },
        "/v1/conversations/{conversationId}": {
            "patch": _op(
                "Turn the AI on or off for a conversation",
                "ConversationAnswer",
                params=(_CONVERSATION,),
                body="ConversationPatch",
                errors=(400, 404),
            )
        },
        "/v1/conversations/{conversationId}/inbox-messages": {
            "post": _op(
                "A human operator's message from the Inbox",
                "InboxMessageAnswer",
                params=(_CONVERSATION,),
                body="InboxMessageIn",
                errors=(400, 404, 413),
                description="The channel decides: sent (AGENT_MESSAGE_SENDED), blocked"
                " (AGENT_MESSAGE_BLOCKED) or noted (AGENT_MESSAGE_NOTED).",
            )
        },
        "/v1/inbox/conversations/{conversationId}": {
            "get": _op(
                "The conversation for the Inbox, with fetched user info",
                "InboxConversation",
                params=(
                    _CONVERSATION,
                    {
                        "name": "before",
                        "in": "query",
                        "description": "nextBefore of the page read before: older messages only",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "messages in the page: the newest ones, oldest first",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                ),
                errors=(400, 404),
            )
        },
        "/v1/agents/{agentId}/webhook": {
            "get": _op(
                "The agent's webhook settings",
                "WebhookSettingsAnswer",
                params=(_AGENT,),
                errors=(404,),
            ),
            "put": _op(
                "Replace the agent's webhook settings",
                "WebhookSettingsAnswer",
                params=(_AGENT, test_q),
                body="SettingsIn",
                errors=(400,),
                description="A masked header sent back keeps the stored value while the"
                " URL's origin stays the same.",
            ),
        },
        "/v1/agents/{agentId}/webhook/rotate-secret": {
            "post": _op(
                "A new signing secret, shown once",
                "RotatedSecret",
                params=(_AGENT, grace_q),
                errors=(400, 404),
            )
        },
        "/v1/agents/{agentId}/webhook/deliveries": {
            "get": _op(
                "The delivery log, newest first",
                {"type": "array", "items": _ref("Delivery")},
                params=(_AGENT, status_q, *filters_q, limit_q, before_q),
                errors=(400, 404),
            )
        },
        "/v1/agents/{agentId}/webhook/recover": {
            "post": _op(
                "Queue a time range's failed and held deliveries again",
                "Recovered",
                params=(_AGENT,),
                body="RecoverIn",
                errors=(400, 404),
                description="Oldest first, at the config's requeue_rate, with their webhook-ids;"
                " those pending already are not queued twice.",
            )
        },
        "/v1/agents/{agentId}/webhook/deliveries/{deliveryId}": {
            "get": _op(
                "One delivery, its payload and every attempt",
                "DeliveryDetail",
                params=(_AGENT, _DELIVERY),
                errors=(404,),
            )
        },
        "/v1/agents/{agentId}/webhook/deliveries/{deliveryId}/redeliver": {
            "post": _op(
                "Queue a delivery again, with the same webhook-id",
                "Delivery",
                params=(_AGENT, _DELIVERY),
                errors=(404,),
            )
        },
        "/healthz": {
            "get": {
                **_op("Liveness", "Health", errors=(), public=True),
                "responses": {
                    "200": _json(_ref("Health"), "healthy"),
                    "503": _json(_ref("Health"), "failing, with the reason"),
                },
            }
        },
        "/metrics": {
            "get": {
                **_op("Prometheus metrics", None, errors=()),
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _json(_ref("Error"), "missing or wrong API token"),
                },
            }
        },
    }


_SIGNATURE_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "unique per event, the same on every retry of it: deduplicate on it",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds of this attempt",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": "v1,<base64 HMAC-SHA256> of '{webhook-id}.{webhook-timestamp}.{body}'"
        " with the agent's whsec_ secret (Standard Webhooks); several, space-separated,"
        " during a rotation's grace period",
        "schema": {"type": "string"},
    },
]

_EVENT_SUMMARIES: dict[str, str] = {
    WebhookEventType.USER_MESSAGE_RECEIVED: "A user's message arrived while AI is disabled",
    WebhookEventType.AGENT_MESSAGE_SENDED: "An operator's message went out from the Inbox",
    WebhookEventType.AGENT_USER_MESSAGE: "The AI agent answered a user's message",
    WebhookEventType.AGENT_MESSAGE_BLOCKED: "The channel refused an agent message (24 h window)",
    WebhookEventType.AGENT_MESSAGE_NOTED: "An agent message was kept as a note (api, dashboard)",
    WebhookEventType.GROUP_MESSAGE_RECEIVED: "A group message where the agent was not mentioned",
    TEST_EVENT_TYPE: "The test request a settings save sends (no conversation: ignore it)",
    OperationalEventType.ENDPOINT_FAILING: "To the operations URL: the endpoint keeps failing",
    OperationalEventType.ENDPOINT_DISABLED: "To the operations URL: the endpoint was disabled",
    OperationalEventType.ENDPOINT_RECOVERED: "To the operations URL: the endpoint recovered",
    OperationalEventType.DELIVERY_EXHAUSTED: "To the operations URL: a delivery failed for good",
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document (built once; treat it as read-only)."""
    payloads = {cls.__name__: cls for cls in PAYLOAD_TYPES.values()}
    types = [*_REQUESTS, *ANSWERS.values(), *payloads.values(), WebhookTest, OperationalEvent]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    require_sequence(components)
    # what an agent's URL receives: the six events and a settings save's test
    received: list[tuple[str, type[msgspec.Struct]]] = [
        *((str(t), c) for t, c in PAYLOAD_TYPES.items()),
        (TEST_EVENT_TYPE, WebhookTest),
        *((str(kind), OperationalEvent) for kind in OperationalEventType),
    ]
    webhooks = {
        str(event_type): {
            "post": {
                "summary": _EVENT_SUMMARIES[event_type],
                "operationId": str(event_type),
                "parameters": _SIGNATURE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(cls.__name__)}},
                },
                "responses": {
                    "2XX": {"description": "received (the body is ignored)"},
                    "410": {"description": "gone: the endpoint is disabled at once"},
                    "default": {"description": "anything else is retried"},
                },
            }
        }
        for event_type, cls in received
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "webhook-plugin reference runtime",
            "version": __version__,
            "summary": "Agent webhooks for chat pipelines",
            "description": "The HTTP API of `webhook-plugin serve`. Errors are"
            ' `{"error": {"code", "message"}}` with a 4xx status. The `webhooks` are'
            " what an agent's URL receives, signed as Standard Webhooks says; a settings"
            ' test sends `{"eventType": "WEBHOOK_TEST", "agentId", "createdAt"}`.',
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "webhooks": webhooks,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the config's api_token (no token when none is set)",
                }
            },
        },
    }
