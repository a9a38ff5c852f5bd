"""The reference chat runtime: config, pure ASGI middleware, a Starlette app.

Only :mod:`webhook_plugin.cli` imports this package; a host app uses the
plugin without it, or embeds :class:`WebhookMiddleware` from here.
"""

from .app import create_app
from .chat.middleware import WebhookMiddleware, pipeline_from
from .chat.pipeline import ChatPipeline
from .config import AgentConfig, RuntimeConfig, load_config

__all__ = [
    "AgentConfig",
    "ChatPipeline",
    "RuntimeConfig",
    "WebhookMiddleware",
    "create_app",
    "load_config",
    "pipeline_from",
]
