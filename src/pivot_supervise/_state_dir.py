"""The project's own directory of supervisor state, and how it is made.

It holds the state store, the live API's server file, and the caches of compiled code
and code analyses.  The watcher never looks inside it, and it carries a ``.gitignore``
of ``*`` so that nobody commits it; whichever part of the package needs it first makes
it, the same way.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATE_DIR", "make_state_dir"]

STATE_DIR = ".pivot-supervise"
_IGNORE = "# State of pivot-supervise; never commit it.\n*\n"


def make_state_dir(directory: Path) -> Path:
    """Make ``directory`` (normally ``<project>/.pivot-supervise``) private and git-ignored.

    Idempotent.  Raises :class:`OSError` when it cannot be made (a read-only project, a
    file in its place); callers that only cache something treat that as a miss.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text(_IGNORE)
    return directory
