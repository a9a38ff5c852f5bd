from __future__ import annotations

import re
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhook_plugin.delivery.signing import new_webhook_id, sign, verify
from webhook_plugin.settings import generate_secret


def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = generate_secret()
    body = b'{"eventType":"AGENT_USER_MESSAGE","text":"ol\xc3\xa1"}'
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "msg_1", ts, body),
    }
    assert Webhook(secret).verify(body, headers)["text"] == "olá"
    assert verify(secret, "msg_1", str(ts), body, headers["webhook-signature"])


def test_tampering_fails_verification() -> None:
    secret = generate_secret()
    ts = int(time.time())
    sig = sign(secret, "msg_1", ts, b"{}")
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(ts), "webhook-signature": sig}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b"{}", headers)
    assert not verify(secret, "msg_1", str(ts), b'{"x":1}', sig)
    assert not verify(
        secret, "msg_1", str(ts - 3600), b"{}", sign(secret, "msg_1", ts - 3600, b"{}")
    )


def test_known_vector_from_the_spec() -> None:
    # the Standard Webhooks reference test vector
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_webhook_ids_are_unique_and_time_ordered() -> None:
    ids = [new_webhook_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", i) for i in ids)
    first, later = new_webhook_id(), (time.sleep(0.002), new_webhook_id())[1]
    assert first[:16] <= later[:16]
