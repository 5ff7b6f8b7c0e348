"""``pivot-supervise demo``."""

from __future__ import annotations

import argparse

from ._common import Commands


def register(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a narrated tour: run a bundled example, edit its data, then its code",
        description="Copy a bundled example project into a temporary directory, watch it, "
        "edit a data file (re-run on the warm workers), then a stage's code (a fresh "
        "generation), then save broken code and its fix, narrating each step; exits 0 "
        "when everything behaved.",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary project")
    demo.add_argument("--json", action="store_true", help="print the raw JSON events too")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(keep=args.keep, show_json=args.json)
