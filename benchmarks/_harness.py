"""Shared by the benchmark scripts: timing rounds, medians, the table, --json.

Every figure is the median of several rounds, and every comparison is a ratio
against a baseline measured in the same process and run: these machines are
shared and noisy, so absolute numbers move while ratios hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

# a benchmark measures the code, not the terminal: drop info logs
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds (smoke run)")
    return p


def per_op_ns(fn: Callable[[], Any], *, rounds: int = 7, min_time: float = 0.2) -> float:
    """Median nanoseconds per call of ``fn`` over ``rounds`` rounds."""
    # calibrate: how many calls fill min_time
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed > min_time * 1e9 / 4:
            break
        n *= 2
    n = max(1, int(n * (min_time * 1e9) / max(elapsed, 1)))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter_ns() - start) / n)
    return statistics.median(samples)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, ""]
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def emit(
    args: argparse.Namespace,
    title: str,
    header: list[str],
    rows: list[list[Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    print(table(title, header, rows))
    if extra:
        for k, v in extra.items():
            print(f"{k}: {v}")
    if args.json:
        json.dump(
            {"title": title, "header": header, "rows": rows, **(extra or {})},
            sys.stdout,
            indent=2,
            default=str,
        )
        print()


def environment() -> str:
    import platform

    return f"Python {platform.python_version()} on {platform.machine()}, {platform.system()}"
