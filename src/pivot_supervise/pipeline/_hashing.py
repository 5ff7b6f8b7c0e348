"""Content hashes of dependency and output files, with a stat cache.

Deciding that a stage is up to date means comparing the content of its deps with what
they were at its last successful run.  Reading 1,000 files on every decision would be
too slow, so a file's hash is cached under its stat signature ``(mtime_ns, size,
inode)``: a file whose signature did not change is not read again.  Touching a file
without changing it changes its signature, so it is re-read once, hashes the same, and
nothing runs.

The cache is only as good as the clock.  A file written twice within the filesystem's
timestamp granularity (or within one tick of the kernel's coarse clock) can change
content and keep its signature.  Git's "racy clean" rule handles that, and so do we: an
entry is trusted only if the file was hashed at least :data:`RACY_WINDOW_NS` after its
mtime; a younger entry is re-hashed on its next use (and becomes trusted once the file
has been quiet long enough).

Used by the supervisor (from a worker thread, off the trio loop) and by workers; hence
plain threads and no trio.  Hashes are BLAKE2b-256 from :mod:`hashlib`: fast, no extra
dependency.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RACY_WINDOW_NS", "CacheRow", "ContentHasher", "HasherStats", "walk_files"]

#: An entry is trusted only if the file was hashed this long after its mtime.
RACY_WINDOW_NS = 2_000_000_000
_CHUNK = 1 << 20
#: Directories never part of a directory's content.
_SKIPPED_DIRS = frozenset({"__pycache__"})

#: A persisted cache entry: ``(path, mtime_ns, size, inode, hashed_at_ns, digest)``.
CacheRow = tuple[str, int, int, int, int, str]


@dataclass(frozen=True, slots=True)
class HasherStats:
    """How many file hashes came from the cache and how many read the file."""

    hits: int
    reads: int


@dataclass(frozen=True, slots=True)
class _Entry:
    mtime_ns: int
    size: int
    inode: int
    hashed_at_ns: int
    digest: str


class ContentHasher:
    """Content hashes of files and directories under ``root``, cached by stat signature.

    Example::

        hasher = ContentHasher(project_root)
        hasher.hash_path("data/raw.csv")   # reads the file
        hasher.hash_path("data/raw.csv")   # a stat, no read (once the racy window passed)
        hasher.hash_path("missing.csv")    # None

    A directory's hash covers the sorted relative paths of every file under it (except
    inside ``__pycache__``) and their content hashes; empty directories do not count.
    ``clock`` (wall-clock nanoseconds, comparable with mtimes) is a seam for tests.
    """

    def __init__(
        self,
        root: Path,
        *,
        racy_window_ns: int = RACY_WINDOW_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._root = Path(os.path.abspath(root))
        self._window = racy_window_ns
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry] = {}
        self._hits = 0
        self._reads = 0

    @property
    def root(self) -> Path:
        return self._root

    @property
    def stats(self) -> HasherStats:
        with self._lock:
            return HasherStats(hits=self._hits, reads=self._reads)

    # ------------------------------------------------------------------ hashing

    def hash_path(self, path: str | os.PathLike[str]) -> str | None:
        """Hash of a file or a directory (relative to the root, or absolute); ``None``
        if it does not exist (or is neither a file nor a directory)."""
        full = self._absolute(path)
        try:
            info = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(full)
            return None
        if stat.S_ISDIR(info.st_mode):
            return self._hash_dir(full)
        if stat.S_ISREG(info.st_mode):
            return self._hash_file(full, info)
        return None

    def hash_file(self, path: str | os.PathLike[str]) -> str | None:
        """Hash of a regular file; ``None`` if it is missing or not a regular file."""
        full = self._absolute(path)
        try:
            info = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(full)
            return None
        return self._hash_file(full, info) if stat.S_ISREG(info.st_mode) else None

    def _absolute(self, path: str | os.PathLike[str]) -> str:
        return os.path.normpath(os.path.join(self._root, os.fspath(path)))

    def _hash_file(self, full: str, info: os.stat_result) -> str | None:
        with self._lock:
            entry = self._cache.get(full)
            if (
                entry is not None
                and entry.mtime_ns == info.st_mtime_ns
                and entry.size == info.st_size
                and entry.inode == info.st_ino
                and entry.hashed_at_ns - entry.mtime_ns >= self._window
            ):
                self._hits += 1
                return entry.digest
        # Take the time BEFORE reading: a write during the read gives an mtime after it,
        # which keeps the entry untrusted.
        hashed_at = self._clock()
        try:
            digest = _file_digest(full)
            after = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            self._forget(full)
            return None
        with self._lock:
            self._reads += 1
            if _signature(after) == _signature(info):
                self._cache[full] = _Entry(
                    info.st_mtime_ns, info.st_size, info.st_ino, hashed_at, digest
                )
            else:  # changed while we read it: the digest may be torn, cache nothing
                self._cache.pop(full, None)
        return digest

    def _hash_dir(self, full: str) -> str:
        listing = hashlib.blake2b(digest_size=32)
        listing.update(b"dir\0")
        for relative, path in walk_files(full):
            digest = self.hash_file(path)
            if digest is None:  # vanished between listing and hashing
                continue
            listing.update(relative.encode("utf-8", "surrogateescape"))
            listing.update(b"\0")
            listing.update(digest.encode())
            listing.update(b"\n")
        return listing.hexdigest()

    def _forget(self, full: str) -> None:
        with self._lock:
            self._cache.pop(full, None)

    # ------------------------------------------------------------------ persistence

    def to_rows(self) -> list[CacheRow]:
        """The cache as rows for a store, sorted by path (trusted entries only: an
        untrusted one would be re-hashed anyway)."""
        with self._lock:
            items = sorted(self._cache.items())
        return [
            (path, e.mtime_ns, e.size, e.inode, e.hashed_at_ns, e.digest)
            for path, e in items
            if e.hashed_at_ns - e.mtime_ns >= self._window
        ]

    def load_rows(self, rows: Iterable[CacheRow]) -> None:
        """Add persisted entries (from :meth:`to_rows` of an earlier process)."""
        with self._lock:
            for path, mtime_ns, size, inode, hashed_at_ns, digest in rows:
                self._cache[path] = _Entry(mtime_ns, size, inode, hashed_at_ns, digest)

    @classmethod
    def from_rows(
        cls,
        root: Path,
        rows: Iterable[CacheRow],
        *,
        racy_window_ns: int = RACY_WINDOW_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> ContentHasher:
        hasher = cls(root, racy_window_ns=racy_window_ns, clock=clock)
        hasher.load_rows(rows)
        return hasher


def _signature(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_mtime_ns, info.st_size, info.st_ino


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as file:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while True:
            count = file.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def walk_files(top: str) -> list[tuple[str, str]]:
    """``(relative posix path, absolute path)`` of every file under ``top``, sorted.

    What a directory dep or output consists of: its content hash and the stat
    signatures of the pipeline's own writes both use it, so they cover the same files.

    Symlinked files are hashed by content; symlinked directories are not entered (a
    link cycle would never end, and a link out of the project is not its content).
    """
    found: list[tuple[str, str]] = []
    for current, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        for name in files:
            path = os.path.join(current, name)
            relative = os.path.relpath(path, top).replace(os.sep, "/")
            found.append((relative, path))
    found.sort()
    return found
