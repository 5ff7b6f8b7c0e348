"""The ``pivot-supervise`` command line.

One module per command family, each registering its sub-commands on the shared parser:
``run``/``watch`` (:mod:`._session`), ``events``/``status``/``trigger``/``restart`` (the
live API's client, :mod:`._client`), ``stages`` (:mod:`._stages`), ``demo``, ``bench``
(:mod:`._bench`).  A bad flag
or configuration value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from .._config import ConfigError
from . import _bench, _client, _demo, _incremental, _session, _stages
from ._common import EXIT_USAGE, Parser

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
  pivot-supervise events                 follow the events of a running `watch`
  pivot-supervise trigger train          ask a running `watch` to run `train` now
  pivot-supervise demo                   a narrated tour on a bundled example
  pivot-supervise bench restart --plot r.png   restart cost against stage count
"""

#: Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (_session, _client, _stages, _incremental, _demo, _bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pivot-supervise",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"pivot-supervise {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        # Let shut-down executors unregister their semaphores now, so that loky's
        # resource tracker, which exits with this process, finds nothing leaked.  It is
        # not stopped here: loky's own exit handlers may still release executors later,
        # and a stopped tracker would be relaunched for them.
        gc.collect()
