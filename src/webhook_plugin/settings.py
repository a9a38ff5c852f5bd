"""Per-agent webhook settings and their validation.

Pure: no I/O. Everything an agent owner types (URLs, ``Name: value`` headers,
event filters, signing secrets) is checked here, when the settings are saved,
with an error that names the field and says what is wrong. Whether a URL's
host may be *reached* is the network guard's job, at connect time
(:mod:`webhook_plugin.delivery.netguard`).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import idna
import msgspec

from .events import WebhookEventType
from .exceptions import SettingsError

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_URL_LENGTH",
    "SettingsInput",
    "WebhookSettings",
    "generate_secret",
    "mask_header",
    "parse_events",
    "parse_header",
    "secret_key",
    "validate_url",
]

MAX_URL_LENGTH: Final = 2048
MAX_HEADER_LENGTH: Final = 4096
SECRET_PREFIX: Final = "whsec_"
#: the values of ``ordering`` (``CONTRACT.md`` section 4)
ORDERINGS: Final = ("none", "conversation")
DEFAULT_ORDERING_MAX_WAIT: Final = 3600.0
MAX_ORDERING_MAX_WAIT: Final = 30 * 86400.0

# RFC 9110 token characters
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 9110 field-value without obs-text: visible ASCII, spaces or tabs only between them
_FIELD_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")
# RFC 9110 OWS, the only whitespace stripped around a header's name and value
_OWS: Final = " \t"
_HEADER_FORM: Final = (
    "expected 'Name: value' with a name made of letters, digits and - "
    "and the colon right after the name"
)
_FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's webhook and user-info settings.

    ``events`` of ``None`` means every event type. ``disabled`` is set by the
    delivery engine (``410 Gone``, or failing for too long) and cleared when
    the settings are saved again. After a rotation, ``previous_signing_secret``
    signs too (a second signature) until ``previous_secret_expires_at``, so
    that receivers can switch secrets without refusing a single webhook.
    """

    url: str | None = None
    header: str | None = None
    signing_secret: str | None = None
    previous_signing_secret: str | None = None
    previous_secret_expires_at: float | None = None
    events: frozenset[WebhookEventType] | None = None
    user_info_url: str | None = None
    user_info_header: str | None = None
    disabled: bool = False
    disabled_reason: str | None = None
    #: ``"conversation"``: one conversation's events are sent one at a time, in
    #: ``sequence`` order; ``"none"``: concurrently (``CONTRACT.md`` section 2, Order)
    ordering: str = "none"
    #: seconds a conversation's head event may keep failing before it is given up
    ordering_max_wait: float = DEFAULT_ORDERING_MAX_WAIT
    #: where operational events go (``ENDPOINT_DISABLED``...), signed like webhooks
    operations_url: str | None = None

    def __repr__(self) -> str:
        # A repr reaches tracebacks, debuggers and rich's "locals" panels: it
        # shows what is set, never a header value or a secret.
        shown = {
            "url": self.url,
            "header": mask_header(self.header),
            "signing_secret": "****" if self.signing_secret else None,
            "previous_signing_secret": "****" if self.previous_signing_secret else None,
            "events": sorted(self.events) if self.events is not None else None,
            "user_info_url": self.user_info_url,
            "user_info_header": mask_header(self.user_info_header),
            "disabled": self.disabled,
            "ordering": None if self.ordering == "none" else self.ordering,
            "operations_url": self.operations_url,
        }
        fields = ", ".join(f"{k}={v!r}" for k, v in shown.items() if v not in (None, False))
        return f"WebhookSettings({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # msgspec's would list every field
        return [("repr", repr(self))]

    def signing_secrets(self, now: float) -> tuple[str, ...]:
        """The secrets that sign a request made at ``now``: the current one first."""
        current = () if self.signing_secret is None else (self.signing_secret,)
        if (
            self.previous_signing_secret is not None
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        ):
            return (*current, self.previous_signing_secret)
        return current

    def wants(self, event_type: WebhookEventType) -> bool:
        """Whether an event of this type should be queued for this agent."""
        if self.url is None:  # a disabled endpoint's events are queued, and held
            return False
        return self.events is None or event_type in self.events

    @classmethod
    def validated(
        cls,
        *,
        url: str | None = None,
        header: str | None = None,
        signing_secret: str | None = None,
        events: Iterable[str] | None = None,
        user_info_url: str | None = None,
        user_info_header: str | None = None,
        ordering: str | None = None,
        ordering_max_wait: float | None = None,
        operations_url: str | None = None,
    ) -> WebhookSettings:
        """Check every value an owner typed and build the settings.

        Empty strings count as unset. A missing signing secret stays unset:
        :meth:`~webhook_plugin.DeliveryEngine.save_settings` then keeps the
        agent's current secret, or generates one for a new agent, so saving a
        new URL never changes the secret receivers verify with.

        :raises SettingsError: naming the first invalid field.
        """
        url = validate_url(url, "url") if url else None
        user_info_url = validate_url(user_info_url, "userInfoUrl") if user_info_url else None
        if header:
            parse_header(header, "header")
        if user_info_header:
            parse_header(user_info_header, "userInfoHeader")
        if signing_secret:
            secret_key(signing_secret)
        operations_url = validate_url(operations_url, "operationsUrl") if operations_url else None
        ordering = ordering or "none"
        if ordering not in ORDERINGS:
            raise SettingsError("ordering", f"must be one of {', '.join(map(repr, ORDERINGS))}")
        if ordering_max_wait is None:
            ordering_max_wait = DEFAULT_ORDERING_MAX_WAIT
        if (
            not isinstance(ordering_max_wait, int | float)
            or isinstance(ordering_max_wait, bool)
            or not 1 <= ordering_max_wait <= MAX_ORDERING_MAX_WAIT
        ):
            raise SettingsError(
                "orderingMaxWait", f"must be a number of seconds from 1 to {MAX_ORDERING_MAX_WAIT}"
            )
        return cls(
            url=url,
            header=header or None,
            signing_secret=signing_secret or None,
            events=parse_events(events) if events is not None else None,
            user_info_url=user_info_url,
            user_info_header=user_info_header or None,
            ordering=ordering,
            ordering_max_wait=float(ordering_max_wait),
            operations_url=operations_url,
        )

    @property
    def ordered(self) -> bool:
        """Whether one conversation's events are sent one at a time, in order."""
        return self.ordering == "conversation"

    def public(self) -> dict[str, object]:
        """The settings as an API answers them: camelCase, headers masked, no secret."""
        return {
            "url": self.url,
            "header": mask_header(self.header),
            "events": sorted(self.events) if self.events is not None else None,
            "userInfoUrl": self.user_info_url,
            "userInfoHeader": mask_header(self.user_info_header),
            "disabled": self.disabled,
            "disabledReason": self.disabled_reason,
            "ordering": self.ordering,
            "orderingMaxWait": self.ordering_max_wait,
            "operationsUrl": self.operations_url,
        }


class SettingsInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What an agent owner types: the ``[agents.webhook]`` table of the TOML
    config, and (camelCase, in the runtime's API) the body of a settings PUT.
    Unchecked until :meth:`validated`."""

    url: str | None = None
    header: str | None = None
    signing_secret: str | None = None
    events: list[str] | None = None
    user_info_url: str | None = None
    user_info_header: str | None = None
    ordering: str | None = None
    ordering_max_wait: float | None = None
    operations_url: str | None = None

    def validated(self) -> WebhookSettings:
        """:meth:`WebhookSettings.validated` of these values.

        :raises SettingsError: naming the first invalid field.
        """
        return WebhookSettings.validated(
            url=self.url,
            header=self.header,
            signing_secret=self.signing_secret,
            events=self.events,
            user_info_url=self.user_info_url,
            user_info_header=self.user_info_header,
            ordering=self.ordering,
            ordering_max_wait=self.ordering_max_wait,
            operations_url=self.operations_url,
        )


def validate_url(value: str, field: str = "url") -> str:
    """Check that ``value`` is an absolute ``http(s)`` URL we are willing to call.

    :raises SettingsError: saying what is wrong with it.
    """
    if not isinstance(value, str):
        raise SettingsError(field, "must be a string")
    if len(value) > MAX_URL_LENGTH:
        raise SettingsError(field, f"is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise SettingsError(field, "must not contain spaces or control characters")
    if not value.isascii():
        try:  # what the delivery client percent-encodes: UTF-8
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SettingsError(field, "is not valid Unicode (a lone surrogate)") from None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        # urllib's message quotes parts of the URL: never pass it on
        raise SettingsError(
            field, "is not a valid URL: check the host and the port (a number up to 65535)"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise SettingsError(field, "must start with http:// or https://")
    if not parts.hostname:
        raise SettingsError(field, "has no host name")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(
            field, "must not contain credentials (user@host); use the header setting instead"
        )
    if port == 0:
        raise SettingsError(field, "has an invalid port")
    if not parts.hostname.isascii():
        try:  # what the delivery client will connect to: IDNA 2008, UTS 46 mapping
            idna.encode(parts.hostname, uts46=True)
        except idna.IDNAError:
            raise SettingsError(field, "has a host name that is not a valid IDNA name") from None
    if parts.fragment:
        raise SettingsError(field, "must not contain a #fragment")
    return value


def parse_header(value: str, field: str = "header") -> tuple[str, str]:
    """Split a ``Name: value`` header, checking both halves.

    The name must be an RFC 9110 token and the value an RFC 9110 field value
    made of visible ASCII (``0x21``-``0x7E``), with spaces or tabs only between
    visible characters: what HTTP/1.1 can carry. Spaces and tabs around the
    name and the value are stripped.

    :raises SettingsError: without ever quoting any part of the header, whose
        name may be a secret too when the colon is missing or misplaced.
    """
    if not isinstance(value, str):
        raise SettingsError(field, f"must be a string: {_HEADER_FORM}")
    if len(value) > MAX_HEADER_LENGTH:
        raise SettingsError(field, f"is longer than {MAX_HEADER_LENGTH} characters")
    if any(c in value for c in "\r\n"):
        raise SettingsError(field, "must be a single 'Name: value' line, without line breaks")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise SettingsError(
            field, "must not contain control characters (such as NUL or DEL); remove them"
        )
    name, sep, rest = value.partition(":")
    name, rest = name.strip(_OWS), rest.strip(_OWS)
    if not sep or not name:
        raise SettingsError(field, _HEADER_FORM)
    if not _TOKEN.match(name):
        raise SettingsError(field, f"has characters a header name cannot have: {_HEADER_FORM}")
    if name.lower() in _FORBIDDEN_HEADERS:
        raise SettingsError(
            field, "names a header set by webhook-plugin itself; choose another name"
        )
    if not rest:
        raise SettingsError(field, "has an empty value: expected 'Name: value'")
    if not _FIELD_VALUE.fullmatch(rest):
        raise SettingsError(
            field,
            "value may only contain visible ASCII characters, with spaces between them; "
            "HTTP cannot send accented or non-Latin letters in a header, so encode the value "
            "(for example as base64) first",
        )
    return name, rest


def mask_header(value: str | None) -> str | None:
    """``"Authorization: Bearer abc"`` -> ``"Authorization: ****"``."""
    if value is None:
        return None
    name = value.partition(":")[0].strip()
    return f"{name}: ****"


def parse_events(values: Iterable[str]) -> frozenset[WebhookEventType]:
    """Turn an event filter into event types, refusing unknown names.

    :raises SettingsError: listing the unknown names and the known ones.
    """
    if isinstance(values, str):
        raise SettingsError("events", "must be a list of event types, not a string")
    known = {e.value for e in WebhookEventType}
    values = list(values)
    unknown = [v for v in values if v not in known]
    if unknown:
        raise SettingsError(
            "events",
            f"unknown event type(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}",
        )
    return frozenset(WebhookEventType(v) for v in values)


def generate_secret() -> str:
    """A new Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret.

    :raises SettingsError: when the secret is malformed (never quoting it).
    """
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise SettingsError("signingSecret", "must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError("signingSecret", "must be 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise SettingsError("signingSecret", "key must be between 24 and 64 bytes")
    return key
