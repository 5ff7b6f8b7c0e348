"""Compiled project code, kept by the exact source bytes it was compiled from.

Workers never import project code from a ``.pyc``: a ``.pyc`` is trusted by its source's
mtime (in whole seconds) and size, and a quick same-size save then runs the old code.
But compiling is most of a load (some 50 ms for 20 modules of 60 functions here), and
in watch mode every generation compiles every module again, though one file changed.

This cache keys compiled code by the sha256 of the very bytes compiled, plus the file's
path (which the code carries for tracebacks), the interpreter and the optimisation
level: a hit is what compiling those bytes there would give, so it cannot be stale.
Python's own checked-hash ``.pyc`` files (PEP 552) rest on the same idea.

The entries live in ``<project>/.pivot-supervise/bytecode/``, one sealed file each (see
:func:`pivot_supervise._state_dir.seal`: a damaged, truncated or foreign file reads as
a miss, since a bit flipped in a marshalled code object could otherwise run as wrong
code), written atomically.  Once a session the supervisor trims the directory to half
of :data:`MAX_ENTRIES` when it holds more (:func:`trim`): listing it costs ~0.8 ms at
2,000 entries, too much for every store on the way to a promotion.  Every failure costs
time, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType

from pivot_supervise._state_dir import STATE_DIR, make_state_dir, seal, unseal, write_atomically

__all__ = ["MAX_ENTRIES", "cached_code", "store_code", "trim"]

#: Bumped if the file layout changes.
_MAGIC = b"pivot-supervise bytecode 1\n"
#: How many compiled files the directory may hold before :func:`trim` drops the oldest half.
MAX_ENTRIES = 2000
#: What else decides the code a compilation makes: the interpreter's bytecode format
#: (the magic number of its pycs), and whether code records column positions (off
#: with ``-X no_debug_ranges``; tracebacks use them).
_COMPILER = "\0".join(
    (
        sys.implementation.cache_tag or "",
        importlib.util.MAGIC_NUMBER.hex(),
        str(next(iter(compile("0", "<probe>", "eval").co_positions()))[2] is not None),
    )
)


def cached_code(root: Path, path: str, source_sha: str) -> CodeType | None:
    """The code ``path``'s source (whose sha256 is ``source_sha``) compiles to, if kept."""
    try:
        data = _entry(root, path, source_sha).read_bytes()
    except OSError:
        return None
    payload = unseal(_MAGIC, data)
    if payload is None:
        return None
    try:
        code = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None


def store_code(root: Path, path: str, source_sha: str, code: CodeType) -> None:
    """Keep ``code``, compiled from ``path``'s source with sha256 ``source_sha``."""
    entry = _entry(root, path, source_sha)
    try:
        if not entry.parent.is_dir():
            make_state_dir(root / STATE_DIR)
            entry.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomically(entry, seal(_MAGIC, marshal.dumps(code)))
    except OSError:  # a read-only project, a full disk: the next load compiles again
        return


def trim(root: Path, max_entries: int = MAX_ENTRIES) -> int:
    """Drop the oldest entries of ``root``'s cache down to half of ``max_entries``, once
    it holds more than that; return how many went.  Blocking (it lists the directory).
    """
    try:
        entries = [e for e in os.scandir(_directory(root)) if e.name.endswith(".bin")]
        if len(entries) <= max_entries:
            return 0
        by_age = sorted(entries, key=lambda e: e.stat().st_mtime_ns)
    except OSError:
        return 0
    removed = 0
    for entry in by_age[: len(by_age) - max_entries // 2]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
    return removed


def _directory(root: Path) -> Path:
    return root / STATE_DIR / "bytecode"


def _entry(root: Path, path: str, source_sha: str) -> Path:
    key = "\0".join((path, source_sha, _COMPILER, str(sys.flags.optimize)))
    name = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return _directory(root) / f"{name}.bin"
