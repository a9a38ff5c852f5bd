"""The delivery engine: outbox, dispatcher, retry policy, signing, network guard, HTTP client.

Nothing here imports the plugin, the reference runtime or the CLI.
"""

from .client import Http11Client, HttpClient, Response
from .engine import DeliveryConfig, DeliveryEngine
from .netguard import NetworkGuard
from .outbox import Outbox, Ticket
from .retry import DEFAULT_SCHEDULE, RetryPolicy
from .signing import new_webhook_id, sign, verify

__all__ = [
    "DEFAULT_SCHEDULE",
    "DeliveryConfig",
    "DeliveryEngine",
    "Http11Client",
    "HttpClient",
    "NetworkGuard",
    "Outbox",
    "Response",
    "RetryPolicy",
    "Ticket",
    "new_webhook_id",
    "sign",
    "verify",
]
