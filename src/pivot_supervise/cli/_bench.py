"""``pivot-supervise bench restart|edit|dispatch``: the product's numbers, measured here.

The measuring code lives in :mod:`pivot_supervise.bench` (installed with the package);
this module only parses flags and prints.  Progress goes to stderr, results to stdout:
a table for people, or one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..bench import (
    INSTALL_HINT,
    PlotUnavailable,
    measure_dispatch,
    measure_edit,
    measure_restart,
    plot_available,
    plot_restart,
    stderr_progress,
)
from ..bench import dispatch as dispatch_bench
from ..bench import edit as edit_bench
from ..bench import restart as restart_bench
from ..supervisor._logging import configure_logging
from ._common import EXIT_USAGE, Commands, Parser, bounded_int


def register(commands: Commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure restart cost, edit-to-result latency and dispatch overhead",
        description="Benchmarks on this machine. Progress on stderr; a table on stdout, "
        "or one JSON document with --json.",
    )
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", parser_class=Parser)
    kinds.required = True

    restart = kinds.add_parser(
        "restart",
        help="restart latency against stage count: naive loky vs cold vs standby",
        description="For each stage count (pool = min(stages, max workers)) restart the "
        "pool REPEAT times with each strategy: naive (shutdown with kill_workers, new "
        "executor, one task per worker), cold (ours without standby), standby (ours). "
        "Reports the time until the new generation answered a first no-op (median, p90) "
        "and until every worker answered one, and the standby's refill time.",
    )
    restart.add_argument(
        "--stages",
        type=_stage_counts,
        default=restart_bench.DEFAULT_STAGES,
        metavar="N,N,...",
        help="stage counts to measure (default: 1,2,4,8,16,32,64)",
    )
    restart.add_argument(
        "--max-workers",
        type=bounded_int(1, 256, "workers"),
        default=restart_bench.DEFAULT_MAX_WORKERS,
        metavar="N",
        help=f"cap on the pool size (default: {restart_bench.DEFAULT_MAX_WORKERS})",
    )
    restart.add_argument(
        "--repeat",
        type=bounded_int(1, 1000, "repeats"),
        default=restart_bench.DEFAULT_REPEAT,
        metavar="R",
        help=f"restarts per stage count and strategy (default: {restart_bench.DEFAULT_REPEAT})",
    )
    restart.add_argument("--json", action="store_true", help="print one JSON document")
    restart.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help=f"also draw latency against stage count (needs matplotlib: {INSTALL_HINT})",
    )
    restart.set_defaults(handler=_restart)

    edit = kinds.add_parser(
        "edit",
        help="time from saving a stage's code to its new result, through a real supervisor",
        description="Rewrite a trivial stage's source N times in a temporary project "
        "watched by a real supervisor; time each write to the new version's "
        "stage_finished, with a breakdown: detect, load and promote, dispatch, run.",
    )
    edit.add_argument(
        "--edits",
        type=bounded_int(1, 10_000, "edits"),
        default=edit_bench.DEFAULT_EDITS,
        metavar="N",
        help=f"number of edits (default: {edit_bench.DEFAULT_EDITS})",
    )
    edit.add_argument(
        "--debounce",
        type=bounded_int(0, 10_000, "milliseconds"),
        default=edit_bench.DEFAULT_DEBOUNCE_MS,
        metavar="MS",
        help=f"the watcher's debounce (default: {edit_bench.DEFAULT_DEBOUNCE_MS})",
    )
    edit.add_argument("--json", action="store_true", help="print one JSON document")
    edit.set_defaults(handler=_edit)

    dispatch = kinds.add_parser(
        "dispatch",
        help="N trivial stages through the supervisor vs plain loky executor.map",
        description="Run N trivial independent stages through the supervisor (1 + REPEAT "
        "times in one session: the median of the forced runs on the warm generation is "
        "the one measured; the first run is reported too), and the same functions with "
        "plain loky executor.map on as many warmed-up workers (median of REPEAT); print "
        "both times and the ratio, and the same with the up-to-date checks of "
        "incremental runs on.",
    )
    dispatch.add_argument(
        "--stages",
        type=bounded_int(1, 100_000, "stages"),
        default=dispatch_bench.DEFAULT_STAGES,
        metavar="N",
        help=f"number of stages (default: {dispatch_bench.DEFAULT_STAGES})",
    )
    dispatch.add_argument(
        "--repeat",
        type=bounded_int(1, 1000, "repeat"),
        default=dispatch_bench.DEFAULT_REPEAT,
        metavar="R",
        help=f"measured runs each way (default: {dispatch_bench.DEFAULT_REPEAT})",
    )
    dispatch.add_argument("--json", action="store_true", help="print one JSON document")
    dispatch.set_defaults(handler=_dispatch)


def _stage_counts(text: str) -> tuple[int, ...]:
    parse = bounded_int(1, 10_000, "stage counts")
    try:
        counts = tuple(parse(part.strip()) for part in text.split(",") if part.strip())
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated stage counts like 1,2,4; {exc}"
        ) from None
    if not counts:
        raise argparse.ArgumentTypeError(f"expected comma-separated stage counts, got {text!r}")
    return counts


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=str))


def _restart(args: argparse.Namespace) -> int:
    configure_logging("warning", None)
    plot: Path | None = args.plot
    if plot is not None and not plot_available():
        print(
            f"pivot-supervise bench restart: error: --plot needs matplotlib, which is not "
            f"installed; install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result = measure_restart(
        args.stages, max_workers=args.max_workers, repeat=args.repeat, progress=stderr_progress
    )
    if plot is not None:
        try:
            plot_restart(result, plot)
        except PlotUnavailable as exc:
            print(f"pivot-supervise bench restart: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        stderr_progress(f"plot written to {plot}")
    if args.json:
        _print_json(result)
    else:
        print(restart_bench.format_table(result))
    return 0


def _edit(args: argparse.Namespace) -> int:
    configure_logging("warning", None)
    result = measure_edit(args.edits, debounce_ms=args.debounce, progress=stderr_progress)
    if args.json:
        _print_json(result)
    else:
        print(edit_bench.format_summary(result))
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    configure_logging("warning", None)
    result = measure_dispatch(args.stages, repeat=args.repeat, progress=stderr_progress)
    if args.json:
        _print_json(result)
    else:
        print(dispatch_bench.format_summary(result))
    return 0
