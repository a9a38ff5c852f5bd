"""``WebhookMiddleware``: the chat pipeline as pure ASGI middleware.

Wrap any ASGI app (Starlette, FastAPI, ...) and it gets, for the app's
lifetime, a plugin manager with the webhook plugin registered, a running
delivery engine and a :class:`~webhook_plugin.runtime.chat.pipeline.ChatPipeline`
that request handlers reach with :func:`pipeline_from`::

    app = Starlette(routes=[...])
    app = WebhookMiddleware(app, load_config("webhooks.toml"))

    async def on_message(request):
        pipeline = pipeline_from(request)
        outcome = await pipeline.user_message("support", conversation_id=..., ...)

The engine is started on ASGI ``lifespan.startup`` and stopped (drained)
before ``lifespan.shutdown.complete`` is passed on. Servers or test clients
that do not run the lifespan can use ``async with middleware.running():``.
Other scopes pass through untouched, apart from the pipeline placed in
``scope["state"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...delivery.engine import DeliveryEngine
from ...exceptions import WebhookPluginError
from ...manager import PluginManager
from ...plugin import WebhookPlugin
from ...storage import open_store
from ...userinfo import UserInfoFetcher
from .. import hookspecs as runtime_hookspecs
from ..config import RuntimeConfig
from ..worker.process import WorkerProcess
from . import responder
from .pipeline import ChatPipeline

__all__ = ["STATE_KEY", "WebhookMiddleware", "pipeline_from"]

STATE_KEY = "webhook_pipeline"

log = structlog.get_logger("webhook_plugin.runtime")


def pipeline_from(request_or_scope: Any) -> ChatPipeline:
    """The running :class:`ChatPipeline`, from a Starlette request or an ASGI scope."""
    scope = getattr(request_or_scope, "scope", request_or_scope)
    try:
        return scope["state"][STATE_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "no webhook pipeline in this request: wrap the app in WebhookMiddleware"
        ) from None


class WebhookMiddleware:
    """Owns the plugin manager and the delivery engine for the wrapped app's lifetime.

    :param app: the ASGI app to wrap.
    :param config: the runtime config (plugins, database, webhook tuning, agents).
    :param workers: whether this process delivers (``False``: it only queues,
        and separate ``webhook-plugin worker`` processes deliver).
    :param plugins: extra plugin objects to register (besides the config's).
    :param worker_process: with ``workers``, deliver from this child process
        (a ``webhook-plugin worker``, see :mod:`.worker_process`) rather than
        in this one.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: RuntimeConfig | None = None,
        *,
        workers: bool = True,
        plugins: Sequence[object] = (),
        worker_process: WorkerProcess | None = None,
    ) -> None:
        self.app = app
        self.config = config or RuntimeConfig()
        self.workers = workers
        self.extra_plugins = plugins
        self.worker_process = worker_process if workers else None
        self.pipeline: ChatPipeline | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ChatPipeline]:
        """Start the engine and the plugins; stop and drain on exit."""
        config = self.config
        inline = self.workers and self.worker_process is None
        engine = DeliveryEngine(
            open_store(config.runtime.database), config.delivery(workers=inline)
        )
        pm = PluginManager(runtime_hookspecs)
        fetcher = UserInfoFetcher(
            engine.client,
            timeout=engine.config.user_info_timeout,
            ttl=engine.config.user_info_ttl,
            max_bytes=engine.config.user_info_max_bytes,
        )
        pm.load(
            config.runtime.plugins,
            builtins={"webhook_plugin": WebhookPlugin(engine, fetcher)},
        )
        if config.runtime.load_entry_points:
            pm.load_entry_points()
        for plugin in self.extra_plugins:
            pm.register(plugin)
        engine.report_to(pm.hook)  # the operational hooks hear what this process's attempts cause
        if not pm.pluggy.is_registered(responder):
            # its name since 0.1 (before the runtime had rooms)
            pm.register(responder, name="webhook_plugin.runtime.responder")
        async with engine, anyio.create_task_group() as tg:
            pipeline = ChatPipeline(pm, engine, config)
            await pipeline.open_store()
            pipeline.session_key = await pipeline.blocking(
                pipeline.store.session_key, config.runtime.api_token
            )
            await tg.start(pipeline.writes.run)
            purge, delivery = anyio.CancelScope(), anyio.CancelScope()
            tg.start_soon(_run_in, purge, pipeline.writes.purge_loop)
            try:
                await pipeline.seed_agents()  # before the worker process reads them
                if self.worker_process is not None:
                    tg.start_soon(_run_in, delivery, self.worker_process.run)
                    pipeline.worker_process = self.worker_process
                self.pipeline = pipeline
                log.info("runtime.started", plugins=pm.names())
                yield pipeline
            finally:
                self.pipeline = None
                purge.cancel()
                pipeline.writes.close()  # the last messages are written, then it returns
                delivery.cancel()  # the worker process is told to stop, and waited for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self.pipeline is not None:
            scope.setdefault("state", {})[STATE_KEY] = self.pipeline
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The engine lives in a task of its own, so that its task group nests
        # cleanly whatever the wrapped app does in its own lifespan.
        started, stop, stopped = anyio.Event(), anyio.Event(), anyio.Event()
        failure: list[BaseException] = []

        async def run_engine() -> None:
            try:
                async with self.running():
                    started.set()
                    await stop.wait()
            except (WebhookPluginError, OSError) as exc:
                failure.append(exc)
            finally:
                started.set()
                stopped.set()

        async def wrapped_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                stop.set()
                await stopped.wait()
            await send(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_engine)
            await started.wait()
            if failure:
                await receive()  # lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": str(failure[0])})
                return
            if "state" in scope:
                scope["state"][STATE_KEY] = self.pipeline
            try:
                await self.app(scope, receive, wrapped_send)
            finally:
                stop.set()


async def _run_in(scope: anyio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()
