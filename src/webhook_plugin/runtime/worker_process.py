"""``webhook-plugin serve``'s delivery in a second process of its own.

One Python process is one core: measured on two cores (``benchmarks/README.md``,
the ``sqlite`` and ``sqlite-split`` setups), the API acknowledges messages
faster when a ``webhook-plugin worker`` process on the same database delivers
them than when its own event loop does both. So ``serve`` starts one, and:

- **keeps it running**: when it exits, it is started again after a pause
  (1 s, doubling up to 30 s; back to 1 s once it ran a minute), and
  ``/healthz`` says it is down meanwhile. Deliveries wait in the outbox, under
  no lease or one that runs out, so nothing queued is lost;
- **outlives it never**: the child reads its standard input, a pipe from
  ``serve``, and stops (draining like on ``SIGTERM``) once that pipe closes,
  which happens however ``serve`` ends, ``kill -9`` included. It runs in a
  session of its own, so a terminal's Ctrl-C reaches ``serve`` only, which
  then stops it in order;
- **counts in ``/metrics``**: the child serves its registry on a loopback port
  it chose (it prints the port as its first line), and ``serve`` adds those
  counters to its own (:func:`~webhook_plugin.delivery.metrics.merge`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.abc
import httpx
import structlog

__all__ = ["WorkerProcess"]

log = structlog.get_logger("webhook_plugin.runtime")

#: seconds before a start again: the first pause, and the longest
_PAUSE: Final = (1.0, 30.0)
#: a child that ran this long is healthy: its next exit pauses the least again
_STEADY: Final = 60.0
#: seconds to scrape the child's metrics
_SCRAPE_TIMEOUT: Final = 5.0


class WorkerProcess:
    """Runs ``command`` (a ``webhook-plugin worker`` that stops when its standard
    input closes and prints its metrics port first) for as long as :meth:`run` runs.

    :param grace: seconds the child gets to finish its attempts once told to stop.
    :param start_timeout: seconds it gets to say its metrics port.
    """

    def __init__(
        self, command: Sequence[str], *, grace: float = 20.0, start_timeout: float = 30.0
    ) -> None:
        self.command = list(command)
        self.grace = grace
        self.start_timeout = start_timeout
        self._metrics_url: str | None = None
        #: why it is not running, for /healthz (None: it is)
        self._down: str | None = "the delivery worker process is starting"

    def problem(self) -> str | None:
        """Why deliveries are not being made now, or ``None``."""
        return self._down

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the child, and again whenever it exits, until cancelled (the way
        to end this: the child is then stopped). Started once the first child
        is ready, or could not start."""
        pause = _PAUSE[0]
        starting: anyio.abc.TaskStatus[None] | None = task_status
        while True:
            began = time.monotonic()
            code = await self._run_once(starting)
            starting = None
            if time.monotonic() - began > _STEADY:
                pause = _PAUSE[0]
            self._down = (
                f"the delivery worker process exited with code {code};"
                f" it starts again in {pause:g} s"
            )
            log.error("worker_process.exited", code=code, restart_in=pause)
            await anyio.sleep(pause)
            pause = min(pause * 2, _PAUSE[1])

    async def _run_once(self, starting: anyio.abc.TaskStatus[None] | None) -> int:
        """One child, from its start to its exit code."""
        process = await anyio.open_process(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # its log lines go where ours go
            start_new_session=True,
        )
        try:
            with anyio.move_on_after(self.start_timeout):
                port = await _first_line_port(process)
                if port is not None:
                    self._metrics_url = f"http://127.0.0.1:{port}/metrics"
                    self._down = None
                    log.info("worker_process.started", pid=process.pid)
            if self._down is not None:  # it never said it was ready
                process.kill()
            if starting is not None:
                starting.started()
            return await process.wait()
        finally:
            self._metrics_url = None
            with anyio.CancelScope(shield=True):
                await _stop(process, self.grace)

    async def metrics(self) -> str:
        """The child's metrics in the text format (empty while it is down or
        when it does not answer)."""
        url = self._metrics_url
        if url is None:
            return ""
        try:
            async with httpx.AsyncClient(timeout=_SCRAPE_TIMEOUT, trust_env=False) as client:
                response = await client.get(url)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("worker_process.metrics_unavailable", error=type(exc).__name__)
            return ""
        return response.text


async def _first_line_port(process: anyio.abc.Process) -> int | None:
    """The metrics port the child prints first (``{"metrics_port": N}``), or
    ``None`` if it ends its output before."""
    assert process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        try:
            buffer += await process.stdout.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
        if len(buffer) > 4096:
            return None
    try:
        port = json.loads(buffer.split(b"\n", 1)[0])["metrics_port"]
    except (ValueError, KeyError, TypeError):
        return None
    return port if isinstance(port, int) and 0 < port < 65536 else None


async def _stop(process: anyio.abc.Process, grace: float) -> None:
    """Close the child's standard input (it drains and exits), then kill it
    after ``grace`` seconds."""
    if process.returncode is None:
        if process.stdin is not None:
            try:
                await process.stdin.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            log.warning("worker_process.killed", pid=process.pid, grace=grace)
            process.kill()
            await process.wait()
    await process.aclose()
