"""Analyses of code objects kept across processes, so that a fresh worker does not redo them.

In watch mode every generation is a fresh interpreter that imports the project again and
fingerprints it, usually after a save that changed one file.  About half of
fingerprinting is analysing code objects (a digest of the normalised bytecode, the names
it loads), and that analysis is a pure function of the code object.  This cache keeps
those results in the project's state directory, so that the next generation analyses
only the code of the files that changed.

Which code object is which, across processes
    A code object is named by the sha256 of the exact bytes our loader compiled
    (:func:`._imports.last_compilation`: the source's digest and the module code object,
    recorded at compile time, never read from disk later) and by its position in that
    compilation's tree of code objects (breadth-first over ``co_consts``: the module's
    functions and classes first, then what is defined in those, and so on; a level is
    numbered only when a code object is looked for there).  The same bytes compiled by
    the same interpreter at the same optimisation level give the same tree, so that pair
    names the same code in every process.  A code object not found in the tree of its
    file's last compilation (made by ``exec`` under a project file's name, or by an
    earlier compilation of a file imported twice) gets no name: it is analysed every
    time, never served someone else's result.

    Why not the file name with ``co_qualname``, ``co_firstlineno`` and ``co_linetable``:
    with debug ranges off (``-X no_debug_ranges``) the line table has no columns, and two
    lambdas on one line would share a key, so an edit of one could be missed; and
    ``co_filename`` says which file a code object claims, not which bytes made it.

The file
    ``<state dir>/code-analyses.<cache tag>.bin``: a magic line, a BLAKE2b digest of the
    payload, and the payload, a ``marshal`` of plain tuples, dicts and strings (private,
    and the fastest thing to read back).  The payload starts with a header that must
    equal this process's: this module's layout number and file digest, the analysis
    version the caller gives, the interpreter's exact version, the optimisation level.
    Anything else (a foreign, truncated, damaged or unreadable file, another header)
    reads as an empty cache.  The file is rewritten atomically (temporary file,
    ``os.replace``) only when something new was analysed, and holds only the entries
    this load used, so it does not grow without bound.  A failed write costs the next
    load time, never an error: the reason is in :attr:`CodeAnalysisCache.write_error`.
    The digest guards against damage, not against someone who can write to the project
    (they can edit the code itself).

The last graph
    The file also keeps, opaque to this module, what the last fingerprinting found (see
    :mod:`._replay`): :attr:`CodeAnalysisCache.graph` as read, :meth:`set_graph` to
    replace it.  A load that replays that graph looks up no analysis of the code it
    finds unchanged; :meth:`keep` carries those files' analyses over to the next file.

Not thread-safe: one load uses one cache object.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import marshal
import sys
import threading
import time
import types
from pathlib import Path
from typing import cast

from pivot_supervise._state_dir import make_state_dir, seal, unseal, write_atomically

from ._imports import last_compilation

__all__ = ["Analysis", "CacheKey", "CodeAnalysisCache", "follow"]

#: Bumped when the file's layout or the numbering of positions changes (what an entry
#: means is the caller's ``version``).
_LAYOUT = 2
_MAGIC = b"pivot-supervise code analyses\n"
#: A code object's name across processes: (sha256 of its file's source, position).
CacheKey = tuple[str, int]
#: What is kept per code object: its digest and three sorted tuples of names.
Analysis = tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]
#: Plain data naming what wrote a file (see :meth:`CodeAnalysisCache.open`).
Version = tuple[int | str, ...]
_Header = tuple[int | str | Version, ...]
_Entries = dict[str, dict[int, Analysis]]
#: What a file holds besides its header: the entries, and the last graph (or ``None``).
_Content = tuple[_Entries, object]


class CodeAnalysisCache:
    """What earlier loads computed per code object, and what this load used or added.

    Use :meth:`open`, then :meth:`lookup` before analysing a code object and
    :meth:`put` after, and :meth:`save` once the load is done.  The counters are
    for tests and benchmarks: ``hits`` (served from the file), ``misses`` (analysed and
    added) and ``unnamed`` (code objects that cannot be cached, see the module doc).
    """

    def __init__(
        self, path: Path, header: _Header, stored: _Entries | None = None, graph: object = None
    ) -> None:
        self.path = path
        self._header = header
        self._stored: _Entries = stored or {}
        self._used: _Entries = {}
        #: The source digests whose stored analyses :meth:`save` carries over.
        self._kept: set[str] = set()
        #: The last graph, as read from the file (plain data; ``None``: none kept).
        self.graph = graph
        self._graph_changed = False
        self._compilations: dict[str, _Compilation | None] = {}
        self.hits = 0
        self.misses = 0
        self.unnamed = 0
        #: Why the last :meth:`save` could not write the file (``None``: it could, or
        #: there was nothing to write).
        self.write_error: str | None = None

    @classmethod
    def open(cls, directory: Path, version: Version) -> CodeAnalysisCache:
        """The cache kept in ``directory`` for analyses of the given ``version``.

        ``version`` names what an entry means (the analysis algorithm); entries of any
        other version, interpreter or optimisation level are never served.  A missing or
        unusable file gives an empty cache; this never raises for the file's sake.
        """
        path = cache_file(directory)
        header: _Header = (
            _LAYOUT,
            _own_digest(),
            version,
            sys.implementation.name,
            sys.version,
            sys.flags.optimize,
        )
        try:
            data = path.read_bytes()
        except OSError:
            return cls(path, header)
        entries, graph = _parse(data, header)
        return cls(path, header, entries, graph)

    # ------------------------------------------------------------------ lookups

    def lookup(self, code: types.CodeType) -> tuple[CacheKey | None, Analysis | None]:
        """The name of ``code`` across processes and its stored analysis.

        The name is ``None`` for code that cannot have one (see the module doc), the
        analysis ``None`` if no earlier load stored one under that name.
        """
        compilation = self._compilation(code.co_filename)
        position = None
        if compilation is not None:
            position = compilation.positions.get(id(code))
            if position is None:
                position = compilation.position(code)
        if compilation is None or position is None:
            self.unnamed += 1
            return None, None
        digest = compilation.digest
        entry = self._stored_entry(digest, position)
        if entry is None:
            return (digest, position), None
        self.hits += 1
        used = self._used.get(digest)
        if used is None:
            used = self._used[digest] = {}
        used[position] = entry
        return (digest, position), entry

    def put(self, key: CacheKey, entry: Analysis) -> None:
        """Record the analysis just made for ``key``."""
        digest, position = key
        self.misses += 1
        self._used.setdefault(digest, {})[position] = entry

    def compiled(self, filename: str) -> tuple[str, types.CodeType] | None:
        """The source digest and module code of ``filename``'s last compilation by our
        loader, if any (see :meth:`code_path`)."""
        compilation = self._compilation(filename)
        return (compilation.digest, compilation.module_code) if compilation else None

    def code_path(self, code: types.CodeType) -> tuple[int, ...] | None:
        """Where ``code`` is in the tree of its file's last compilation: the indices in
        ``co_consts`` that lead to it from the module code (see :func:`follow`);
        ``None`` if it is not there.  Cheaper to follow than a position is to number: a
        module-level function's path is one index."""
        compilation = self._compilation(code.co_filename)
        return compilation.path(code) if compilation is not None else None

    def carry(self, old: CacheKey, code: types.CodeType) -> CacheKey | None:
        """Name ``code``, equal to the code once named ``old`` (in an earlier version of
        its file), and give it that code's stored analysis, if any.  ``None``: ``code``
        cannot be named (see :meth:`lookup`)."""
        compilation = self._compilation(code.co_filename)
        position = compilation.position(code) if compilation is not None else None
        if compilation is None or position is None:
            return None
        entry = self._stored_entry(*old)
        if entry is not None:
            self._used.setdefault(compilation.digest, {})[position] = entry
        return compilation.digest, position

    def _stored_entry(self, digest: str, position: int) -> Analysis | None:
        """The analysis the file holds for ``(digest, position)``, if it is one."""
        entries = self._stored.get(digest)
        entry = entries.get(position) if entries is not None else None
        # The file's outline was checked when read, not each entry's shape.
        if type(entry) is not tuple or len(entry) != 4:
            return None
        return entry

    def keep(self, digest: str) -> None:
        """Carry the stored analyses of the source ``digest`` over to the next file,
        as if each had been looked up (a replayed graph needs them again only once
        their code changes).  Done when the file is written, off a load's path."""
        self._kept.add(digest)

    def set_graph(self, graph: object) -> None:
        """Replace the last graph (plain data ``marshal`` can write); saved by :meth:`save`."""
        self.graph = graph
        self._graph_changed = True

    def _compilation(self, filename: str) -> _Compilation | None:
        try:
            return self._compilations[filename]
        except KeyError:
            found = last_compilation(filename)
            compilation = self._compilations[filename] = (
                _Compilation(*found) if found is not None else None
            )
            return compilation

    # ------------------------------------------------------------------ the file

    def save(self) -> None:
        """Write the entries this load used and the last graph, if it analysed anything
        new or the graph changed; never raises."""
        if not self.misses and not self._graph_changed:
            return
        used = self._used
        for digest in self._kept:
            kept = dict(self._stored.get(digest) or {})
            kept.update(used.get(digest, {}))  # what this load looked up or made wins
            if kept:
                used[digest] = kept
        self._kept.clear()
        content = cast("tuple[object, ...]", (self._header, used, self.graph))
        data = seal(_MAGIC, marshal.dumps(content))  # pyright: ignore[reportArgumentType]
        try:
            if not self.path.parent.is_dir():
                make_state_dir(self.path.parent)
            write_atomically(self.path, data)
        except OSError as exc:
            self.write_error = f"cannot write {self.path}: {exc}"
        else:
            self.write_error = None

    def discard(self) -> None:
        """Forget everything and remove the file (a load that could not use it: the next
        one starts afresh); never raises."""
        self._stored, self._used, self._kept = {}, {}, set()
        self.graph, self._graph_changed, self.misses = None, False, 0
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def save_in_background(self) -> threading.Thread | None:
        """:meth:`save` in a daemon thread started now; ``None`` if there is nothing to
        write.  For a worker that should answer first: the thread hands the interpreter
        back at once and encodes once the caller next waits (sending its reply, say).

        The file is replaced atomically, so a reader sees the old file or the new one; a
        process that exits before the write is done only costs the next load time.
        """
        if not self.misses and not self._graph_changed:
            return None
        thread = threading.Thread(
            target=self._save_after_yielding, name="pivot-supervise-cache-save", daemon=True
        )
        thread.start()
        return thread

    def _save_after_yielding(self) -> None:
        time.sleep(0)  # releases the interpreter to the thread that started this one
        self.save()


def cache_file(directory: Path) -> Path:
    """The file in ``directory`` that keeps the analyses of this interpreter's code."""
    tag = sys.implementation.cache_tag or sys.implementation.name
    return directory / f"code-analyses.{tag}.bin"


@functools.cache
def _own_digest() -> str:
    """A digest of this file: how positions are numbered must match, even between two
    commits of an editable install that share a release number and a ``_LAYOUT``."""
    try:
        return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    except OSError:
        return ""


def follow(module_code: types.CodeType, path: tuple[int, ...]) -> object:
    """The constant at ``path`` in the tree of ``module_code`` (``None`` if none is)."""
    found: object = module_code
    for index in path:
        consts: tuple[object, ...] = getattr(found, "co_consts", ())
        if index >= len(consts):
            return None
        found = consts[index]
    return found


def _parse(data: bytes, header: _Header) -> _Content:
    """The entries and graph of a cache file's bytes; nothing if they are not a healthy
    file of ours."""
    nothing: _Content = ({}, None)
    payload = unseal(_MAGIC, data)
    if not payload:
        return nothing
    try:
        content: object = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return nothing
    if type(content) is not tuple or len(cast("tuple[object, ...]", content)) != 3:
        return nothing
    found_header, entries, graph = cast("tuple[object, object, object]", content)
    if found_header != header or type(entries) is not dict:
        return nothing
    # The digest makes a damaged file unreadable, and the header an outdated one: what
    # is left to check is the outline (an entry's shape is checked in ``lookup``, the
    # graph's by its reader).
    entries = cast("dict[object, object]", entries)
    if not all(type(v) is dict for v in entries.values()):
        return nothing
    return cast("_Entries", entries), graph


class _Compilation:
    """One compilation of a file: its source's digest, and where its code objects sit.

    Positions are numbered breadth-first, one whole level of the tree at a time and only
    as deep as a lookup needs: most code looked up is a module-level function (level
    one), and the comprehensions and lambdas inside functions are many.
    """

    __slots__ = ("_count", "_level", "digest", "module_code", "paths", "positions")

    def __init__(self, digest: str, module_code: types.CodeType) -> None:
        self.digest = digest
        #: Referenced, so that no ``id`` in the map can be reused while it is in use.
        self.module_code = module_code
        #: The positions numbered so far, by ``id`` of the code object...
        self.positions = {id(module_code): 0}
        #: ...and the path to each (the module code has none: it is no constant).
        self.paths: dict[int, tuple[int, ...]] = {}
        self._count = 1
        #: The deepest level indexed, each code object with its path.
        self._level: list[tuple[types.CodeType, tuple[int, ...]]] = [(module_code, ())]

    def path(self, code: types.CodeType) -> tuple[int, ...] | None:
        """See :meth:`CodeAnalysisCache.code_path`."""
        path = self.paths.get(id(code))
        while path is None and self._level:
            self._index_next_level()
            path = self.paths.get(id(code))
        return path

    def position(self, code: types.CodeType) -> int | None:
        """Where ``code`` sits in this compilation, or ``None`` if it is not part of it."""
        position = self.positions.get(id(code))
        while position is None and self._level:
            self._index_next_level()
            position = self.positions.get(id(code))
        return position

    def _index_next_level(self) -> None:
        """Number the code objects one level deeper than the last, and note their paths."""
        level: list[tuple[types.CodeType, tuple[int, ...]]] = [
            (const, (*path, index))
            for parent, path in self._level
            for index, const in enumerate(parent.co_consts)
            if type(const) is types.CodeType
        ]
        ids = [id(code) for code, _ in level]
        # What was indexed before keeps its number and its path.
        positions = dict(zip(ids, itertools.count(self._count)))
        positions.update(self.positions)
        self.positions = positions
        paths: dict[int, tuple[int, ...]] = dict(zip(ids, (path for _, path in level), strict=True))
        paths.update(self.paths)
        self.paths = paths
        self._count += len(level)
        self._level = level
