"""The project's own directory of supervisor state, and how it is made.

It holds the state store, the live API's server file, and the caches of compiled code
and code analyses.  The watcher never looks inside it, and it carries a ``.gitignore``
of ``*`` so that nobody commits it; whichever part of the package needs it first makes
it, the same way.

The caches share one file format (:func:`seal`): a magic line naming what the file
holds, a BLAKE2b digest of the payload, the payload; a file that is not exactly that
reads as nothing (a flipped bit in marshalled code must never run).  They are written
with :func:`write_atomically`: a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "STATE_DIR",
    "make_state_dir",
    "seal",
    "sweep_leftovers",
    "unseal",
    "write_atomically",
]

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


_DIGEST_SIZE = 16


def seal(magic: bytes, payload: bytes) -> bytes:
    """``payload`` framed by ``magic`` and its digest (see :func:`unseal`)."""
    return magic + hashlib.blake2b(payload, digest_size=_DIGEST_SIZE).digest() + payload


def unseal(magic: bytes, data: bytes) -> bytes | None:
    """The payload of sealed ``data``; ``None`` if it is not exactly a sealed ``magic`` file."""
    start = len(magic) + _DIGEST_SIZE
    if not data.startswith(magic) or len(data) < start:
        return None
    payload = data[start:]
    if hashlib.blake2b(payload, digest_size=_DIGEST_SIZE).digest() != data[len(magic) : start]:
        return None
    return payload


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``; raises :class:`OSError`.

    The temporary file is named after this process and thread rather than made by
    ``tempfile.mkstemp``, whose first call in a process (seeding its random names) costs
    more than the write; one left behind by a killed process goes with the next
    :func:`sweep_leftovers`.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


#: The name :func:`write_atomically` gives its temporary file, with the writer's pid.
_TEMPORARY = re.compile(r"^\..+\.(\d+)-\d+\.tmp$")


def sweep_leftovers(directory: Path, alive: Callable[[int], bool]) -> int:
    """Remove the temporary files :func:`write_atomically` left in ``directory`` or a
    directory in it, when their process died mid-write (a worker killed as it wrote a
    cache behind its reply, say); return how many went.  Blocking: it lists them.

    A file whose process is ``alive`` (by pid) is being written: it stays.
    """
    removed = 0
    try:
        folders = [directory, *(e.path for e in os.scandir(directory) if e.is_dir())]
    except OSError:
        return 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match is None or alive(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed
