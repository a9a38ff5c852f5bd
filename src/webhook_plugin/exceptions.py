"""Every error this package raises on purpose.

Our exception hierarchy::

    WebhookPluginError
    ├── ConfigError ............ a config file or value is wrong (says which, and why)
    ├── PluginLoadError ........ a plugin named in config or an entry point cannot be loaded
    ├── SettingsError .......... per-agent webhook settings are invalid (URL, header, events)
    ├── NotFound ............... an agent, conversation or delivery does not exist
    ├── StorageError ........... the database failed (sqlite3 / psycopg errors, translated)
    └── TransportError ......... one outbound HTTP request failed
        ├── BlockedAddress ..... the network guard refused the destination (SSRF)
        ├── ConnectError ....... could not connect (refused, reset, DNS, TLS)
        ├── RequestTimeout ..... no complete answer within the time box
        └── ProtocolError ...... the peer spoke broken HTTP

Messages never contain header values or secrets.
"""

from __future__ import annotations

__all__ = [
    "BlockedAddress",
    "ConfigError",
    "ConnectError",
    "Expired",
    "NotFound",
    "PluginLoadError",
    "ProtocolError",
    "RequestTimeout",
    "SettingsError",
    "StorageError",
    "TransportError",
    "WebhookPluginError",
]


class WebhookPluginError(Exception):
    """Root of every error raised by webhook-plugin."""


class ConfigError(WebhookPluginError):
    """A configuration file or value is invalid."""


class PluginLoadError(WebhookPluginError):
    """A plugin could not be imported or registered."""


class SettingsError(WebhookPluginError, ValueError):
    """Webhook settings of an agent are invalid.

    ``field`` names the offending setting (``url``, ``header``, ``events`` ...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(WebhookPluginError, LookupError):
    """The agent, conversation or delivery asked for does not exist."""


class Expired(WebhookPluginError):
    """The delivery's payload was purged after the retention: it cannot be sent again."""


class StorageError(WebhookPluginError):
    """The storage backend failed."""


class TransportError(WebhookPluginError):
    """One outbound HTTP request failed before a complete answer arrived."""

    #: short, stable name recorded in the delivery log (``lastError``)
    code = "transport_error"


class BlockedAddress(TransportError):
    """The network guard refused the destination address."""

    code = "blocked_address"


class ConnectError(TransportError):
    """The connection could not be made or was lost."""

    code = "connect_error"


class RequestTimeout(TransportError):
    """The request did not complete within its time box."""

    code = "timeout"


class ProtocolError(TransportError):
    """The peer's answer was not valid HTTP/1.1."""

    code = "protocol_error"
