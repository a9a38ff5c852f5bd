"""webhook-plugin: agent webhooks for chat pipelines.

Pipelines call the hooks in :mod:`webhook_plugin.hookspecs`; the
:class:`WebhookPlugin` turns them into signed, durably queued webhook
deliveries, and answers ``fetch_user_info`` for the Inbox.
"""

from ._version import __version__
from .delivery.engine import DeliveryConfig, DeliveryEngine, EndpointTest
from .events import WebhookEventType
from .exceptions import (
    BlockedAddress,
    ConfigError,
    NotFound,
    PluginLoadError,
    SettingsError,
    StorageError,
    TransportError,
    WebhookPluginError,
)
from .hookspecs import NAME, QueuedEvent, hookimpl
from .manager import PluginManager
from .models import Agent, Attachment, Contact, Conversation, Group, Message, UserInfo
from .plugin import WebhookPlugin
from .settings import WebhookSettings

__all__ = [
    "Agent",
    "Attachment",
    "BlockedAddress",
    "ConfigError",
    "Contact",
    "Conversation",
    "DeliveryConfig",
    "DeliveryEngine",
    "EndpointTest",
    "Group",
    "Message",
    "NAME",
    "NotFound",
    "PluginLoadError",
    "PluginManager",
    "QueuedEvent",
    "SettingsError",
    "StorageError",
    "TransportError",
    "UserInfo",
    "WebhookEventType",
    "WebhookPlugin",
    "WebhookPluginError",
    "WebhookSettings",
    "__version__",
    "hookimpl",
]
