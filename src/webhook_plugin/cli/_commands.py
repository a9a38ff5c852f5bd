"""What each ``webhook-plugin`` command does (the parser is in :mod:`webhook_plugin.cli`)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from .._version import __version__
from ..exceptions import WebhookPluginError
from ._logging import configure_logging

if TYPE_CHECKING:
    from ..runtime.config import RuntimeConfig
    from ..runtime.worker.process import WorkerProcess
    from ..storage.base import Store

__all__ = [
    "cmd_deliveries",
    "cmd_demo",
    "cmd_recover",
    "cmd_redeliver",
    "cmd_schema",
    "cmd_serve",
    "cmd_worker",
]


def command_name() -> str:
    """How to run this command again, as typed in a shell here: its bare name
    when that is what the shell finds on PATH, else the path it was run by (a
    virtualenv's ``.venv/bin/webhook-plugin``), else ``python -m``."""
    ran = sys.argv[0] if sys.argv else ""
    if os.path.basename(ran) == "webhook-plugin" and os.path.isfile(ran):
        found = shutil.which("webhook-plugin")
        if found and os.path.realpath(found) == os.path.realpath(ran):
            return "webhook-plugin"
        relative = os.path.relpath(ran)
        return shlex.quote(relative if not relative.startswith("..") else ran)
    return f"{shlex.quote(os.path.basename(sys.executable))} -m webhook_plugin.cli"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load(path: str | None):  # type: ignore[no-untyped-def]
    from ..runtime.config import load_config

    return load_config(path)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..runtime.app import create_app
    from ..runtime.config import read_config
    from ..runtime.http.server import ServerLimits, serve

    config, text = read_config(args.config)
    given = config.webhook.allow_private_hosts
    config = config.for_serve(loopback_only=_is_loopback(args.host))
    local = given is None and bool(config.webhook.allow_private_hosts)
    if not config.runtime.api_token and not _is_loopback(args.host):
        raise WebhookPluginError(
            f"refusing to listen on {args.host} without an API token: set [runtime] api_token"
            " in the config, or bind 127.0.0.1"
        )
    if config.runtime.api_token and len(config.runtime.api_token) < 16:
        structlog.get_logger("webhook_plugin.cli").warning(
            "serve.weak_api_token", hint="use 16 or more random characters"
        )
    if not _is_loopback(args.host) and not config.runtime.allowed_hosts:
        structlog.get_logger("webhook_plugin.cli").warning(
            "serve.no_allowed_hosts",
            hint="only loopback Host names are answered (400 for the others): list the names"
            " browsers and clients use to reach this server in [runtime] allowed_hosts",
        )
    if args.no_workers and config.runtime.database.startswith("sqlite"):
        structlog.get_logger("webhook_plugin.cli").warning(
            "serve.no_workers_on_sqlite",
            hint="events are queued, and delivered by `webhook-plugin worker` on the same file",
        )
    app = create_app(
        config, workers=not args.no_workers, worker_process=_worker_process(args, config, text)
    )
    print(
        f"webhook-plugin {__version__} serving on http://{args.host}:{args.port}"
        f" (database {_redact(config.runtime.database)})\n"
        + (
            "Webhook URLs on this machine (127.0.0.1, localhost) are allowed: no api_token,"
            " listening on loopback only.\n"
            if local
            else ""
        )
        + f"First time here? Run `{command_name()} demo` to watch signed webhooks arrive.",
        file=sys.stderr,
    )
    limits = ServerLimits(
        head_timeout=args.head_timeout,
        body_timeout=args.body_timeout,
        timeout_keep_alive=args.timeout_keep_alive,
        max_connections=args.max_connections,
    )
    return 0 if serve(app, host=args.host, port=args.port, limits=limits) else 3


def _worker_process(
    args: argparse.Namespace, config: RuntimeConfig, text: str | None
) -> WorkerProcess | None:
    """The worker process ``serve`` delivers from, or ``None`` to deliver in its
    own (``--inline-workers``, or one core: two processes would share it)."""
    from ..runtime.worker.process import WorkerProcess

    if args.no_workers or args.inline_workers or _cores() < 2:
        return None
    # -P: not the working directory first on sys.path (serve's own is not either)
    command = [sys.executable, "-P", "-m", "webhook_plugin.cli", "worker", "--until-stdin-closes"]
    command += ["--log-format", args.log_format, "--log-level", args.log_level]
    grace = config.delivery().shutdown_grace + 10  # its attempts, then its last results
    allowed = config.webhook.allow_private_hosts  # as serve resolved it (for_serve)
    return WorkerProcess(
        command,
        text,
        args.config or "<defaults>",
        grace=grace,
        allow_private_hosts=None if allowed is None else list(allowed),
    )


def _cores() -> int:
    """The CPUs this process may run on (its affinity: a cpuset's, not a CPU quota's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    import anyio
    import anyio.lowlevel

    from ..delivery.engine import DeliveryEngine
    from ..runtime.config import config_from_text
    from ..runtime.worker.process import READY, REPORT_EVERY, HealthCollector, report
    from ..storage import open_store

    log = structlog.get_logger("webhook_plugin.cli")
    if args.until_stdin_closes:  # serve's worker process: serve stops it (see worker_process)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        hello = json.loads(_read_line(0))
        config = config_from_text(hello["config"], hello["origin"])
        if hello.get("allow_private_hosts") is not None:  # as serve resolved it
            webhook = msgspec.structs.replace(
                config.webhook, allow_private_hosts=tuple(hello["allow_private_hosts"])
            )
            config = msgspec.structs.replace(config, webhook=webhook)
    elif args.config is None:
        raise WebhookPluginError("worker needs --config FILE (the config serve runs with)")
    else:
        config = _load(args.config)
    port = args.metrics_port

    async def until_signal(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("worker.stopping", signal=signal.Signals(signum).name)
                scope.cancel()

    async def until_stdin_closes(scope: anyio.CancelScope) -> None:
        while True:
            await anyio.wait_readable(0)
            if not os.read(0, 4096):
                break
        log.info("worker.stopping", reason="serve closed its pipe")
        scope.cancel()

    async def report_to_serve(engine: DeliveryEngine, pipe: int) -> None:
        """Its metrics (its health among them) to serve, a line a second, on
        the pipe only serve holds (see runtime.worker.process)."""
        while True:
            text = await anyio.to_thread.run_sync(engine.metrics.render)
            await anyio.to_thread.run_sync(_write_all, pipe, report(text))
            await anyio.sleep(REPORT_EVERY)

    async def run() -> None:
        async with DeliveryEngine(open_store(config.runtime.database), config.delivery()) as engine:
            server = None
            if port is not None or args.until_stdin_closes:
                engine.metrics.registry.register(
                    HealthCollector(engine, anyio.lowlevel.current_token())
                )
            if port is not None:
                server = serve_metrics(engine.metrics.registry, args.metrics_host, port)
                log.info("worker.metrics", host=args.metrics_host, port=server.server_port)
            pipe = None
            if args.until_stdin_closes:  # serve waits for this line; the log goes to stderr
                pipe = os.dup(1)
                os.dup2(2, 1)  # whatever else prints cannot garble the reports
                _write_all(pipe, READY)
            # its attempts' operational events reach the plugins' hooks here
            engine.report_to(_plugins(config, engine).hook)
            log.info("worker.started")
            async with anyio.create_task_group() as tg:
                if pipe is not None:
                    tg.start_soon(until_stdin_closes, tg.cancel_scope)
                    tg.start_soon(report_to_serve, engine, pipe)
                else:
                    tg.start_soon(until_signal, tg.cancel_scope)
            if server is not None:
                server.shutdown()

    anyio.run(run)
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve_metrics(registry: Any, host: str, port: int) -> Any:
    """Prometheus metrics (``GET /metrics``) on ``host:port``, from a thread,
    with prometheus-client's WSGI app; unlike its own server, a connection that
    sends nothing for 10 s is closed (no thread kept per idle connection)."""
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    class Handler(WSGIRequestHandler):
        timeout = 10.0

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _read_line(fd: int) -> bytes:
    """One line from ``fd``, read unbuffered (the rest of the pipe is watched)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise WebhookPluginError("worker: serve's pipe closed before it gave the config")
        line += chunk
    return line


def _open_store(config: RuntimeConfig) -> Store:
    from ..storage import open_store

    database = config.runtime.database
    if database.startswith("sqlite://"):
        path = Path(database.removeprefix("sqlite://").removeprefix("/"))
        if not path.exists():
            raise WebhookPluginError(f"no database at {path}: has `webhook-plugin serve` run here?")
    store = open_store(database)
    store.open()
    return store


def _iso(ts: float | None) -> str:
    from ..runtime.timestamps import human

    return "-" if ts is None else human(ts, zone=False)


def cmd_deliveries(args: argparse.Namespace) -> int:
    store = _open_store(_load(args.config))
    try:
        rows = store.list_deliveries(
            agent_id=args.agent,
            status=args.status,
            limit=args.limit,
            event_type=args.event_type,
            conversation_id=args.conversation,
            webhook_id=args.webhook_id,
            since=args.since,
            until=args.until,
        )
    finally:
        store.close()
    if args.json:
        from ..runtime.api.io import delivery_json

        print(json.dumps([delivery_json(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no deliveries" + (f" with status {args.status}" if args.status else ""))
        return 0
    header = (
        "ID",
        "AGENT",
        "EVENT",
        "CONVERSATION",
        "SEQ",
        "STATUS",
        "TRIES",
        "LAST",
        "CREATED (UTC)",
        "NEXT (UTC)",
        "ERROR",
    )
    table = [
        (
            str(r.id),
            r.agent_id,
            str(r.event_type),
            (r.conversation_id or "-")[:40],
            str(r.sequence or "-"),
            r.status,
            str(r.attempts),
            str(r.last_status_code or "-"),
            _iso(r.created_at),
            _iso(r.next_attempt_at),
            (r.last_error or "")[:60],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_redeliver(args: argparse.Namespace) -> int:
    if args.delivery_id is None and args.failed_since is None:
        raise WebhookPluginError(
            "say what to queue again: a delivery ID (see `webhook-plugin deliveries`)"
            " or --failed-since WHEN"
        )
    if args.delivery_id is not None and args.failed_since is not None:
        raise WebhookPluginError(
            f"give either delivery ID {args.delivery_id} or --failed-since, not both"
        )
    store = _open_store(_load(args.config))
    try:
        if args.delivery_id is not None:
            record = store.redeliver(args.delivery_id, now=time.time())
            print(f"delivery {record.id} ({record.webhook_id}) queued again")
        else:
            count = store.redeliver_failed(
                agent_id=args.agent, since=args.failed_since, now=time.time()
            )
            print(f"{count} failed deliveries queued again")
    finally:
        store.close()
    return 0


def _plugins(config: Any, engine: Any) -> Any:
    """The config's plugins, loaded as ``serve`` loads them, for a process that
    delivers only (the operational hooks fire where attempts are recorded)."""
    from ..manager import PluginManager
    from ..plugin import WebhookPlugin
    from ..runtime import hookspecs as runtime_hookspecs

    pm = PluginManager(runtime_hookspecs)
    pm.load(config.runtime.plugins, builtins={"webhook_plugin": WebhookPlugin(engine)})
    if config.runtime.load_entry_points:
        pm.load_entry_points()
    return pm


def cmd_recover(args: argparse.Namespace) -> int:
    config = _load(args.config)
    store = _open_store(config)
    try:
        count = store.recover(
            args.agent,
            since=args.since,
            until=args.until,
            event_types=args.event_type,
            rate=config.delivery().requeue_rate,
            dry_run=not args.yes,
        )
    finally:
        store.close()
    if not args.yes:
        print(
            f"{count} failed or held deliveries of {args.agent!r} in that range; add --yes to queue them again"
        )
    else:
        print(f"{count} deliveries queued again, oldest first")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ..payloads import json_schemas

    print(json.dumps(json_schemas(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..runtime.demo import run_demo

    if args.log_level == "info":  # keep the transcript readable; --log-level debug shows all
        configure_logging(args.log_format, "warning")
    return run_demo(command=command_name())


def _redact(database: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:****@", database)
