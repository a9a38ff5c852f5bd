"""The runtime's TOML config (``CONTRACT.md`` section 4), parsed and checked.

Every mistake is reported with where it is (``[webhook] timeout``,
``agents[1].webhook.header``) and what is wrong; unknown keys are refused,
so that a typo does not silently fall back to a default. The ``[webhook]``
table is :class:`~webhook_plugin.delivery.config.DeliveryConfig` itself: its
knobs, defaults and bounds are written there once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from ..delivery.config import DeliveryConfig
from ..exceptions import ConfigError, SettingsError
from ..settings import SettingsInput, WebhookSettings
from .ids import id_problem, normalized_id

__all__ = ["AgentConfig", "RuntimeConfig", "config_from_text", "load_config", "read_config"]


#: a host name a browser may use to reach serve: a name, ``*.`` and a domain,
#: an IPv4 address or a bracketed IPv6 one; no scheme, port or path
_HOST_PATTERN = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]{2,45}\]$"
AllowedHost = Annotated[str, Meta(pattern=_HOST_PATTERN)]


class RuntimeSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    plugins: list[str] = msgspec.field(default_factory=lambda: ["webhook_plugin"])
    database: str = "sqlite:///webhook-plugin.db"
    api_token: Annotated[str, Meta(min_length=1)] | None = None
    load_entry_points: bool = True
    #: ``Host`` names served besides the loopback ones (``CONTRACT.md`` section 4):
    #: the names browsers use to reach this server
    allowed_hosts: Annotated[list[AllowedHost], Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )


#: receivers on this machine: what ``serve`` allows by default while it has no
#: API token and listens on loopback only (:meth:`RuntimeConfig.for_serve`)
LOOPBACK_RECEIVERS: tuple[str, ...] = ("127.0.0.0/8", "::1", "localhost")

#: the old name of the ``[webhook]`` table's type, kept for callers that build one
WebhookSection = DeliveryConfig


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Annotated[str, Meta(min_length=1, max_length=200)]
    name: str | None = None
    organization_id: str | None = None
    ai_enabled: bool = True
    webhook: SettingsInput | None = None

    def settings(self) -> WebhookSettings | None:
        """The agent's initial webhook settings, validated."""
        return None if self.webhook is None else self.webhook.validated()


class RuntimeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole config file. ``RuntimeConfig()`` is the no-config default."""

    runtime: RuntimeSection = msgspec.field(default_factory=RuntimeSection)
    webhook: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    agents: list[AgentConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, agent in enumerate(self.agents):
            agent.id = normalized_id(agent.id)
            problem = id_problem(agent.id, agent=True)
            if problem is not None:
                raise ConfigError(f"agents[{index}].id: {agent.id!r} {problem}")
            if agent.id in seen:
                raise ConfigError(f"agents[{index}]: agent id {agent.id!r} appears twice")
            seen.add(agent.id)
            try:
                agent.settings()
            except SettingsError as exc:
                raise ConfigError(f"agents[{index}].webhook.{exc.field}: {exc.message}") from None

    def for_serve(self, *, loopback_only: bool) -> RuntimeConfig:
        """The config as ``serve`` runs it: ``[webhook] allow_private_hosts``, when
        not given, is the loopback receivers while there is no API token and
        ``serve`` listens on loopback only (a receiver on this machine works on
        the first try), else none (``CONTRACT.md`` section 4)."""
        if self.webhook.allow_private_hosts is not None:
            return self
        hosts = LOOPBACK_RECEIVERS if loopback_only and not self.runtime.api_token else ()
        webhook = msgspec.structs.replace(self.webhook, allow_private_hosts=hosts)
        return msgspec.structs.replace(self, webhook=webhook)

    def delivery(self, *, workers: bool = True) -> DeliveryConfig:
        """The ``[webhook]`` table, for a process that delivers or (``workers=False``) not."""
        return msgspec.structs.replace(self.webhook, workers=workers)

    def agent(self, agent_id: str) -> AgentConfig | None:
        return next((a for a in self.agents if a.id == agent_id), None)


def parse_config(data: dict[str, Any], source: str = "config") -> RuntimeConfig:
    """Check a parsed TOML document.

    :raises ConfigError: saying where and what.
    """
    webhook = data.get("webhook")
    if isinstance(webhook, dict) and "workers" in webhook:
        raise ConfigError(
            f"{source}: webhook.workers is not a config key: the command chooses it"
            " (serve delivers, serve --no-workers does not, worker only delivers)"
        )
    try:
        return msgspec.convert(data, RuntimeConfig)
    except msgspec.ValidationError as exc:
        where = str(exc).replace("$.", "").replace("`$`", "the top level")
        raise ConfigError(f"{source}: {where}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | None) -> RuntimeConfig:
    """Read a TOML config file; ``None`` gives the embedded defaults."""
    return read_config(path)[0]


def read_config(path: str | Path | None) -> tuple[RuntimeConfig, str | None]:
    """:func:`load_config`, and the text it read (``None`` for the defaults)."""
    if path is None:
        return RuntimeConfig(), None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return config_from_text(text, str(path)), text


def config_from_text(text: str | None, source: str) -> RuntimeConfig:
    """A config from TOML text (``None``: the embedded defaults)."""
    if text is None:
        return RuntimeConfig()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source)
