"""The delivery config: every knob, its default and its bounds, written once.

:class:`DeliveryConfig` is both what a host app passes to
:class:`~webhook_plugin.delivery.engine.DeliveryEngine` and the TOML
``[webhook]`` table of the reference runtime (converted straight from the
parsed TOML, unknown keys refused). Every number is finite and within its
bounds, whichever way the config was made: ``DeliveryConfig(timeout=inf)``
raises :class:`~webhook_plugin.exceptions.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from ..exceptions import ConfigError
from .retry import DEFAULT_SCHEDULE, RetryPolicy

__all__ = ["DeliveryConfig"]

_DAY: Final = 86400.0

#: a wait in ``retry_schedule``: from now up to 7 days
_Wait = Annotated[float, Meta(ge=0, le=7 * _DAY)]


class DeliveryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the delivery side can be tuned with (the TOML ``[webhook]`` table).

    Times are in seconds; the bounds are in the annotations (and the README).

    :param allow_private_hosts: hosts or networks the network guard lets through;
        ``None`` (not given) is none here, and ``webhook-plugin serve`` makes it
        the loopback ones while it has no API token and listens on loopback
        only (``CONTRACT.md`` section 4). A list given, even empty, is used as is.
    :param timeout: seconds for one delivery attempt (0.1 to 300).
    :param retry_schedule: seconds to wait before each attempt; its length (1 to
        50) is the number of attempts; each wait 0 to 7 days.
    :param jitter: +- fraction applied to each wait, in [0, 1).
    :param disable_after: seconds of failures without a success before an
        endpoint is disabled (0.1 s to 365 days).
    :param concurrency: attempts in flight at most (1 to 1024).
    :param per_endpoint_concurrency: attempts in flight at most per endpoint
        (1 to 1024).
    :param poll_interval: seconds between looks for due deliveries when idle
        (0.01 to 60).
    :param shutdown_grace: seconds attempts in flight get on shutdown (0 to 300).
    :param settings_refresh: seconds between reloads of the settings cache
        (other processes may change them): 0.1 to 3600, or 0 for never.
    :param workers: whether this process delivers (False: it only queues). A
        process role, chosen by the command (``serve --no-workers``,
        ``worker``), so not a TOML key.
    :param retention: seconds a finished delivery (and its attempts) stays in
        the log before delivery processes purge it (up to 3650 days); 0 keeps
        everything.
    :param purge_interval: seconds between purges (1 to 86400).
    :param user_info_timeout: seconds a user-info lookup may take (0.1 to 60).
    :param user_info_ttl: seconds a user-info answer is cached (0 to 86400).
    :param user_info_max_bytes: the largest user-info answer read, in bytes
        (1 KiB to 16 MiB).
    :param secret_rotation_grace: seconds the previous signing secret keeps
        signing (as a second signature) after :meth:`DeliveryEngine.rotate_secret`
        (0 to 30 days); 24 hours by default, as Svix does and the contract's
        ``rotate-secret`` (``graceSeconds``) does; 0 drops it at once.
    :param requeue_rate: deliveries queued again at once (what was held while an
        endpoint was disabled, a recovered range) start at most this many a
        second per agent, oldest first, so live events keep flowing (1 to 10,000).
    :param held_max: the most deliveries held per agent while its endpoint is
        disabled (1 to 10,000,000); beyond it the oldest fail as ``held_limit``.
    :param held_max_age: seconds a delivery is held at most (60 to 365 days);
        then it fails as ``held_expired``. Failed, both stay recoverable.
    """

    allow_private_hosts: tuple[str, ...] | None = None
    timeout: Annotated[float, Meta(ge=0.1, le=300)] = 15.0
    retry_schedule: Annotated[tuple[_Wait, ...], Meta(min_length=1, max_length=50)] = (
        DEFAULT_SCHEDULE
    )
    jitter: Annotated[float, Meta(ge=0, lt=1)] = 0.2
    disable_after: Annotated[float, Meta(ge=0.1, le=365 * _DAY)] = 5 * _DAY
    concurrency: Annotated[int, Meta(ge=1, le=1024)] = 64
    per_endpoint_concurrency: Annotated[int, Meta(ge=1, le=1024)] = 16
    poll_interval: Annotated[float, Meta(ge=0.01, le=60)] = 1.0
    shutdown_grace: Annotated[float, Meta(ge=0, le=300)] = 10.0
    settings_refresh: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    workers: bool = True
    retention: Annotated[float, Meta(ge=0, le=3650 * _DAY)] = 30 * _DAY
    purge_interval: Annotated[float, Meta(ge=1, le=_DAY)] = 3600.0
    user_info_timeout: Annotated[float, Meta(ge=0.1, le=60)] = 3.0
    user_info_ttl: Annotated[float, Meta(ge=0, le=_DAY)] = 300.0
    user_info_max_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    secret_rotation_grace: Annotated[float, Meta(ge=0, le=30 * _DAY)] = _DAY
    requeue_rate: Annotated[float, Meta(ge=1, le=10_000)] = 100.0
    held_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    held_max_age: Annotated[float, Meta(ge=60, le=365 * _DAY)] = 7 * _DAY

    def __post_init__(self) -> None:
        # msgspec checks types and bounds when it converts (TOML), not in
        # __init__: check each field against its annotation here, so that a
        # config built in Python is held to the same bounds.
        for field in _FIELDS:
            value = getattr(self, field.name)
            try:
                checked = msgspec.convert(value, field.type)
            except msgspec.ValidationError as exc:
                raise ConfigError(_where(field.name, exc)) from None
            if type(checked) is not type(value):  # a list given for a tuple, an int for a float
                msgspec.structs.force_setattr(self, field.name, checked)
        if 0 < self.settings_refresh < 0.1:
            raise ConfigError(
                f"webhook.settings_refresh: {self.settings_refresh!r} seconds is too often;"
                " use 0 (never) or 0.1 to 3600"
            )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            schedule=self.retry_schedule, jitter=self.jitter, disable_after=self.disable_after
        )


_FIELDS: Final = msgspec.structs.fields(DeliveryConfig)


def _where(name: str, exc: msgspec.ValidationError) -> str:
    """``webhook.retry_schedule[1]: Expected `float` >= 0.0``, from a field's error."""
    message, _, at = str(exc).partition(" - at `$")
    return f"webhook.{name}{at.rstrip('`')}: {message}"
