"""Keeps the engine's loops running, and says when they are not.

Every loop already turns a delivery's or a database's trouble into a
recorded outcome; a :class:`Supervisor` is the last line, for a bug of ours:
a loop that raises is logged once with its traceback and restarted with
backoff, and :meth:`Supervisor.problem` reports it for a minute, so that
``/healthz`` answers 503 and an orchestrator can see it (or replace the
process). The process stays up meanwhile: its API still queues events,
durably.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc
import structlog

__all__ = ["Supervisor"]

log = structlog.get_logger("webhook_plugin.delivery")

#: seconds before a failed loop is restarted: the first wait, and the longest
RESTART_BACKOFF: Final = (0.1, 30.0)
#: seconds a failure is reported
UNHEALTHY_FOR: Final = 60.0


class Supervisor:
    """Runs loops, restarts the ones that fail, remembers the failures."""

    def __init__(self) -> None:
        #: the last failure of each loop (or of the database): (anyio time, reason)
        self._failures: dict[str, tuple[float, str]] = {}

    def failed(self, name: str, reason: str) -> None:
        """Report a failure seen elsewhere (a write to the database, say)."""
        self._failures[name] = (anyio.current_time(), reason)

    def recovered(self, name: str) -> None:
        self._failures.pop(name, None)

    def problem(self) -> str | None:
        """A failure within the last minute, or ``None``."""
        now = anyio.current_time()
        for at, reason in self._failures.values():
            if now - at < UNHEALTHY_FOR:
                return reason
        return None

    async def run(
        self,
        name: str,
        loop: Callable[..., Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``loop`` until it returns; if it raises, restart it with backoff.

        A loop started with ``task_group.start()`` gets the task status; if it
        fails before it says it started, starting fails (nothing to restart).
        """
        once = _StartedOnce(task_status)
        once.done = task_status is anyio.TASK_STATUS_IGNORED  # nobody waits for it
        delay = RESTART_BACKOFF[0]
        logged: set[str] = set()
        while True:
            began = anyio.current_time()
            try:
                if once.done:
                    await loop()
                else:
                    await loop(task_status=once)
                return
            except Exception as exc:
                if not once.done:
                    raise
                kind = type(_root_cause(exc)).__name__
                self.failed(name, f"{name} failed ({kind})")
                # the traceback once per kind of failure: a loop failing over
                # and over must not flood the log
                log.error(
                    "engine.task_failed",
                    task=name,
                    error_type=kind,
                    retry_in=delay,
                    exc_info=None if kind in logged else exc,
                )
                logged.add(kind)
            if anyio.current_time() - began > RESTART_BACKOFF[1]:
                delay = RESTART_BACKOFF[0]  # it ran well for a while: start over
            await anyio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])
            log.info("engine.task_restarted", task=name)


def _root_cause(exc: BaseException) -> BaseException:
    """The one exception inside task groups' exception groups, if there is one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _StartedOnce:
    """A task status that passes on only the first ``started()``."""

    __slots__ = ("_inner", "done")

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self._inner.started(value)
