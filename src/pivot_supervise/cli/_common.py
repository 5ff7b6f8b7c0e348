"""What every command shares: the one-line error parser and the common flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeAlias

from .._config import Config, load_config
from ..supervisor._logging import LEVELS, configure_logging

EXIT_USAGE = 2

#: A command's entry point: parsed arguments in, exit code out.
Handler = Callable[[argparse.Namespace], int]
#: What ``add_subparsers()`` returns; argparse keeps the class name private.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # pyright: ignore[reportPrivateUsage]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, then exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def bounded_int(low: int, high: int | None, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], with an error naming the value."""

    def parse(text: str) -> int:
        expected = f"{what} {low}-{high}" if high is not None else f"a whole number >= {low}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project",
        metavar="DIR",
        type=Path,
        default=Path("."),
        help="the project root: where pipeline.py and the config live (default: .)",
    )


def add_logging(parser: argparse.ArgumentParser) -> None:
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


def setup(args: argparse.Namespace) -> Config:
    """Configure logging and load the project's configuration with flag overrides."""
    configure_logging(getattr(args, "log_level", "warning"), getattr(args, "log_format", None))
    config = load_config(args.project)
    return config.with_overrides(
        max_workers=getattr(args, "max_workers", None),
        debounce_ms=getattr(args, "debounce", None),
    )
