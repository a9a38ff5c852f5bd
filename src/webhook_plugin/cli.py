"""The ``webhook-plugin`` command.

``serve``      the reference chat runtime (HTTP API + delivery workers)
``worker``     delivery workers only (on PostgreSQL, or the same SQLite file as serve --no-workers)
``deliveries`` the delivery log as a table
``redeliver``  queue deliveries again, one or every failed one since a time
``schema``     the JSON Schema of every payload
``demo``       a conversation producing all six events, verified as they arrive

This module (and the runtime's app factory) is the only place that
configures logging.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ._version import __version__
from .exceptions import WebhookPluginError

if TYPE_CHECKING:
    from .runtime.config import RuntimeConfig
    from .storage.base import Store

__all__ = ["main"]


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Logs to stderr: readable in a terminal, or one JSON object per line.

    Tracebacks never show local variables, which may hold header values and
    signing secrets: JSON logs carry them as structured data (a list of stacks
    under ``exception``), console logs as text.
    """
    renderers: list[structlog.typing.Processor]
    if fmt == "json":
        renderers = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        colors = sys.stderr.isatty()
        formatter: structlog.typing.ExceptionRenderer = structlog.dev.plain_traceback
        try:
            import rich  # noqa: F401  # structlog's richer tracebacks, when installed
        except ImportError:
            pass
        else:
            formatter = structlog.dev.RichTracebackFormatter(
                color_system="truecolor" if colors else None, show_locals=False
            )
        renderers = [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load(path: str | None):  # type: ignore[no-untyped-def]
    from .runtime.config import load_config

    return load_config(path)


# -- commands ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .runtime.app import create_app
    from .runtime.server import ServerLimits, serve

    config = _load(args.config)
    if not config.runtime.api_token and not _is_loopback(args.host):
        raise WebhookPluginError(
            f"refusing to listen on {args.host} without an API token: set [runtime] api_token"
            " in the config, or bind 127.0.0.1"
        )
    if config.runtime.api_token and len(config.runtime.api_token) < 16:
        structlog.get_logger("webhook_plugin.cli").warning(
            "serve.weak_api_token", hint="use 16 or more random characters"
        )
    if args.no_workers and config.runtime.database.startswith("sqlite"):
        structlog.get_logger("webhook_plugin.cli").warning(
            "serve.no_workers_on_sqlite",
            hint="events are queued, and delivered by `webhook-plugin worker` on the same file",
        )
    app = create_app(config, workers=not args.no_workers)
    print(
        f"webhook-plugin {__version__} serving on http://{args.host}:{args.port}"
        f" (database {_redact(config.runtime.database)})\n"
        "First time here? Run `webhook-plugin demo` to watch six signed webhooks arrive.",
        file=sys.stderr,
    )
    limits = ServerLimits(
        head_timeout=args.head_timeout,
        body_timeout=args.body_timeout,
        timeout_keep_alive=args.timeout_keep_alive,
        max_connections=args.max_connections,
    )
    return 0 if serve(app, host=args.host, port=args.port, limits=limits) else 3


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    import anyio

    from .delivery.engine import DeliveryEngine
    from .storage import open_store

    config = _load(args.config)
    log = structlog.get_logger("webhook_plugin.cli")

    async def run() -> None:
        async with DeliveryEngine(open_store(config.runtime.database), config.delivery()) as engine:
            if args.metrics_port is not None:
                from prometheus_client import start_http_server

                # a thread of its own: a scrape reads the backlog with a blocking call
                server, _ = start_http_server(
                    args.metrics_port, addr=args.metrics_host, registry=engine.metrics.registry
                )
                log.info("worker.metrics", host=args.metrics_host, port=args.metrics_port)
            log.info("worker.started")
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("worker.stopping", signal=signal.Signals(signum).name)
                    break
            if args.metrics_port is not None:
                server.shutdown()

    anyio.run(run)
    return 0


def _open_store(config: RuntimeConfig) -> Store:
    from .storage import open_store

    database = config.runtime.database
    if database.startswith("sqlite://"):
        path = Path(database.removeprefix("sqlite://").removeprefix("/"))
        if not path.exists():
            raise WebhookPluginError(f"no database at {path}: has `webhook-plugin serve` run here?")
    store = open_store(database)
    store.open()
    return store


def _iso(ts: float | None) -> str:
    from .runtime.timestamps import human

    return "-" if ts is None else human(ts, zone=False)


def cmd_deliveries(args: argparse.Namespace) -> int:
    store = _open_store(_load(args.config))
    try:
        rows = store.list_deliveries(agent_id=args.agent, status=args.status, limit=args.limit)
    finally:
        store.close()
    if args.json:
        from .runtime.api_io import delivery_json

        print(json.dumps([delivery_json(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no deliveries" + (f" with status {args.status}" if args.status else ""))
        return 0
    header = (
        "ID",
        "AGENT",
        "EVENT",
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


#: delivery ids are 1 to this (a signed 64-bit integer)
_MAX_ID = 2**63 - 1
#: the longest --failed-since duration: 100 years
_MAX_SINCE = 100 * 366 * 86400


def _bounded_int(what: str, high: int) -> Callable[[str], int]:
    """An argparse type: a decimal whole number from 1 to ``high``."""

    def parse(value: str) -> int:
        number = int(value) if re.fullmatch(r"[0-9]{1,30}", value) else 0
        if not 1 <= number <= high:
            raise argparse.ArgumentTypeError(
                f"{value!r:.40} is not a valid {what}: give a whole number from 1 to {high}"
            )
        return number

    return parse


def _parse_since(value: str) -> float:
    match = re.fullmatch(r"(\d{1,30})([smhd])", value, re.ASCII)
    if match:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        if seconds > _MAX_SINCE:
            raise argparse.ArgumentTypeError(f"{value!r:.40}: give a duration of 100 years or less")
        return time.time() - seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a duration (30m, 6h, 2d) or an ISO time (2026-11-25T08:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def cmd_redeliver(args: argparse.Namespace) -> int:
    if (args.delivery_id is None) == (args.failed_since is None):
        raise WebhookPluginError("give either a delivery ID or --failed-since, not both")
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


def cmd_schema(args: argparse.Namespace) -> int:
    from .payloads import json_schemas

    print(json.dumps(json_schemas(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .runtime.demo import run_demo

    if args.log_level == "info":  # keep the transcript readable; --log-level debug shows all
        configure_logging(args.log_format, "warning")
    return run_demo()


def _redact(database: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:****@", database)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhook-plugin", description="Agent webhooks for chat pipelines."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # the logging options work before or after the command name
    logging_options = argparse.ArgumentParser(add_help=False)
    for target, suppress in ((parser, False), (logging_options, True)):
        target.add_argument(
            "--log-format",
            choices=["console", "json"],
            default=argparse.SUPPRESS if suppress else "console",
        )
        target.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            default=argparse.SUPPRESS if suppress else "info",
        )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, parents=[logging_options])

    def positive(kind: type[float | int]):  # type: ignore[no-untyped-def]
        def parse(value: str) -> float | int:
            try:
                number = kind(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
            if not number > 0:
                raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
            return number

        return parse

    serve = command("serve", "serve the reference chat runtime")
    serve.add_argument("--config", help="TOML config file (default: embedded SQLite, no agents)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--no-workers", action="store_true", help="serve the API without delivery workers"
    )
    serve.add_argument(
        "--head-timeout",
        type=positive(float),
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request head is not complete in time (default 10)",
    )
    serve.add_argument(
        "--body-timeout",
        type=positive(float),
        default=30.0,
        metavar="SECONDS",
        help="answer 408 when a request body takes longer (default 30)",
    )
    serve.add_argument(
        "--timeout-keep-alive",
        type=positive(float),
        default=5.0,
        metavar="SECONDS",
        help="close a kept-alive connection idle this long (default 5)",
    )
    serve.add_argument(
        "--max-connections",
        type=positive(int),
        default=None,
        metavar="N",
        help="open connections at most; more are answered 503 and closed"
        " (default half the open-file limit, at most 4096)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = command("worker", "run delivery workers only (PostgreSQL, or a SQLite file)")
    worker.add_argument("--config", required=True)
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port (GET /metrics); off by default",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="the address for --metrics-port"
    )
    worker.set_defaults(func=cmd_worker)

    deliveries = command("deliveries", "show the delivery log")
    deliveries.add_argument("--config")
    deliveries.add_argument("--agent")
    deliveries.add_argument("--status", choices=["pending", "succeeded", "failed"])
    deliveries.add_argument(
        "--limit", type=_bounded_int("limit", 100_000), default=50, help="1 to 100000"
    )
    deliveries.add_argument("--json", action="store_true")
    deliveries.set_defaults(func=cmd_deliveries)

    redeliver = command("redeliver", "queue deliveries again (same webhook-id)")
    redeliver.add_argument(
        "delivery_id", nargs="?", type=_bounded_int("delivery ID", _MAX_ID), metavar="DELIVERY_ID"
    )
    redeliver.add_argument("--failed-since", type=_parse_since, metavar="WHEN")
    redeliver.add_argument("--agent")
    redeliver.add_argument("--config")
    redeliver.set_defaults(func=cmd_redeliver)

    schema = command("schema", "print the JSON Schema of every payload")
    schema.set_defaults(func=cmd_schema)

    demo = command("demo", "play a conversation and watch six webhooks arrive")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        return int(args.func(args))
    except WebhookPluginError as exc:
        print(f"webhook-plugin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
