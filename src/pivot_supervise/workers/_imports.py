"""Import project code from its source, always.

A ``.pyc`` header records the source's mtime in whole seconds and its size.  A stage
edited twice within one second to the same length (routine when a one-shot run takes a
fraction of a second, or an editor saves twice) leaves a ``.pyc`` that still looks fresh,
and a brand-new interpreter then runs the OLD code.  ``PYTHONDONTWRITEBYTECODE`` does not
help: it only stops writing, an existing stale ``.pyc`` is still read.

So for directories under the project root we install a path hook whose loader reads
the source bytes every time and never reads or writes a ``.pyc``: it compiles them, or
takes the code they compiled to last time from a cache keyed by their sha256 (see
:mod:`._bytecode`), which cannot be stale.  Everything else (the standard library,
site-packages, a virtualenv that happens to live inside the project) keeps the normal,
cached import.

The loader also remembers the exact bytes it compiled, so that the code digest of a load
describes the code that runs, not whatever is on disk a moment later, and so that the
other workers of a generation can be given exactly those bytes (see :mod:`._overlay`).
It keeps the module code object of each file's last compilation too: that is how the
persistent cache of code analyses (:mod:`._codecache`) knows which source a function's
code object was compiled from, without trusting its ``co_filename`` or the disk.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from importlib.abc import PathEntryFinder
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING

from ._bytecode import cached_code, store_code

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "FreshSourceLoader",
    "compiled_source",
    "install_fresh_source_imports",
    "installed_project_roots",
    "is_project_file",
    "last_compilation",
    "project_module_files",
    "purge_project_modules",
    "source_digest",
]

#: Our own package is never "project code", even when the project root contains it (a
#: checkout of this repository): purging it would orphan the stage registry.
_OWN_PACKAGE = __name__.split(".", 1)[0]

_lock = threading.Lock()
_roots: set[Path] = set()
#: The source bytes each file was last compiled from and their sha256, by resolved path.
_compiled: dict[Path, tuple[bytes, str]] = {}
#: The sha256 of the source and the module code object of each file's last compilation,
#: by the file name exactly as given to ``compile`` (what its code objects carry as
#: ``co_filename``).  One entry per project file, replaced at each compilation.
_compilations: dict[str, tuple[str, CodeType]] = {}


class FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """A source loader that ignores bytecode caches in both directions."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        source = self.get_data(path)
        digest = hashlib.sha256(source).hexdigest()
        resolved = Path(path).resolve()
        with _lock:
            _compiled[resolved] = (source, digest)
        # Never a ``.pyc``; code kept by the sha256 of these very bytes, or compiled now
        # (``source_to_code`` is what SourceLoader itself uses after a cache miss).
        root = _root_containing(resolved)
        code = cached_code(root, path, digest) if root is not None else None
        if code is None:
            code = self.source_to_code(source, path)
            if root is not None:
                store_code(root, path, digest, code)
        with _lock:
            _compilations[path] = (digest, code)
        return code

    def set_data(self, path: str, data: ReadableBuffer, *, _mode: int = 0o666) -> None:
        """Never write a ``.pyc`` for project code (a stale one is the whole problem)."""


def _make_finder_hook() -> Callable[[str], PathEntryFinder]:
    # Same loader order as CPython's default FileFinder: extensions, source, bytecode.
    return importlib.machinery.FileFinder.path_hook(
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (FreshSourceLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )


_finder_hook = _make_finder_hook()


def _project_path_hook(path: str) -> PathEntryFinder:
    """``sys.path_hooks`` entry: claim project directories, decline everything else.

    Raising ImportError is how a path hook says "not mine"; the import system then asks
    the next hook (ultimately the default FileFinder).
    """
    if not is_project_file(Path(path)):
        raise ImportError(f"{path!r} is not a project directory")
    return _finder_hook(path)


def _root_of(path: Path) -> Path | None:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None
    return _root_containing(resolved)


def _root_containing(resolved: Path) -> Path | None:
    with _lock:
        roots = tuple(_roots)
    for root in roots:
        if resolved == root or root in resolved.parents:
            return root
    return None


def _is_under(path: Path, root: Path) -> bool:
    """True if ``path`` is project code under ``root`` (not an environment inside it)."""
    try:
        relative = path.resolve().relative_to(root)
    except (OSError, RuntimeError, ValueError):
        return False
    parts = relative.parts
    if any(part in ("site-packages", "dist-packages") for part in parts):
        return False
    # A virtualenv inside the project (``.venv``, ``venv``, ...) is marked by pyvenv.cfg
    # in its top directory; check every directory between the root and ``path``.
    directories = parts if (root / relative).is_dir() else parts[:-1]
    current = root
    for part in directories:
        current = current / part
        if (current / "pyvenv.cfg").is_file():
            return False
    return True


def is_project_file(path: Path) -> bool:
    """True if ``path`` lies under an installed project root and outside any venv in it."""
    root = _root_of(path)
    return root is not None and _is_under(path, root)


def install_fresh_source_imports(project_root: Path) -> None:
    """Make every later import of code under ``project_root`` compile from source.

    Idempotent.  Modules already imported stay as they are; purge them with
    :func:`purge_project_modules` to have them read again.
    """
    root = project_root.resolve()
    with _lock:
        new_root = root not in _roots
        _roots.add(root)
    if _project_path_hook not in sys.path_hooks:
        sys.path_hooks.insert(0, _project_path_hook)
    elif not new_root:
        return
    # Finders for project directories may already be cached with the default loader.
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def prepare_imports(project_root: Path) -> None:
    """Install fresh-source imports for ``project_root`` and make every path finder again.

    Installing empties Python's cache of path finders; the next import then makes one
    for each ``sys.path`` entry again (our hook is asked about each).  Done ahead, in a
    standby worker waiting for its generation, that is not paid by the load on the way
    to promotion.  Nothing is imported, and the project root is not on ``sys.path`` yet:
    its finder is made, and its directory listed, when the load first imports from it.
    """
    install_fresh_source_imports(project_root)
    # A name nothing can be: the search visits (and so caches a finder for) every entry.
    importlib.machinery.PathFinder.find_spec("_pivot_supervise_no_such_module_")


def project_module_files(project_root: Path, among: Iterable[str] | None = None) -> dict[str, Path]:
    """Map the name of every loaded project module to its file.

    Project modules are those whose ``__file__`` is under ``project_root`` and not in a
    virtualenv or site-packages inside it; this package itself never counts.  The test
    is lexical on the absolute ``__file__`` (cheap enough to run over every module at
    each load): the loader imports project code through the resolved root it puts on
    ``sys.path``, so that is the spelling project modules carry.  ``among`` limits the
    search to those module names (say, the ones an import just added).
    """
    root = project_root.resolve()
    prefix = os.path.join(str(root), "")
    found: dict[str, Path] = {}
    modules = sys.modules
    candidates = (
        list(modules.items())
        if among is None
        else [(name, modules[name]) for name in among if name in modules]
    )
    for name, module in candidates:
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not _lexically_under(file, prefix):
            continue
        if name == "__main__" or name.split(".", 1)[0] == _OWN_PACKAGE:
            continue
        if _is_under(Path(file), root):
            found[name] = Path(file)
    return found


def _lexically_under(file: str, prefix: str) -> bool:
    """``os.path.abspath(file).startswith(prefix)``, without normalising the common case.

    This runs over every module at each load (a few hundred), on the way to promoting a
    generation; an absolute path with nothing for ``abspath`` to normalise (no ``//``,
    and no ``.`` or ``..`` component; a dot *directory* such as ``.venv`` is fine) is
    compared as it is.
    """
    if file.startswith(prefix):
        return True
    if file.startswith("/") and not _NEEDS_NORMALISING.search(file):
        return False
    return os.path.abspath(file).startswith(prefix)


#: ``//``, or a ``.``/``..`` path component: what ``abspath`` would change.
_NEEDS_NORMALISING = re.compile(r"//|/\.\.?(?:/|$)")


def purge_project_modules(project_root: Path) -> list[str]:
    """Drop every project module from ``sys.modules``; return their names, sorted.

    The next import then executes the module again, from source.  Used before reloading
    a pipeline in a process that already imported it (the in-process ``--no-parallel``
    mode); a worker of a fresh generation has nothing to purge.
    """
    names = sorted(project_module_files(project_root))
    for name in names:
        sys.modules.pop(name, None)
    if names:  # nothing purged (a fresh worker): no cache can hold a purged module's dir
        importlib.invalidate_caches()
    return names


def installed_project_roots() -> tuple[Path, ...]:
    """Every project root fresh-source imports were installed for, in this process."""
    with _lock:
        return tuple(sorted(_roots))


def source_digest(path: Path) -> str:
    """sha256 of the bytes ``path`` was last compiled from, or of the file as it is now.

    Preferring the compiled bytes keeps a code digest honest when the user saves again
    between the import and the digest.
    """
    resolved = path.resolve()
    with _lock:
        known = _compiled.get(resolved)
    if known is not None:
        return known[1]
    try:
        return hashlib.sha256(resolved.read_bytes()).hexdigest()
    except OSError:
        return ""


def compiled_source(path: Path) -> bytes | None:
    """The exact bytes ``path`` was last compiled from by our loader (None: never was)."""
    with _lock:
        known = _compiled.get(path.resolve())
    return known[0] if known is not None else None


def last_compilation(filename: str) -> tuple[str, CodeType] | None:
    """The last compilation of ``filename`` by our loader: (sha256 of the source, module code).

    ``filename`` is matched exactly as it was given to ``compile`` (a code object's
    ``co_filename``).  ``None``: our loader never compiled a file of that name in this
    process.  Every code object defined in the module is reachable from the module code
    through ``co_consts``; one that is not was compiled some other way.
    """
    with _lock:
        return _compilations.get(filename)
