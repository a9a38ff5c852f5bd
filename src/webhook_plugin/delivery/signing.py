"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com).

``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``
where ``key`` is the base64-decoded part of the agent's ``whsec_`` secret.
Pure: no I/O. :func:`signed_headers` makes the headers of one attempt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time

from ..payloads import new_webhook_id
from ..settings import WebhookSettings, parse_header, secret_key

__all__ = ["new_webhook_id", "sign", "signed_headers", "verify"]


def sign(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt.

    :param secret: the ``whsec_`` secret, or its already-decoded key bytes.
    """
    key = secret if isinstance(secret, bytes) else secret_key(secret)
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(
    secret: str,
    webhook_id: str,
    timestamp: str,
    body: bytes,
    signature_header: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Check a ``webhook-signature`` header as a receiver would.

    True when one of the space-separated ``v1,`` signatures matches and the
    timestamp is within ``tolerance`` seconds of ``now``.
    """
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign(secret, webhook_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in signature_header.split())


# Settings are validated when saved; decoding the same secret and splitting the
# same header for every attempt is work the hot path need not repeat.
_key = functools.lru_cache(maxsize=4096)(secret_key)
_header = functools.lru_cache(maxsize=4096)(parse_header)


def signed_headers(
    settings: WebhookSettings, webhook_id: str, now: float, body: bytes
) -> list[tuple[str, str]]:
    """The request headers of one attempt: Standard Webhooks signature (one per
    secret in use, space-separated, during a rotation's grace period), then the
    agent's own header verbatim."""
    assert settings.signing_secret is not None
    timestamp = int(now)
    signature = " ".join(
        sign(_key(secret), webhook_id, timestamp, body) for secret in settings.signing_secrets(now)
    )
    headers = [
        ("content-type", "application/json"),
        ("webhook-id", webhook_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature),
    ]
    if settings.header:
        headers.append(_header(settings.header))
    return headers
