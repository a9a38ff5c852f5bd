"""A typed facade around pluggy's ``PluginManager``.

It knows our hookspecs, loads plugins named in config (dotted module paths)
and those published under the ``webhook_plugin`` entry-point group, and turns
every failure into a :class:`~webhook_plugin.exceptions.PluginLoadError` that
names the plugin. There is no global manager: each runtime or host app builds
its own.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Awaitable, Iterable, Mapping
from types import ModuleType

import pluggy

from . import hookspecs
from .exceptions import PluginLoadError
from .hookspecs import NAME
from .models import Agent, Conversation, Group, Message, UserInfo
from .payloads import OperationalEvent

__all__ = ["PluginManager"]


class PluginManager:
    """Registers plugins and calls them.

    A typed method per hook (:meth:`on_user_message` ...) calls every plugin
    that implements it, with keyword arguments as the hookspecs require;
    :attr:`hook` is pluggy's relay, for hooks added by extra hookspecs.
    """

    def __init__(self, *extra_hookspecs: ModuleType | type) -> None:
        self._pm = pluggy.PluginManager(NAME)
        self._pm.add_hookspecs(hookspecs)
        for spec in extra_hookspecs:
            self._pm.add_hookspecs(spec)

    @property
    def hook(self) -> pluggy.HookRelay:
        """The hook relay: ``pm.hook.on_agent_reply(agent=..., ...)``."""
        return self._pm.hook

    # the hooks, typed (hookspecs.py says when each fires) ---------------------------------

    def on_user_message(
        self, *, agent: Agent, conversation: Conversation, message: Message
    ) -> list[Awaitable[object]]:
        """Every plugin's answer to a user's message (the queued events among them)."""
        results: list[Awaitable[object]] = self._pm.hook.on_user_message(
            agent=agent, conversation=conversation, message=message
        )
        return results

    def on_agent_reply(
        self,
        *,
        agent: Agent,
        conversation: Conversation,
        message: Message,
        in_reply_to: Message | None,
    ) -> list[Awaitable[object]]:
        results: list[Awaitable[object]] = self._pm.hook.on_agent_reply(
            agent=agent, conversation=conversation, message=message, in_reply_to=in_reply_to
        )
        return results

    def on_blocked(
        self, *, agent: Agent, conversation: Conversation, message: Message, reason: str
    ) -> list[Awaitable[object]]:
        results: list[Awaitable[object]] = self._pm.hook.on_blocked(
            agent=agent, conversation=conversation, message=message, reason=reason
        )
        return results

    def on_noted(
        self, *, agent: Agent, conversation: Conversation, message: Message, reason: str
    ) -> list[Awaitable[object]]:
        results: list[Awaitable[object]] = self._pm.hook.on_noted(
            agent=agent, conversation=conversation, message=message, reason=reason
        )
        return results

    def on_group_message(
        self, *, agent: Agent, conversation: Conversation, message: Message, group: Group
    ) -> list[Awaitable[object]]:
        results: list[Awaitable[object]] = self._pm.hook.on_group_message(
            agent=agent, conversation=conversation, message=message, group=group
        )
        return results

    def fetch_user_info(
        self, *, agent: Agent, conversation: Conversation
    ) -> Awaitable[UserInfo] | None:
        """The first plugin's user-info fetch (``firstresult``), or ``None``."""
        result: Awaitable[UserInfo] | None = self._pm.hook.fetch_user_info(
            agent=agent, conversation=conversation
        )
        return result

    # the operational hooks (the delivery engine calls them: engine.report_to(pm.hook))

    def on_endpoint_failing(self, *, event: OperationalEvent) -> None:
        self._pm.hook.on_endpoint_failing(event=event)

    def on_endpoint_disabled(self, *, event: OperationalEvent) -> None:
        self._pm.hook.on_endpoint_disabled(event=event)

    def on_endpoint_recovered(self, *, event: OperationalEvent) -> None:
        self._pm.hook.on_endpoint_recovered(event=event)

    def on_delivery_exhausted(self, *, event: OperationalEvent) -> None:
        self._pm.hook.on_delivery_exhausted(event=event)

    @property
    def pluggy(self) -> pluggy.PluginManager:
        """The underlying pluggy manager, for advanced use (tracing, blocking)."""
        return self._pm

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module, validating it against the hookspecs.

        :raises PluginLoadError: when it implements a hook wrongly (unknown hook,
            unknown argument) or is registered twice.
        """
        label = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        try:
            registered = self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            raise PluginLoadError(f"plugin {label!r} cannot be registered: {exc}") from exc
        if registered is None:  # blocked by name
            raise PluginLoadError(f"plugin {label!r} is blocked")
        return registered

    def load(self, names: Iterable[str], builtins: Mapping[str, object] | None = None) -> None:
        """Register the plugins a config names.

        :param names: dotted module paths, or keys of ``builtins``.
        :param builtins: plugin objects that need construction by the host
            (the webhook plugin itself needs its outbox), by the name config uses.
        :raises PluginLoadError: naming the first plugin that cannot be loaded.
        """
        builtins = builtins or {}
        for name in names:
            if name in builtins:
                if not self._pm.is_registered(builtins[name]):
                    self.register(builtins[name], name=name)
                continue
            if self._pm.has_plugin(name):
                continue
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # ImportError, or the module itself failed
                raise PluginLoadError(
                    f"plugin {name!r} cannot be imported: {type(exc).__name__}: {exc}"
                ) from exc
            self.register(module, name=name)

    def load_entry_points(self) -> int:
        """Register every plugin published under the ``webhook_plugin`` entry-point group.

        :return: how many were registered.
        :raises PluginLoadError: naming the entry point that failed.
        """
        count = 0
        for ep in importlib.metadata.entry_points(group=NAME):
            if self._pm.has_plugin(ep.name) or self._pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"entry point {ep.name!r} ({ep.value}) cannot be loaded: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.register(plugin, name=ep.name)
            count += 1
        return count

    def names(self) -> list[str]:
        """Names of the registered plugins, sorted."""
        return sorted(name for name, _ in self._pm.list_name_plugin() if name)
