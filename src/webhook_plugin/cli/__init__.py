"""The ``webhook-plugin`` command.

``serve``      the reference chat runtime (HTTP API + delivery workers)
``worker``     delivery workers only (on PostgreSQL, or the same SQLite file as serve --no-workers)
``deliveries`` the delivery log as a table
``redeliver``  queue deliveries again, one or every failed one since a time
``recover``    queue an agent's failed and held deliveries of a time range again
``schema``     the JSON Schema of every payload
``demo``       a conversation producing all six events, verified as they arrive

This package (and the runtime's app factory) is the only place that
configures logging: :mod:`._logging`. The commands are in :mod:`._commands`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from .._version import __version__
from ..events import OperationalEventType, WebhookEventType
from ..exceptions import WebhookPluginError
from ..storage.base import DELIVERY_STATUSES
from ._commands import (
    cmd_deliveries,
    cmd_demo,
    cmd_recover,
    cmd_redeliver,
    cmd_schema,
    cmd_serve,
    cmd_worker,
)
from ._logging import configure_logging

__all__ = ["build_parser", "configure_logging", "main"]


#: delivery ids are 1 to this (a signed 64-bit integer)
_MAX_ID = 2**63 - 1
#: the longest --failed-since duration: 100 years
_MAX_SINCE = 100 * 366 * 86400
EVENT_TYPES = [str(e) for e in (*WebhookEventType, *OperationalEventType)]


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
            help="log lines for people (console, the default) or one JSON object each",
        )
        target.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            default=argparse.SUPPRESS if suppress else "info",
            help="the least important lines logged (default info)",
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
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; another needs api_token)",
    )
    serve.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    serve.add_argument(
        "--no-workers", action="store_true", help="serve the API without delivery workers"
    )
    serve.add_argument(
        "--inline-workers",
        action="store_true",
        help="deliver in this process, not in a worker process of its own"
        " (the default on one core)",
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
    worker.add_argument("--config", help="TOML config file (default: serve's embedded SQLite)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port (GET /metrics); off by default",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="the address for --metrics-port"
    )
    # serve's own worker process: stop once standard input (a pipe from serve)
    # closes, and report (ready, then metrics every second) on standard output
    worker.add_argument("--until-stdin-closes", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)

    deliveries = command("deliveries", "show the delivery log, newest first")
    deliveries.add_argument("--config", help="TOML config file (default: the embedded SQLite)")
    deliveries.add_argument("--agent", help="only this agent's deliveries")
    deliveries.add_argument(
        "--status", choices=DELIVERY_STATUSES, help="only deliveries in this state"
    )
    deliveries.add_argument("--event-type", choices=EVENT_TYPES, help="only this event type")
    deliveries.add_argument("--conversation", help="only this conversation's deliveries")
    deliveries.add_argument("--webhook-id", help="the delivery with this webhook-id")
    deliveries.add_argument(
        "--since", type=_parse_since, metavar="WHEN", help="created since (30m, 6h, 2d or a time)"
    )
    deliveries.add_argument(
        "--until", type=_parse_since, metavar="WHEN", help="created before (as --since)"
    )
    deliveries.add_argument(
        "--limit", type=_bounded_int("limit", 100_000), default=50, help="1 to 100000"
    )
    deliveries.add_argument("--json", action="store_true", help="as the API answers it")
    deliveries.set_defaults(func=cmd_deliveries)

    redeliver = command("redeliver", "queue deliveries again (same webhook-id)")
    redeliver.add_argument(
        "delivery_id",
        nargs="?",
        type=_bounded_int("delivery ID", _MAX_ID),
        metavar="DELIVERY_ID",
        help="the delivery to queue again (see `deliveries`)",
    )
    redeliver.add_argument(
        "--failed-since",
        type=_parse_since,
        metavar="WHEN",
        help="instead: every failed delivery created since (30m, 6h, 2d or a time)",
    )
    redeliver.add_argument("--agent", help="with --failed-since: only this agent's")
    redeliver.add_argument("--config", help="TOML config file (default: the embedded SQLite)")
    redeliver.set_defaults(func=cmd_redeliver)

    recover = command(
        "recover", "queue an agent's failed and held deliveries of a time range again"
    )
    recover.add_argument("agent", metavar="AGENT", help="the agent whose deliveries to recover")
    recover.add_argument(
        "--since",
        type=_parse_since,
        required=True,
        metavar="WHEN",
        help="created since (30m, 6h, 2d or a time such as 2026-11-25T08:00:00Z)",
    )
    recover.add_argument("--until", type=_parse_since, metavar="WHEN", help="created before")
    recover.add_argument(
        "--event-type", choices=EVENT_TYPES, action="append", help="only these (repeatable)"
    )
    recover.add_argument(
        "--yes", action="store_true", help="queue them; without it, only say how many it would"
    )
    recover.add_argument("--config", help="TOML config file (default: the embedded SQLite)")
    recover.set_defaults(func=cmd_recover)

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
