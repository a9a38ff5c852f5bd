"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com).

``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``
where ``key`` is the base64-decoded part of the agent's ``whsec_`` secret.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

from ..settings import secret_key

__all__ = ["new_webhook_id", "sign", "verify"]


def new_webhook_id() -> str:
    """A unique, time-ordered event id: ``msg_``, 48 bits of milliseconds and 80 random bits, in hex."""
    return f"msg_{time.time_ns() // 1_000_000:012x}{int.from_bytes(os.urandom(10)):020x}"


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
