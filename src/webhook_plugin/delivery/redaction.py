"""What a receiver's answer must not carry into the delivery log: our secrets.

A receiver that echoes requests (as httpbin does) would put the agent's
header value, or a signing secret, into the answer excerpt the delivery log
keeps and its API returns. :func:`redact` takes them out before it is
written, whether they stand as sent, JSON-escaped, or cut by the excerpt's
end. Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import msgspec

from ..settings import WebhookSettings, parse_header

__all__ = ["might_hold", "redact", "secrets_of"]

#: the shortest text taken for a secret (shorter ones are not secrets)
_MIN_SECRET: Final = 4

_header = functools.lru_cache(maxsize=4096)(parse_header)


def secrets_of(settings: WebhookSettings) -> tuple[str, ...]:
    """What must never be stored from an answer: our header's value (and its
    token, without an auth scheme) and the signing secrets."""
    found: list[str] = []
    if settings.header:
        value = _header(settings.header)[1]
        found.append(value)
        _scheme, _, token = value.partition(" ")
        if token.strip() and len(token.strip()) >= _MIN_SECRET:
            found.append(token.strip())
    for secret in (settings.signing_secret, settings.previous_signing_secret):
        if secret:
            found += [secret, secret.removeprefix("whsec_")]
    return tuple(s for s in found if len(s) >= _MIN_SECRET)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` without any of ``secrets``, as they are or JSON-escaped, and
    without a secret's beginning where the text was cut."""
    for secret in sorted(secrets, key=len, reverse=True):
        escaped = _json_string(secret)
        for form in {secret, escaped}:
            if form in text:
                text = text.replace(form, "****")
        for form in {secret, escaped}:
            for k in range(min(len(form) - 1, len(text)), _MIN_SECRET - 1, -1):
                if text.endswith(form[:k]):
                    text = text[:-k] + "****"
                    break
    return text


def might_hold(text: str, secrets: Sequence[str]) -> bool:
    """Whether :func:`redact` could find anything in ``text`` (or in a part of
    it): whether it holds the beginning of a secret, as it is or JSON-escaped."""
    return any(
        form[:_MIN_SECRET] in text for secret in secrets for form in (secret, _json_string(secret))
    )


def _json_string(value: str) -> str:
    return msgspec.json.encode(value).decode()[1:-1]
