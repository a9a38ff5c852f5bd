"""``webhook-plugin serve``'s delivery in a second process of its own.

One Python process is one core: measured on two cores (``benchmarks/README.md``,
the ``sqlite`` and ``sqlite-inline`` setups), the API acknowledges more messages
per second when a ``webhook-plugin worker`` process on the same database
delivers them than when its own event loop does both. So ``serve`` starts one:

- **its config from ``serve``**: the child reads serve's config text as the
  first line of its standard input (a pipe from ``serve``), so both run the
  same config even if the file changes, or was a pipe (``--config <(...)``);
- **kept running**: when it exits, or cannot be started, it is started again
  after a pause (1 s, doubling up to 30 s; back to 1 s once it ran a minute);
- **reporting over its pipe**: the child says it is ready, then writes its
  metrics every second as one line on its standard output (a pipe only
  ``serve`` holds: no port any other local user could reach), which carry its
  engine's health (``webhook_plugin_delivery_healthy``); ``/healthz`` says
  why it is down, silent or failing; one that has been silent for half a
  minute (stopped, wedged) is killed and started again. Deliveries wait in
  the outbox meanwhile, so nothing queued is lost;
- **outlives it never**: the child ignores ``SIGINT`` and ``SIGTERM`` (a
  terminal's Ctrl-C or a service manager's stop reaches ``serve``, which stops
  it in order) and stops, draining like a worker on ``SIGTERM``, once its
  standard input closes, which happens however ``serve`` ends, ``kill -9``
  included;
- **counted in ``/metrics``**: ``serve`` adds the counters of the child's last
  report to its own (:func:`~webhook_plugin.delivery.metrics.merge`), with the
  last counts of earlier children carried over so that no counter goes down
  when one is replaced.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Final

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ...delivery.engine import DeliveryEngine
from ...delivery.metrics import merge

__all__ = ["HEALTH_GAUGE", "READY", "REPORT_EVERY", "HealthCollector", "WorkerProcess", "report"]

log = structlog.get_logger("webhook_plugin.runtime")

#: seconds before a start again: the first pause, and the longest
_PAUSE: Final = (1.0, 30.0)
#: a child that ran this long is healthy: its next exit pauses the least again
_STEADY: Final = 60.0
#: seconds between the child's reports (its metrics, one line each)
REPORT_EVERY: Final = 1.0
#: the first line the child writes once its engine runs
READY: Final = b'{"ready": true}\n'
#: seconds between the supervisor's looks at whether a report came
_PROBE: Final = 5.0
#: looks in a row without a good report, before it counts as down, and is killed
_MISSES: Final = 2
_KILL_AFTER: Final = 6
#: the longest report line read (a metrics text is a few kB)
_MAX_LINE: Final = 1024 * 1024
#: the gauge the child's metrics carry: 1 when its engine is healthy
HEALTH_GAUGE: Final = "webhook_plugin_delivery_healthy"


class WorkerProcess:
    """Runs ``command`` (a ``webhook-plugin worker --until-stdin-closes``) for as
    long as :meth:`run` runs, and gives it ``config`` (the text of serve's
    config file, or ``None`` for the defaults) on its standard input.

    :param grace: seconds the child gets to finish once told to stop.
    :param start_timeout: seconds it gets to say it is ready.
    """

    def __init__(
        self,
        command: Sequence[str],
        config: str | None,
        origin: str = "<serve>",
        *,
        grace: float = 20.0,
        start_timeout: float = 30.0,
        allow_private_hosts: list[str] | None = None,
    ) -> None:
        self.command = list(command)
        hello = {"config": config, "origin": origin, "allow_private_hosts": allow_private_hosts}
        self._hello = json.dumps(hello).encode() + b"\n"
        self.grace = grace
        self.start_timeout = start_timeout
        #: the last metrics the current child reported, and what earlier ones counted
        self._last = ""
        self._carried = ""
        self._misses = 0
        #: good reports since the last look (the watchdog's)
        self._reports = 0
        #: why it is not delivering, for /healthz (None: it is)
        self._down: str | None = "the delivery worker process is starting"

    def problem(self) -> str | None:
        """Why deliveries are not being made now, or ``None``."""
        if self._down is None and self._misses >= _MISSES:
            return "the delivery worker process does not report"
        return self._down

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the child, and again whenever it exits, until cancelled (the way
        to end this: the child is then stopped). Started at once: serve answers
        (``/healthz`` with 503) while its first child starts."""
        task_status.started()
        await self._supervise()

    async def _supervise(self) -> None:
        pause = _PAUSE[0]
        while True:
            began = time.monotonic()
            reason = await self._run_once()
            # its counts go on in the next one's; its gauges were its own
            self._carried, self._last = merge(self._carried, self._last, gauges=False), ""
            if time.monotonic() - began > _STEADY:
                pause = _PAUSE[0]
            self._down = f"the delivery worker process {reason}; it starts again in {pause:g} s"
            log.error("worker_process.down", reason=reason, restart_in=pause)
            await anyio.sleep(pause)
            self._down = "the delivery worker process is starting"
            pause = min(pause * 2, _PAUSE[1])

    async def _run_once(self) -> str:
        """One child, from its start to its end: what ended it."""
        try:
            process = await anyio.open_process(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # its log lines go where ours go
                start_new_session=True,
            )
        except OSError as exc:  # the interpreter gone, or no process or file left
            return f"could not be started ({exc.strerror or exc})"
        try:
            assert process.stdin is not None and process.stdout is not None
            lines = _Lines(process.stdout)
            ready = False
            with anyio.move_on_after(self.start_timeout):
                await process.stdin.send(self._hello)
                ready = await lines.next() == READY.strip()
            if not ready:
                with anyio.move_on_after(1):  # it may be exiting: let it say how
                    await process.wait()
                if process.returncode is None:
                    log.warning("worker_process.not_ready", pid=process.pid)
                    process.kill()
                return f"did not start (exit code {await process.wait()})"
            self._misses = self._reports = 0
            self._down = None
            log.info("worker_process.started", pid=process.pid)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_reports, lines)
                tg.start_soon(self._watch, process)
                code = await process.wait()
                tg.cancel_scope.cancel()
            return f"exited with code {code}"
        except (OSError, anyio.BrokenResourceError) as exc:  # its pipe broke: it is gone
            return f"exited ({exc})"
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process, self.grace)

    async def _read_reports(self, lines: _Lines) -> None:
        """Take each report the child writes; one that does not parse is
        hostile input: counted as none, never merged."""
        while (line := await lines.next()) is not None:
            try:
                text = json.loads(line)["metrics"]
                if not isinstance(text, str):
                    raise TypeError("metrics is not a text")
                healthy = _gauge(text, HEALTH_GAUGE)  # and the whole text must parse
            except Exception as exc:
                log.warning("worker_process.bad_report", error=type(exc).__name__)
                continue
            self._reports += 1
            self._misses, self._last = 0, text
            if healthy == 0:
                self._down = "the delivery worker process reports a failure (see its log)"
            else:
                self._down = None

    async def _watch(self, process: anyio.abc.Process) -> None:
        """Every few seconds: did a good report come? A child silent for too
        long (stopped, wedged) is killed, and another started."""
        while True:
            await anyio.sleep(_PROBE)
            if self._reports:
                self._reports = 0
                continue
            self._misses += 1
            log.warning("worker_process.silent", pid=process.pid, misses=self._misses)
            if self._misses >= _KILL_AFTER:
                log.warning("worker_process.unresponsive", pid=process.pid, misses=self._misses)
                process.kill()
                return

    async def metrics(self) -> str:
        """What the children counted, in the text format: the current one's last
        report with the earlier ones' last counts added, so that counters never
        go down."""
        return merge(self._last, self._carried)


def _gauge(text: str, name: str) -> float | None:
    """A sample's value in a metrics text (ValueError if any of it does not parse)."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return next((s.value for s in samples if s.name == name), None)


class _Lines:
    """The child's standard output, a line at a time (at most :data:`_MAX_LINE`
    bytes: a longer one is dropped, read to its end)."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._skipping = False

    async def next(self) -> bytes | None:
        """The next line (without its newline), or ``None`` at the end of output."""
        while True:
            head, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                if self._skipping:
                    self._skipping = False
                    continue
                return head
            if len(self._buffer) > _MAX_LINE:
                self._buffer, self._skipping = b"", True
            try:
                self._buffer += await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None


def report(metrics_text: str) -> bytes:
    """One report line, as the child writes it."""
    return json.dumps({"metrics": metrics_text}).encode() + b"\n"


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


class HealthCollector(Collector):
    """The child's side: ``webhook_plugin_delivery_healthy``, 1 while its engine
    is healthy, read from the metrics server's thread on the engine's loop."""

    def __init__(self, engine: DeliveryEngine, token: anyio.lowlevel.EventLoopToken) -> None:
        self._engine, self._token = engine, token

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(HEALTH_GAUGE, "")  # without reading it (at registration)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            problem = anyio.from_thread.run_sync(self._engine.health, token=self._token)
        except RuntimeError:  # its loop is gone: it is stopping
            problem = "stopping"
        yield GaugeMetricFamily(
            HEALTH_GAUGE,
            "1 while the delivery engine is healthy (its log says why not).",
            value=0 if problem else 1,
        )
