"""The ``pivot-supervise`` command line.

Commands: ``run`` (one shot), ``watch`` (run, then supervise), ``stages`` (list them) and
``demo`` (a narrated tour on a bundled example).  A bad flag or configuration value is
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from .pipeline._model import PipelineSnapshot
from .supervisor._config import Config, ConfigError, load_config
from .supervisor._core import ON_ERROR_CHOICES, GenerationFailed, RunOptions
from .supervisor._events import Event
from .supervisor._logging import LEVELS, configure_logging
from .supervisor._sinks import drain, human_lines, json_line
from .supervisor._supervisor import Supervisor, make_backend

EXIT_USAGE = 2

DESCRIPTION = """\
A watch-mode supervisor for Python data pipelines.

Stages are module-level functions declared with @stage(deps=[...], outs=[...]) in the
project's pipeline file (pipeline.py by default).  `watch` runs them on a pool of worker
processes, then re-runs exactly what each saved change affects: a data change re-runs
the stages that read it (and their downstream) on the warm workers; a code or config
change starts a fresh generation of workers that imports the code as saved, and swaps
it in only if the pipeline loads there.
"""

EPILOG = """\
examples:
  pivot-supervise watch                  run every stage, then watch the project
  pivot-supervise run train --json       run `train` and what it needs; JSON events
  pivot-supervise stages                 list the stages in execution order
  pivot-supervise demo                   a narrated tour on a bundled example
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, then exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _debounce(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds 0-10000, got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected milliseconds 0-10000, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, *, running: bool) -> None:
    parser.add_argument(
        "--project",
        metavar="DIR",
        type=Path,
        default=Path("."),
        help="the project root: where pipeline.py and the config live (default: .)",
    )
    parser.add_argument(
        "--no-parallel",
        action="store_true",
        help="run stages one at a time inside the supervisor process, with no worker pool",
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default="warning",
        help="what the supervisor logs on stderr (default: warning)",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=None,
        help="stderr log format (default: console on a terminal, json otherwise)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=_JSON_HELP if running else "print the stages as one JSON document",
    )
    if not running:
        return
    parser.add_argument(
        "stages",
        nargs="*",
        metavar="STAGE",
        help="stages to run, with the stages they need (default: all)",
    )
    parser.add_argument(
        "-j",
        "--max-workers",
        type=_positive_int,
        metavar="N",
        help="at most N worker processes (default: the configuration, else the CPU count)",
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="fail",
        help="fail: stop scheduling after the first failure; keep-going: skip only the "
        "failed stage's downstream (default: fail)",
    )
    parser.add_argument(
        "--show-output",
        action="store_true",
        help="show every stage's captured stdout/stderr, not only a failing stage's",
    )


_JSON_HELP = "print one JSON event per line on stdout (and nothing else there)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pivot-supervise",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run the pipeline once; exit non-zero if a stage failed",
        description="Run the stages once, on a fresh generation of workers, then exit. "
        "The exit code is 0 when every stage succeeded, 1 otherwise, 2 for bad input.",
    )
    _common(run, running=True)

    watch = commands.add_parser(
        "watch",
        help="run the pipeline, then re-run what each saved change affects",
        description="Run the stages once, then watch the project: a data change re-runs "
        "the stages that read it and their downstream on the warm workers; a code or "
        "config change loads a fresh generation of workers and re-runs every stage. "
        "Broken code never replaces working workers. Stop with Ctrl-C or SIGTERM.",
    )
    _common(watch, running=True)
    watch.add_argument(
        "--debounce",
        type=_debounce,
        metavar="MS",
        help="group changes arriving within MS milliseconds (default: config, else 50)",
    )

    stages = commands.add_parser(
        "stages",
        help="list the stages with their deps and outs, in execution order",
        description="Load the pipeline (in a worker process) and list its stages in "
        "execution order with their deps, outs and params.",
    )
    _common(stages, running=False)

    demo = commands.add_parser(
        "demo",
        help="a narrated tour: run a bundled example, edit its data, then its code",
        description="Copy a bundled example project into a temporary directory, watch it, "
        "edit a data file (re-run on the warm workers), then a stage's code (a fresh "
        "generation), narrating each step; exits 0 when everything behaved.",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary project")
    demo.add_argument("--json", action="store_true", help="print the raw JSON events too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: str = args.command
    try:
        if command == "demo":
            from .demo import run_demo

            return run_demo(keep=args.keep, show_json=args.json)
        configure_logging(args.log_level, args.log_format)
        config = _load_config(args)
        if command == "stages":
            return _stages(config, parallel=not args.no_parallel, as_json=args.json)
        return _session(args, config, watch=command == "watch")
    except ConfigError as exc:
        print(f"pivot-supervise {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _load_config(args: argparse.Namespace) -> Config:
    config = load_config(args.project)
    return config.with_overrides(
        max_workers=getattr(args, "max_workers", None),
        debounce_ms=getattr(args, "debounce", None),
    )


def _session(args: argparse.Namespace, config: Config, *, watch: bool) -> int:
    options = RunOptions(
        parallel=not args.no_parallel,
        max_workers=config.max_workers,
        on_error=args.on_error,
    )
    supervisor = Supervisor(config, options, targets=tuple(args.stages) or None, watch=watch)
    render: Callable[[Event], list[str]]
    if args.json:
        render = _as_json_lines
    else:
        show_output: bool = args.show_output
        render = lambda event: human_lines(event, show_output=show_output)  # noqa: E731
    return run_with_sink(supervisor, render)


def run_with_sink(supervisor: Supervisor, render: Callable[[Event], list[str]]) -> int:
    """Run ``supervisor`` with its events rendered on stdout; return the exit code."""

    async def drive() -> int:
        subscription = supervisor.bus.subscribe()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, subscription, sys.stdout, render)
            return await supervisor.run()

    try:
        return trio.run(drive)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        # Ctrl-C before trio's signal handling was in place arrives wrapped in a group;
        # the supervision tree has cleaned up on the way out.
        _, rest = group.split(KeyboardInterrupt)
        if rest is not None:
            raise rest from None
        return 0


def _as_json_lines(event: Event) -> list[str]:
    return [json_line(event)]


def _stages(config: Config, *, parallel: bool, as_json: bool) -> int:
    options = RunOptions(parallel=parallel, max_workers=1)
    backend = make_backend(config, options)

    async def load() -> PipelineSnapshot | GenerationFailed:
        try:
            result = await backend.load(1, 1)
        finally:
            with trio.CancelScope(shield=True):
                await backend.aclose()
        return result if isinstance(result, GenerationFailed) else result.snapshot

    result = trio.run(load)
    if isinstance(result, GenerationFailed):
        print(f"pivot-supervise stages: the pipeline did not load: {result.error}", file=sys.stderr)
        if result.traceback:
            print(result.traceback.rstrip(), file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(_stages_document(result), default=str))
        return 0
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for spec in result.stages:
        print(spec.name)
        print(f"    deps: {', '.join(spec.deps) or '-'}")
        print(f"    outs: {', '.join(spec.outs) or '-'}")
        if spec.params is not None:
            print(f"    params: {json.dumps(dict(spec.params), default=str)}")
    return 0


def _stages_document(snapshot: PipelineSnapshot) -> dict[str, Any]:
    return {
        "stages": [
            {
                "name": spec.name,
                "module": spec.module,
                "deps": list(spec.deps),
                "outs": list(spec.outs),
                "params": None if spec.params is None else dict(spec.params),
            }
            for spec in snapshot.stages
        ],
        "warnings": list(snapshot.warnings),
    }
