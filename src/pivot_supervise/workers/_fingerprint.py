"""Code fingerprints of stages: what a stage's code is, as a digest that survives cosmetics.

This runs in the worker that loaded the pipeline (the supervisor never imports user code)
and hands back plain data.  A stage's code fingerprint covers the stage function and,
transitively, every *project* function, class and module constant it reaches.  Code of the
standard library and of installed packages is recorded by name only: its version is the
environment's business, not the pipeline's.

What counts, and what deliberately does not:

- Bytecode, not source text.  Comments and blank lines never reach the bytecode.
  ``co_firstlineno``, ``co_linetable`` and ``co_filename`` are left out, so moving a
  function inside its file changes nothing.  Docstrings are left out without any
  version-specific rule: a code object is serialised through the constants its
  instructions *load*, and nothing ever loads a function's docstring (Python <= 3.13
  keeps it as ``co_consts[0]``; 3.14 flags it with ``CO_HAS_DOCSTRING``, which is
  masked).  Loading constants by reference also makes the constant indices irrelevant,
  and those shift when a docstring is added.
- No ``hash()`` and no ``id()`` in a digest.  A set literal compiles to a frozenset whose
  iteration order depends on the hash seed; set elements are serialised and sorted, so
  two workers with different seeds agree.  Dicts keep their insertion order (it is part
  of their meaning); a dict *built by iterating a set* is seed-dependent in the user's
  own program and cannot be rescued here.
- Decorators: ``functools.wraps`` copies ``__qualname__`` and ``__module__`` onto the
  wrapper, so a function is named after its *code* (``co_qualname``) and the module
  whose globals it runs in; closure cells and ``__wrapped__`` are followed, so the
  wrapped function is reached as a node of its own.
- References followed: global names (``LOAD_GLOBAL`` in the code and in every nested
  code object: lambdas, comprehensions, inner functions, class bodies), attributes of
  project modules (``helpers.h1``: every attribute name the code loads is looked up in
  the project modules it references), modules imported inside a function
  (``IMPORT_NAME``, looked up in ``sys.modules``), default arguments, closure cells,
  ``functools.partial``, bound methods, class dictionaries and base classes.  Attribute
  lookups over-approximate (``obj.h1`` also finds ``helpers.h1`` if the function
  references ``helpers``): a stage may re-run needlessly, never skip wrongly.
- Blind spots: dynamic lookups (``getattr(module, "h" + x)``, ``globals()[name]``), code
  reached only through a third-party callback registry, and data read but not declared.
  The remedy is to declare it or run with ``--force``.

How: :mod:`._graph` walks the project objects the stages reach, hashing each once;
:mod:`._replay` checks the previous generation's walk instead (:mod:`._recording`),
which the code cache file keeps with the code analyses (:mod:`._codecache`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import hashlib
import json
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from pivot_supervise import __version__
from pivot_supervise.pipeline._freshness import diff_parts

from . import _graph, _recording, _replay
from ._codecache import CodeAnalysisCache, cache_file
from ._graph import Graph, StageFingerprint
from ._imports import project_module_files
from ._recording import ABSENT, Recording
from ._replay import Replay, ReplayStats, replayed

__all__ = [
    "ReplayStats",
    "StageFingerprint",
    "diff_parts",
    "fingerprint_stages",
    "open_code_cache",
    "params_digest",
    "prepare_fingerprints",
]


def params_digest(params: Mapping[str, Any] | None) -> str:
    """A digest of a stage's params table that is the same in every process.

    Canonical JSON: sorted keys, no whitespace; dates and times (TOML has them) become
    tagged ISO strings, so a date never equals the string that spells it.  ``None`` (the
    stage takes no params) and ``{}`` (it takes them, the table is empty) differ.
    """
    if params is None:
        return _NO_PARAMS_DIGEST
    return _json_digest(params)


def _json_digest(params: Mapping[str, Any] | None) -> str:
    text = json.dumps(
        params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_default(value: object) -> object:
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return {"$" + type(value).__name__: value.isoformat()}
    if isinstance(value, set | frozenset):
        items = cast("Iterable[object]", value)
        return {"$set": sorted(json.dumps(v, sort_keys=True, default=_json_default) for v in items)}
    if isinstance(value, tuple):
        return list(cast("tuple[object, ...]", value))
    raise TypeError(f"params value {value!r} of type {type(value).__name__} is not serialisable")


#: Most stages take no params: their digest (of ``null``) is computed once.
_NO_PARAMS_DIGEST = _json_digest(None)


def fingerprint_stages(
    functions: Mapping[str, Callable[..., Any]],
    project_root: Path,
    *,
    modules: Mapping[str, Path] | None = None,
    cache: CodeAnalysisCache | None = None,
    replay: bool = True,
    stats: ReplayStats | None = None,
    freeze_heap: bool = False,
) -> dict[str, StageFingerprint]:
    """Fingerprint every stage function of a loaded pipeline.

    ``functions`` maps stage names to the functions the loader found; ``project_root``
    decides what is project code (modules whose file is under it, outside any virtualenv
    in it).  ``modules`` are those project modules, if the caller already scanned for
    them.  ``cache`` (from :func:`open_code_cache`) serves and collects code analyses
    and keeps the graph of the last walk, which is checked rather than walked again
    (see :mod:`._replay`) unless ``replay`` is false.  The result is the same with or
    without either; saving the cache is the caller's business.  ``stats``, if given,
    says what was replayed.  Call it right after the load, in the process that
    imported the pipeline.

    With ``freeze_heap``, for a worker that freezes its heap after loading anyway, the
    heap is frozen before garbage collections resume (see :func:`_no_collections`).
    """
    stats = stats if stats is not None else ReplayStats()
    with _no_collections(freeze=freeze_heap):
        if modules is None:  # resolving the root costs system calls: only when needed
            modules = project_module_files(project_root.resolve())
        prepared = _replay_of(cache) if cache is not None and replay else None
        result = None
        if prepared is not None and cache is not None:
            try:
                found = replayed(prepared, functions, modules, cache, stats)
            except Exception as exc:
                # Only this code writes a recording: one that does not hold together is
                # a bug of ours.  The walk afresh below records a new one.
                _replays[cache] = None
                stats.problem = f"the last walk could not be replayed ({exc!r})"
                found = None
            if found is not None:
                result, updated = found
                if updated is not None:
                    _record(cache, updated)
        if result is None:
            graph = Graph(modules, cache)
            roots = {name: graph.root(name, func) for name, func in functions.items()}
            graph.build()
            reached: dict[str, tuple[int, ...]] = {}
            result = graph.stage_fingerprints(roots, reached)
            if cache is not None:
                recording = graph.recording(roots, result, reached)
                _record(cache, recording)
            stats.replayed, stats.kept = False, 0
            stats.walked, stats.stages = len(graph.nodes), len(result)
            # Freed while collections are still off: the allocations counted meanwhile
            # make the first one after them look at every object still young, graph
            # included.
            del graph, roots
        del prepared
    return result


def _replay_of(cache: CodeAnalysisCache) -> Replay | None:
    """The cache's last graph, prepared for checking (once per cache object)."""
    replay = _replays.get(cache, ABSENT)
    if replay is ABSENT:
        recording = Recording.from_data(cache.graph)
        replay = _replays[cache] = Replay(recording) if recording is not None else None
    return replay


def _record(cache: CodeAnalysisCache, recording: Recording) -> None:
    """Keep ``recording`` in ``cache``; a later fingerprinting with it replays this one."""
    cache.set_graph(recording.to_data())
    superseded = _replays.pop(cache, None)
    if superseded is not None:
        # Freeing a prepared graph costs ~0.15 ms: done with the cache, after the load.
        _superseded.setdefault(cache, []).append(superseded)


#: Prepared graphs by cache: a standby worker prepares the one it read ahead.
_replays: weakref.WeakKeyDictionary[CodeAnalysisCache, Replay | None] = weakref.WeakKeyDictionary()
#: Prepared graphs a fingerprinting replaced, kept as long as their cache.
_superseded: weakref.WeakKeyDictionary[CodeAnalysisCache, list[Replay]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def _no_collections(*, freeze: bool = False) -> Generator[None]:
    """No garbage collection in the block: it allocates many small objects that all
    live until it ends, so collections during it find nothing and cost ~0.4 ms.

    The first allocation after the block runs a collection over those objects and over
    whatever else is young (the import's, ~0.5 ms for 200 stages when it reaches the
    middle generation).  With ``freeze``, the heap is frozen before collections
    resume, which makes that collection unnecessary (``gc.freeze``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


#: Bumped whenever the analysis of a code object (:meth:`Graph._code`) changes meaning,
#: so that no cache written by an older algorithm is ever read.
_ANALYSIS_FORMAT = 1


def open_code_cache(state_dir: Path) -> CodeAnalysisCache:
    """The code analyses cached in ``state_dir`` by earlier loads (of this algorithm).

    Served from what :func:`prepare_fingerprints` read ahead if the file is still the
    one it read (any cache is correct, an older one only serves fewer analyses).
    """
    ahead = _read_ahead.pop(state_dir, None)
    if ahead is not None and ahead[0] == _file_signature(ahead[1].path):
        return ahead[1]
    return CodeAnalysisCache.open(state_dir, _analysis_version())


def prepare_fingerprints(state_dir: Path) -> None:
    """Do the first fingerprinting's one-time work now, in a worker still waiting for
    its generation: version the cache (this module's file is read for that), read the
    cache file of ``state_dir`` ahead, for the next :func:`open_code_cache`, prepare
    the graph it keeps for a replay, and warm the walk's paths up (see
    :meth:`Graph.warm_up`)."""
    # The signature is taken before the read: a write in between makes the load read again.
    signature = _file_signature(cache_file(state_dir))
    cache = CodeAnalysisCache.open(state_dir, _analysis_version())
    _replay_of(cache)
    _read_ahead[state_dir] = (signature, cache)
    Graph({}).warm_up()


#: Caches read ahead by :func:`prepare_fingerprints`, by state directory: the file's
#: signature when read, and the cache (served once).
_read_ahead: dict[Path, tuple[tuple[int, int, int] | None, CodeAnalysisCache]] = {}


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a replaced cache file apart (each write replaces it: a new inode)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@functools.cache
def _analysis_version() -> tuple[int, str, str]:
    """What a cached analysis or walk must have been made by: format, release, the very
    files that make them (this one, :mod:`._graph`, :mod:`._recording`, :mod:`._replay`).

    The digest of the files covers an editable install, where the release number stays
    put while the algorithm changes; the format number covers a release whose files
    cannot be read.
    """
    digest = hashlib.sha256()
    try:
        for module in (_graph, _recording, _replay):
            digest.update(Path(str(module.__file__)).read_bytes())
        digest.update(Path(__file__).read_bytes())
    except OSError:
        return _ANALYSIS_FORMAT, __version__, ""
    return _ANALYSIS_FORMAT, __version__, digest.hexdigest()
