"""``pivot-supervise run`` and ``watch``: a supervisor session with its events on stdout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import trio

from ..supervisor._core import ON_ERROR_CHOICES, RunOptions
from ..supervisor._events import Event
from ..supervisor._server import DEFAULT_HOST, ApiServer, is_loopback_host
from ..supervisor._server_file import (
    AlreadyRunning,
    ServerFileError,
    ServerInfo,
    live_server,
    server_file,
)
from ..supervisor._sinks import drain, human_lines, json_line
from ..supervisor._supervisor import Service, Supervisor
from ._common import Commands, add_logging, add_project, bounded_int, setup

#: What ``--force`` without a stage name stands for: every stage of the first run.
FORCE_ALL = "*"


def add_session_flags(parser: argparse.ArgumentParser) -> None:
    add_project(parser)
    parser.add_argument(
        "--force",
        nargs="?",
        const=FORCE_ALL,
        action="append",
        metavar="STAGE",
        help="run stages even if they are up to date: every stage with a bare --force, or "
        "the named one (repeatable: --force a --force b); in watch, the first run only",
    )
    parser.add_argument(
        "stages",
        nargs="*",
        metavar="STAGE",
        help="stages to run, with the stages they need (default: all)",
    )
    parser.add_argument(
        "-j",
        "--max-workers",
        type=bounded_int(1, None, "workers"),
        metavar="N",
        help="at most N worker processes (default: the configuration, else the CPU count)",
    )
    parser.add_argument(
        "--no-parallel",
        action="store_true",
        help="run stages one at a time inside the supervisor process, with no worker pool",
    )
    parser.add_argument(
        "--standby",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the next generation's workers started and idle ahead of time, so a "
        "code change restarts at once (costs one idle pool's memory; default: on)",
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="fail",
        help="fail: stop scheduling after the first failure; keep-going: skip only the "
        "failed stage's downstream (default: fail)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON event per line on stdout (and nothing else there)",
    )
    parser.add_argument(
        "--show-output",
        action="store_true",
        help="show every stage's captured stdout/stderr, not only a failing stage's",
    )
    add_logging(parser)


def register(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="run the pipeline once; exit non-zero if a stage failed",
        description="Run the stages once, on a fresh generation of workers, then exit. "
        "The exit code is 0 when every stage succeeded, 1 otherwise, 2 for bad input.",
    )
    add_session_flags(run)
    run.set_defaults(handler=_run)

    watch = commands.add_parser(
        "watch",
        help="run the pipeline, then re-run what each saved change affects",
        description="Run the stages once, then watch the project: a data change re-runs "
        "the stages that read it and their downstream on the warm workers; a code or "
        "config change loads a fresh generation of workers and re-runs every stage. "
        "Broken code never replaces working workers. Stop with Ctrl-C or SIGTERM.",
    )
    add_session_flags(watch)
    watch.add_argument(
        "--debounce",
        type=bounded_int(0, 10_000, "milliseconds"),
        metavar="MS",
        help="group changes arriving within MS milliseconds (default: config, else 50)",
    )
    watch.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address the live API listens on (default: {DEFAULT_HOST}; anything else "
        "exposes it beyond this machine, guarded only by the token)",
    )
    watch.add_argument(
        "--port",
        type=bounded_int(0, 65535, "a port"),
        default=0,
        metavar="PORT",
        help="port of the live API (default: 0, a free port; see .pivot-supervise/server.json)",
    )
    watch.add_argument(
        "--no-server", action="store_true", help="do not serve the live API (WebSocket)"
    )
    watch.set_defaults(handler=_watch)


def _run(args: argparse.Namespace) -> int:
    return run_session(args, watch=False)


def _watch(args: argparse.Namespace) -> int:
    return run_session(args, watch=True)


def run_session(args: argparse.Namespace, *, watch: bool) -> int:
    config = setup(args)
    options = RunOptions(
        parallel=not args.no_parallel,
        max_workers=config.max_workers,
        on_error=args.on_error,
    )
    services: list[Service] = []
    if watch and not args.no_server:
        refusal = _api_refusal(config.project_root, args.host)
        if refusal is not None:
            print(f"pivot-supervise watch: error: {refusal}", file=sys.stderr)
            return 1
        services.append(ApiServer(args.host, args.port, on_ready=_announce_api))
    supervisor = Supervisor(
        config,
        options,
        targets=tuple(args.stages) or None,
        watch=watch,
        services=services,
        standby=args.standby,
        force=_force(args.force),
    )
    render: Callable[[Event], list[str]]
    if args.json:
        render = _as_json_lines
    else:
        show_output: bool = args.show_output
        render = lambda event: human_lines(event, show_output=show_output)  # noqa: E731
    try:
        return run_with_sink(supervisor, render)
    except (ServerFileError, BaseExceptionGroup) as exc:
        # Lost a race with another supervisor starting on the same project.
        found = _first(exc, ServerFileError)
        if found is None:
            raise
        print(f"pivot-supervise watch: error: {found}", file=sys.stderr)
        return 1


def _force(values: list[str] | None) -> bool | frozenset[str]:
    if not values:
        return False
    if FORCE_ALL in values:
        return True
    return frozenset(values)


def _first(exc: BaseException, kind: type[Exception]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, _ = cast("BaseExceptionGroup[BaseException]", exc).split(kind)
        if matched is not None:
            return _first(matched.exceptions[0], kind)
    return None


def _api_refusal(project_root: Path, host: str) -> str | None:
    """Why the live API cannot start here (another supervisor runs), or ``None``;
    warns on stderr about a host other machines can reach."""
    try:
        running = live_server(project_root)
    except ServerFileError as exc:
        return str(exc)
    if running is not None:
        # Checked before any worker starts; the server's own claim says the same.
        return str(AlreadyRunning(server_file(project_root), running))
    if not is_loopback_host(host):
        print(
            f"pivot-supervise watch: warning: the live API listens on {host}, reachable from "
            "other machines; only the token guards it, and it travels unencrypted (no TLS)",
            file=sys.stderr,
        )
    return None


def _announce_api(info: ServerInfo) -> None:
    print(
        f"pivot-supervise: live API on {info.url} (token in .pivot-supervise/server.json)",
        file=sys.stderr,
        flush=True,
    )


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
