"""The API's edges: request bodies as msgspec Structs, the checks every input
goes through once, and the JSON answers, errors included.

Bodies are decoded into Structs, so a wrong type or a missing field is a
``400 invalid_body`` that says which field; every error is
``{"error": {"code", "message"}}``. The handlers are in :mod:`.routes`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..._version import __version__
from ...events import WebhookEventType
from ...exceptions import Expired, NotFound, SettingsError, StorageError
from ...settings import SettingsInput, WebhookSettings, mask_header
from ...storage.base import AttemptRecord, DeliveryRecord
from .. import timestamps
from ..chat.pipeline import Conflict
from ..ids import id_problem, normalized_id
from ..timestamps import check_created_at

__all__ = [
    "MAX_ID",
    "MAX_TEXT_BYTES",
    "ApiError",
    "ConversationPatch",
    "InboxMessageIn",
    "SettingsIn",
    "UserMessageIn",
    "check_text",
    "checked_created_at",
    "checked_id",
    "decode",
    "delivery_json",
    "exception_handlers",
    "iso",
    "json",
    "page_query",
    "parse_id",
    "path_id",
    "unmask_header",
]

MAX_TEXT_BYTES = 64 * 1024


#: delivery ids and ``before=`` cursors are 1 to this (a signed 64-bit integer)
MAX_ID = 2**63 - 1


#: an id in a body; the rule every id follows is :func:`checked_id`'s
Id = Annotated[str, Meta(max_length=1000)]


Short = Annotated[str, Meta(max_length=1000)]


_encode = msgspec.json.Encoder().encode


class ContactIn(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A contact in a request body: :class:`~webhook_plugin.models.Contact`'s
    fields (a test keeps the two lists equal), each at most 1,000 characters."""

    id: Short | None = None
    name: Short | None = None
    email: Short | None = None
    phone_number: Short | None = None


class GroupIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    name: Short
    mentioned: bool = False


class AttachmentIn(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    mime_type: Short | None = None
    name: Short | None = None
    size: Annotated[int, Meta(ge=0, le=MAX_ID)] | None = None


class UserMessageIn(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    conversation_id: Id
    channel: Annotated[str, Meta(min_length=1, max_length=64)]
    text: str
    message_id: Id | None = None
    created_at: datetime | None = None
    contact: ContactIn | None = None
    group: GroupIn | None = None
    attachments: Annotated[list[AttachmentIn], Meta(max_length=20)] = msgspec.field(
        default_factory=list
    )


class ConversationPatch(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    ai_enabled: bool


class InboxMessageIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: str


class RecoverIn(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """``POST .../webhook/recover``: RFC 3339 times, and event types (all if absent)."""

    since: datetime
    until: datetime | None = None
    event_types: list[WebhookEventType] | None = None


def moment(name: str, value: datetime | str | None, code: str = "invalid_query") -> float | None:
    """An RFC 3339 time from a query (or a body) as Unix seconds; a time without
    its offset is refused (which zone would it be?)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(
                400, code, f"{name} must be an RFC 3339 time, not {value!r:.40}"
            ) from None
    if value.tzinfo is None:
        raise ApiError(400, code, f"{name} must say its offset from UTC (2026-12-01T08:00:00Z)")
    return value.timestamp()


#: the body of a settings PUT: the config's ``[agents.webhook]`` table
#: (:class:`~webhook_plugin.settings.SettingsInput`, the one list of its
#: fields), in camelCase
SettingsIn = msgspec.defstruct(
    "SettingsIn",
    [
        *((f.name, f.type, f.default) for f in msgspec.structs.fields(SettingsInput)),
        # not a setting: what enabling the endpoint again does with what was held
        ("held_events", Literal["send", "discard"], "send"),
    ],
    bases=(SettingsInput,),
    rename="camel",
    kw_only=True,
    forbid_unknown_fields=True,
    module=__name__,
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json(data: Any, status: int = 200) -> Response:
    return Response(_encode(data), status_code=status, media_type="application/json")


async def decode(request: Request, into: type[Any]) -> Any:
    body = await request.body()
    if not body:
        raise ApiError(400, "invalid_body", "the request needs a JSON body")
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_body", str(exc).replace("$.", "")) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_body", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_body", "the body is nested too deeply") from None


def checked_created_at(value: datetime | None) -> datetime | None:
    """``createdAt`` within 1970-01-01 .. 9999-12-31 UTC; a time without an offset is UTC."""
    if value is None:
        return None
    try:
        return check_created_at(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_body", str(exc)) from None


_DIGITS = re.compile(r"[0-9]{1,30}")


def parse_id(text: str) -> int | None:
    """A decimal id from 1 to :data:`MAX_ID`, or None (no sign, spaces, ``_`` or non-ASCII digits)."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None


def checked_id(kind: str, value: str) -> str:
    """An id given by a client, NFC-normalized, or a ``400`` saying what is wrong
    with it (:mod:`.ids`: one rule for every id)."""
    value = normalized_id(value)
    agent = kind == "agent id"
    problem = id_problem(value, agent=agent)
    if problem is not None:
        code = "invalid_agent" if agent else "invalid_id"
        raise ApiError(400, code, f"{kind} {value[:80]!r} {problem}")
    return value


def path_id(request: Request, name: str, kind: str) -> str:
    """The id in the path parameter ``name``, checked (:func:`checked_id`)."""
    return checked_id(kind, request.path_params[name])


def page_query(request: Request, *, default: int, most: int) -> tuple[int | None, int]:
    """The ``before`` cursor and the ``limit`` of a paged read (``400
    invalid_query`` saying what is wrong)."""
    given = request.query_params.get("before")
    before = parse_id(given) if given else None
    if given and before is None:
        raise ApiError(
            400, "invalid_query", f"before must be a cursor from nextBefore, not {given!r:.40}"
        )
    text = request.query_params.get("limit")
    limit = parse_id(text) if text else default
    if limit is None or limit > most:
        raise ApiError(400, "invalid_query", f"limit must be a whole number from 1 to {most}")
    return before, limit


def check_text(text: str) -> None:
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise ApiError(413, "text_too_large", f"text is larger than {MAX_TEXT_BYTES} bytes")
    if not text.strip():
        raise ApiError(400, "invalid_body", "text must not be empty")


def iso(ts: float | None) -> str | None:
    """A time in an API answer: ISO 8601, UTC, to the millisecond."""
    return None if ts is None else timestamps.iso(ts, "milliseconds")


_CONVERSATION_EVENTS = frozenset(str(e) for e in WebhookEventType)


def request_headers(
    d: DeliveryRecord, a: AttemptRecord, settings: WebhookSettings
) -> list[list[str]]:
    """The headers an attempt was sent with, as far as the log can say: the
    signature is not kept (it is shown elided), the owner's header masked."""
    headers = [
        ["content-type", "application/json"],
        ["user-agent", f"webhook-plugin/{__version__}"],
        ["webhook-id", d.webhook_id],
        ["webhook-timestamp", str(int(a.started_at))],
        ["webhook-signature", "v1,… (not kept)"],
    ]
    masked = mask_header(settings.header)
    if masked and str(d.event_type) in _CONVERSATION_EVENTS:  # never sent to operations_url
        name, _, value = masked.partition(": ")
        headers.append([name.lower(), value])
    return headers


def attempt_json(d: DeliveryRecord, a: AttemptRecord, settings: WebhookSettings) -> dict[str, Any]:
    """One attempt as the API answers it: like GitHub's Recent Deliveries."""
    try:
        answered = msgspec.json.decode(a.response_headers) if a.response_headers else None
    except msgspec.DecodeError:
        answered = None
    return {
        "attempt": a.attempt,
        "at": iso(a.started_at),
        "durationMs": round(a.duration_ms, 1),
        "trigger": a.trigger,
        "url": a.url,
        "requestHeaders": request_headers(d, a, settings),
        "statusCode": a.status_code,
        "responseHeaders": answered if isinstance(answered, dict) else None,
        "error": a.error,
        "response": a.response_excerpt,
    }


def delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhookId": d.webhook_id,
        "eventType": str(d.event_type),
        "conversationId": d.conversation_id,
        "sequence": d.sequence,
        "status": d.status,
        "attempts": d.attempts,
        "lastStatusCode": d.last_status_code,
        "lastError": d.last_error,
        "createdAt": iso(d.created_at),
        "nextAttemptAt": iso(d.next_attempt_at),
    }


def _error(status: int, code: str, message: str) -> Response:
    return json({"error": {"code": code, "message": message}}, status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.code, exc.message)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "not_found", str(exc))


async def _conflict(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Conflict)
    return _error(409, exc.code, str(exc))


async def _settings_error(request: Request, exc: Exception) -> Response:
    return _error(400, "invalid_settings", str(exc))


async def _expired(request: Request, exc: Exception) -> Response:
    return _error(410, "payload_expired", str(exc))


async def _storage_error(request: Request, exc: Exception) -> Response:
    answer = _error(503, "storage_unavailable", "the database is unavailable; try again shortly")
    answer.headers["retry-after"] = "5"
    return answer


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes: dict[int, str] = {404: "not_found", 405: "method_not_allowed"}
    message: Literal["not found"] | str = exc.detail or "error"
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(message).lower())


exception_handlers: dict[Any, Any] = {
    ApiError: _api_error,
    NotFound: _not_found,
    Expired: _expired,
    Conflict: _conflict,
    SettingsError: _settings_error,
    StorageError: _storage_error,
    HTTPException: _http_error,
}


def unmask_header(
    field: str, given: str | None, current: str | None, url: str | None, current_url: str | None
) -> str | None:
    # A client that GETs the settings and PUTs them back sends the masked
    # header: keep the stored value rather than saving "****", but only for
    # the same origin: as browsers drop Authorization on a cross-origin
    # redirect, a header is never sent to a host it was not typed for.
    if given is not None and current is not None and given == mask_header(current):
        if _origin(url) != _origin(current_url):
            raise SettingsError(
                field,
                "the masked value (****) keeps the saved header only while the URL's scheme,"
                " host and port stay the same; the URL now points to another host, so type the"
                " header's value again",
            )
        return current
    return given


def _origin(url: str | None) -> tuple[str, str, int] | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port
