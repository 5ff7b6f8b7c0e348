"""``pivot-supervise events``, ``status``, ``trigger``, ``restart``: talk to a running ``watch``.

They find the supervisor of ``--project`` through ``.pivot-supervise/server.json`` and
use its live API (:mod:`pivot_supervise.client`).  When none runs they say so and exit
with :data:`EXIT_NO_SUPERVISOR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from ..client import CallError, NoSupervisor, connect, find_supervisor
from ..supervisor._events import Event
from ..supervisor._rpc import UNKNOWN_STAGE
from ..supervisor._server_file import ServerFileError, ServerInfo, live_server
from ..supervisor._sinks import human_lines
from ._common import EXIT_USAGE, Commands, add_project

#: Exit code when no supervisor runs for the project (or it does not answer).
EXIT_NO_SUPERVISOR = 3
#: How long a call may take before the command gives up.
CALL_TIMEOUT_S = 10.0
#: How often ``events`` looks for a restarted supervisor.
RECONNECT_POLL_S = 0.25


def register(commands: Commands) -> None:
    events = commands.add_parser(
        "events",
        help="print the live events of the project's running supervisor",
        description="Connect to the project's running `watch` and print its events as they "
        "happen (human lines, or the --json objects), until Ctrl-C. When the supervisor "
        "stops, wait for the next one and reconnect.",
    )
    add_project(events)
    events.add_argument("--json", action="store_true", help="one JSON event per line")
    events.add_argument(
        "--show-output",
        action="store_true",
        help="show every stage's captured stdout/stderr, not only a failing stage's",
    )
    events.set_defaults(handler=_events)

    status = commands.add_parser(
        "status",
        help="show what the project's running supervisor is doing",
        description="Show the running supervisor's state, generation, workers, current run, "
        "last error and totals.",
    )
    add_project(status)
    status.add_argument("--json", action="store_true", help="print the status object")
    status.set_defaults(handler=_status)

    trigger = commands.add_parser(
        "trigger",
        help="ask the project's running supervisor to run stages now",
        description="Ask the running supervisor to run STAGEs (default: every stage it "
        "supervises) and the stages they need. If a run is in progress they join it.",
    )
    add_project(trigger)
    trigger.add_argument("stages", nargs="*", metavar="STAGE", help="stages to run")
    trigger.add_argument(
        "--force",
        action="store_true",
        help="run the named stages (default: all) even if they are up to date",
    )
    trigger.add_argument("--json", action="store_true", help="print the result object")
    trigger.set_defaults(handler=_trigger)

    restart = commands.add_parser(
        "restart",
        help="ask the project's running supervisor for a fresh generation of workers",
        description="Load the pipeline in a fresh generation of workers and swap it in if "
        "it loads (as a code change would), then re-run the stages.",
    )
    add_project(restart)
    restart.add_argument("--json", action="store_true", help="print the result object")
    restart.set_defaults(handler=_restart)


# ------------------------------------------------------------------ one call


def _call(
    command: str, project: Path, method: str, params: dict[str, Any] | None
) -> tuple[int, Any]:
    """Run one call; ``(0, result)``, or an error printed and ``(exit code, None)``."""

    async def go() -> Any:
        with trio.fail_after(CALL_TIMEOUT_S):
            async with connect(project) as client:
                return await client.call(method, params)

    try:
        return 0, trio.run(go)
    except (NoSupervisor, ServerFileError) as exc:
        return _fail(command, str(exc), EXIT_NO_SUPERVISOR), None
    except ConnectionRejected as exc:
        return _fail(command, f"the supervisor refused the connection: {exc}", 1), None
    except CallError as exc:
        code = EXIT_USAGE if exc.code == UNKNOWN_STAGE else 1
        return _fail(command, exc.message, code), None
    except (ConnectionClosed, HandshakeError, trio.TooSlowError) as exc:
        why = "no answer in time" if isinstance(exc, trio.TooSlowError) else repr(exc)
        return _fail(command, f"the supervisor went away: {why}", EXIT_NO_SUPERVISOR), None


def _fail(command: str, message: str, code: int) -> int:
    print(f"pivot-supervise {command}: error: {message}", file=sys.stderr)
    return code


def _status(args: argparse.Namespace) -> int:
    code, status = _call("status", args.project, "status", None)
    if code:
        return code
    if args.json:
        print(json.dumps(status))
        return 0
    for line in status_lines(status):
        print(line)
    return 0


def status_lines(status: dict[str, Any]) -> list[str]:
    """The human rendering of a ``status`` result."""
    pids: list[Any] = status.get("workers") or []
    workers = ", ".join(str(p) for p in pids)
    generation = status.get("generation")
    lines = [f"state: {status.get('state')}"]
    if generation is not None:
        lines.append(f"generation {generation}" + (f" (workers {workers})" if workers else ""))
    if status.get("loading_generation") is not None:
        lines.append(f"loading generation {status['loading_generation']}")
    run = status.get("run")
    if run:
        parts = [
            f"{key} {', '.join(run[key])}"
            for key in ("running", "pending", "finished")
            if run.get(key)
        ]
        lines.append(f"run {run.get('id')}: {'; '.join(parts) or 'starting'}")
    if status.get("last_error"):
        lines.append(f"last error: {status['last_error']}")
    counts: dict[str, Any] = status.get("counts") or {}
    lines.append("totals: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in sorted(counts)))
    return lines


def _trigger(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"force": bool(args.force)}
    if args.stages:
        params["stages"] = list(args.stages)
    code, result = _call("trigger", args.project, "run", params)
    if code:
        return code
    if args.json:
        print(json.dumps(result))
    elif result.get("run_id") is None:
        print("nothing to run")
    else:
        print(f"run {result['run_id']}: {', '.join(result['stages'])}")
    return 0


def _restart(args: argparse.Namespace) -> int:
    code, result = _call("restart", args.project, "restart", None)
    if code:
        return code
    if args.json:
        print(json.dumps(result))
    else:
        print(f"restarting: loading generation {result.get('generation')}")
    return 0


# ------------------------------------------------------------------ events


def _events(args: argparse.Namespace) -> int:
    show_output: bool = args.show_output

    def render(obj: dict[str, Any]) -> list[str]:
        if args.json:
            return [json.dumps(obj, ensure_ascii=True)]
        event = Event(
            str(obj.get("event")), {k: v for k, v in obj.items() if k not in ("event", "ts")}
        )
        return human_lines(event, show_output=show_output)

    try:
        first = find_supervisor(args.project)
    except (NoSupervisor, ServerFileError) as exc:
        return _fail("events", str(exc), EXIT_NO_SUPERVISOR)
    try:
        trio.run(follow, args.project, first, render, _print_lines)
    except KeyboardInterrupt:
        return 0
    except ConnectionRejected as exc:
        return _fail("events", f"the supervisor refused the connection: {exc}", 1)
    return 0


def _print_lines(lines: list[str]) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


async def follow(
    project: Path,
    info: ServerInfo,
    render: Callable[[dict[str, Any]], list[str]],
    emit: Callable[[list[str]], None],
) -> None:
    """Print every event of the supervisor at ``info``; when it goes away, wait for the
    project's next supervisor and go on.  Ends only when cancelled (Ctrl-C)."""
    while True:
        try:
            async with connect(info=info) as client:
                await client.subscribe()
                print(
                    f"pivot-supervise events: following the supervisor (pid {info.pid}) "
                    f"at {info.url}",
                    file=sys.stderr,
                    flush=True,
                )
                async for event in client.events():
                    emit(render(event))
        except (NoSupervisor, ConnectionClosed, HandshakeError, OSError):
            pass
        note = f"supervisor (pid {info.pid}) gone; waiting for the next one on {project.resolve()}"
        print(f"pivot-supervise events: {note}", file=sys.stderr, flush=True)
        info = await _next_supervisor(project, info)


async def _next_supervisor(project: Path, previous: ServerInfo) -> ServerInfo:
    """Poll server.json until a live supervisor other than ``previous`` publishes it."""
    while True:
        try:
            info = live_server(project.resolve())
        except ServerFileError:
            info = None
        if info is not None and info.token != previous.token:
            return info
        await trio.sleep(RECONNECT_POLL_S)
