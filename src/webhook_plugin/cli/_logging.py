"""Logging for the command line: readable in a terminal, or JSON lines."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


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
