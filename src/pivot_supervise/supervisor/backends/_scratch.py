"""Where a generation's private files live: in memory, when the machine offers it.

A generation's directory holds a handful of small files made on the way to its
promotion (the validation claim, the gate, the validated source, a running marker per
worker), and a standby's warm-up barrier is a directory too.  On a journaling file
system creating a directory costs some 400 us here and a file tens of us; in
``/dev/shm`` (a memory file system on Linux) a few us, and a restart is a few ms in all.
``TMPDIR``, when set, wins: it is the user's choice of scratch space.

A supervisor killed with SIGKILL cannot remove its directories; their names carry its
pid, and the next backend created on the machine removes those of dead supervisors.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
from pathlib import Path

from ._procs import process_gone

__all__ = ["scratch_dir", "sweep_abandoned"]

#: Linux's shared-memory file system; used when present and writable.
SHARED_MEMORY = Path("/dev/shm")
_PREFIX = "pivot-supervise-"
_OWNED = re.compile(rf"{re.escape(_PREFIX)}(\d+)-")


def scratch_dir(purpose: str) -> Path:
    """A new private directory (mode 0700) named after ``purpose`` and this process."""
    prefix = f"{_PREFIX}{os.getpid()}-{purpose}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_root()))


def sweep_abandoned() -> list[Path]:
    """Remove the scratch directories of supervisors that died without cleaning up."""
    root = Path(_scratch_root() or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        owner = _OWNED.match(name)
        if owner is None or not process_gone(int(owner.group(1))):
            continue
        path = root / name
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@functools.cache
def _scratch_root() -> str | None:
    if os.environ.get("TMPDIR"):
        return None
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return str(SHARED_MEMORY)
    return None
