"""``pivot-supervise explain`` and ``history``: what would run and why, what ran."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..pipeline._dag import PipelineGraph
from ..supervisor._core import GenerationFailed
from ..supervisor._incremental import Check, Incremental, explain_lines, run_json, when
from ..supervisor._state import StateStoreError
from ._common import EXIT_USAGE, Commands, add_logging, add_project, bounded_int, setup
from ._stages import load_snapshot, report_load_failure


def register(commands: Commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="say for each stage whether it would run, and exactly why",
        description="Load the pipeline in a worker, compare each stage's code fingerprint, "
        "params, deps and outputs with its last successful run, and say whether it would "
        "run and why (which function, param, dep or output changed).  Nothing runs.",
    )
    add_project(explain)
    explain.add_argument("stages", nargs="*", metavar="STAGE", help="stages to explain")
    explain.add_argument(
        "--no-parallel", action="store_true", help="load the pipeline in this process instead"
    )
    explain.add_argument("--json", action="store_true", help="print one JSON document")
    add_logging(explain)
    explain.set_defaults(handler=_explain)

    history = commands.add_parser(
        "history",
        help="list past runs with each stage's status, duration and pid",
        description="List the latest runs recorded in .pivot-supervise/state.db, newest "
        "first: trigger, generation, and each stage's status, reason, duration and pid.",
    )
    add_project(history)
    history.add_argument("--stage", metavar="STAGE", help="only runs that included STAGE")
    history.add_argument(
        "--limit",
        type=bounded_int(1, 10_000, "a count"),
        default=20,
        metavar="N",
        help="at most N runs (default: 20)",
    )
    history.add_argument("--json", action="store_true", help="print one JSON document")
    add_logging(history)
    history.set_defaults(handler=_history)


def _explain(args: argparse.Namespace) -> int:
    config = setup(args)
    snapshot = load_snapshot(config, parallel=not args.no_parallel)
    if isinstance(snapshot, GenerationFailed):
        return report_load_failure("explain", snapshot)
    graph = PipelineGraph(snapshot.stages)
    unknown = graph.unknown(args.stages)
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        print(
            f"pivot-supervise explain: error: unknown stage {names}; "
            f"the pipeline defines: {', '.join(snapshot.names)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    wanted = graph.sort(graph.upstream_closure(args.stages) if args.stages else graph.order)
    try:
        incremental = Incremental.open(config.project_root)
    except StateStoreError as exc:
        print(f"pivot-supervise explain: error: {exc}", file=sys.stderr)
        return 1
    try:
        for warning in (*snapshot.warnings, *incremental.warnings):
            print(f"warning: {warning}", file=sys.stderr)
        checks = {name: incremental.check(snapshot[name]) for name in wanted}
    finally:
        incremental.close()
    specs = [snapshot[name] for name in wanted]
    if args.json:
        print(json.dumps({"stages": [_check_json(name, checks[name]) for name in wanted]}))
        return 0
    upstream = {name: graph.upstream(name) for name in wanted}
    print("\n".join(explain_lines(specs, checks, upstream)))
    return 0


def _check_json(name: str, check: Check) -> dict[str, Any]:
    decision = check.decision
    return {
        "stage": name,
        "would_run": decision.run,
        "reasons": list(decision.reasons),
        "hand_edited": list(decision.hand_edited),
    }


def _history(args: argparse.Namespace) -> int:
    config = setup(args)
    try:
        incremental = Incremental.open(config.project_root)
    except StateStoreError as exc:
        print(f"pivot-supervise history: error: {exc}", file=sys.stderr)
        return 1
    try:
        runs = incremental.store.history(stage=args.stage, limit=args.limit)
    finally:
        incremental.close()
    if args.json:
        print(json.dumps({"runs": [run_json(run) for run in runs]}))
        return 0
    if not runs:
        print(
            f"no recorded run included stage {args.stage!r}"
            if args.stage
            else "no runs recorded yet"
        )
    for run in runs:
        state = run.outcome or "unfinished"
        print(
            f"run {run.run_id}  {when(run.started_at)}  {run.trigger}  "
            f"generation {run.generation}  {state}"
        )
        for line in run.stages:
            took = f"{line.duration_ms:.1f} ms" if line.duration_ms is not None else ""
            why = f"  ({line.reason})" if line.reason else ""
            error = f"  {line.error}" if line.error else ""
            print(f"    {line.status:<9} {line.stage} {took}{why}{error}")
    return 0
