"""``pivot-supervise stages``: load the pipeline in a worker and list its stages."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from .._config import Config
from ..pipeline._model import PipelineSnapshot
from ..supervisor._core import GenerationFailed, RunOptions
from ..supervisor._supervisor import make_backend
from ._common import Commands, add_logging, add_project, setup


def register(commands: Commands) -> None:
    stages = commands.add_parser(
        "stages",
        help="list the stages with their deps and outs, in execution order",
        description="Load the pipeline (in a worker process, so your code runs as saved "
        "and the command itself never imports it) and list its stages in execution order "
        "with their deps, outs and params.  Exit 1 if the pipeline does not load.",
    )
    add_project(stages)
    stages.add_argument(
        "--no-parallel", action="store_true", help="load the pipeline in this process instead"
    )
    stages.add_argument("--json", action="store_true", help="print one JSON document")
    add_logging(stages)
    stages.set_defaults(handler=_stages)


def load_snapshot(config: Config, *, parallel: bool) -> PipelineSnapshot | GenerationFailed:
    """Load the pipeline once, in one fresh worker (or in-process), and shut down."""
    backend = make_backend(config, RunOptions(parallel=parallel, max_workers=1))

    async def load() -> PipelineSnapshot | GenerationFailed:
        try:
            result = await backend.load(1, 1)
        finally:
            with trio.CancelScope(shield=True):
                await backend.aclose()
        return result if isinstance(result, GenerationFailed) else result.snapshot

    return trio.run(load)


def report_load_failure(command: str, failure: GenerationFailed) -> int:
    print(f"pivot-supervise {command}: the pipeline did not load: {failure.error}", file=sys.stderr)
    if failure.traceback:
        print(failure.traceback.rstrip(), file=sys.stderr)
    return 1


def _stages(args: argparse.Namespace) -> int:
    config = setup(args)
    result = load_snapshot(config, parallel=not args.no_parallel)
    if isinstance(result, GenerationFailed):
        return report_load_failure("stages", result)
    if args.json:
        print(json.dumps(stages_document(result), default=str))
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


def stages_document(snapshot: PipelineSnapshot) -> dict[str, Any]:
    """The ``stages --json`` document: stages in execution order, and load warnings."""
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
