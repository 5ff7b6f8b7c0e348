"""structlog set-up for the supervisor: logs on stderr, never on stdout.

stdout belongs to the event stream (human lines, or ``--json`` objects and nothing
else), so every log line goes to stderr: rendered for people on a terminal, as JSON
with ``--log-format json`` or when stderr is not a terminal and JSON was asked for.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "warning", fmt: LogFormat | None = None) -> None:
    """Configure structlog once per process; ``fmt=None`` picks console on a TTY."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
