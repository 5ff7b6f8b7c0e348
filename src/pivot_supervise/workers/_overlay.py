"""The validated source of a generation, served to its other workers.

One worker of a new generation validates the pipeline: it imports it from the files as
they are on disk (compiled from source, see :mod:`._imports`) and builds the snapshot.
Every other worker of the generation must run exactly that code, not whatever is on
disk when it gets round to importing: the user may have saved again, even a broken
file, in between.  So the validating worker records a *source overlay*: for every
project module it imported, the module's name, its path relative to the project root
and the exact bytes it compiled, plus the bytes of the params file it read.  It writes
that, with the validated snapshot, to the generation's private directory
(:class:`ValidatedPipeline`, :func:`write_validated`), and the other workers import the
pipeline with the overlay installed (:func:`overlay_imports`): a module in the overlay
is compiled from the recorded bytes, whatever the file holds now, or even if it was
deleted.  The overlay *is* source, so the stale-bytecode guarantee is untouched.

What the overlay does not cover, on purpose: a project module that the load did not
import (say ``import heavy`` inside a stage function) is read from disk when a stage
imports it, in every worker including the validating one.  That is running the code as
saved at that moment, like any Python program that imports lazily.  The overlay is
only installed while a worker loads the pipeline.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import pickle
import sys
import tempfile
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pivot_supervise.pipeline._model import PipelineSnapshot

from ._imports import FreshSourceLoader, compiled_source, project_module_files

__all__ = [
    "VALIDATED_FILE",
    "OverlayModule",
    "SourceOverlay",
    "ValidatedPipeline",
    "capture_overlay",
    "overlay_imports",
    "read_validated",
    "write_validated",
]

#: The name of the validated pipeline's file in a generation's private directory.
VALIDATED_FILE = "validated.pickle"


@dataclass(frozen=True, slots=True)
class OverlayModule:
    """One project module as the validating worker compiled it."""

    name: str
    #: POSIX path relative to the project root.
    path: str
    is_package: bool
    source: bytes


@dataclass(frozen=True, slots=True)
class SourceOverlay:
    """The project source a load compiled, and the params file bytes it read.

    ``params`` is ``None`` when the params file did not exist.
    """

    modules: tuple[OverlayModule, ...]
    params: bytes | None


@dataclass(frozen=True, slots=True)
class ValidatedPipeline:
    """Everything another worker needs to load exactly what was validated."""

    generation: int
    validator_pid: int
    project_root: str
    pipeline_file: str
    params_file: str
    overlay: SourceOverlay
    snapshot: PipelineSnapshot


def capture_overlay(
    project_root: Path, params: bytes | None, imported: Mapping[str, Path] | None = None
) -> SourceOverlay:
    """The overlay of every project module imported in this process so far.

    Call it right after a load.  A module our loader did not compile (an extension
    module, a ``.pyc``-only module) has no source to record; it is left out and read
    from disk by the other workers, as it always was.  ``imported`` are the project
    modules, if the caller already scanned for them.
    """
    root = project_root.resolve()
    modules: list[OverlayModule] = []
    found = project_module_files(root) if imported is None else imported
    for name, file in sorted(found.items()):
        source = compiled_source(file)
        if source is None:
            continue
        try:
            relative = Path(os.path.abspath(file)).relative_to(root)
        except ValueError:
            continue
        modules.append(OverlayModule(name, relative.as_posix(), file.name == "__init__.py", source))
    return SourceOverlay(tuple(modules), params)


class _OverlayLoader(FreshSourceLoader):
    """The fresh-source loader, reading one module's source from the overlay."""

    def __init__(self, fullname: str, path: str, source: bytes) -> None:
        super().__init__(fullname, path)
        self._source = source

    def get_data(self, path: str) -> bytes:
        if path == self.path:
            return self._source
        return super().get_data(path)


class _OverlayFinder(importlib.abc.MetaPathFinder):
    """Finds the overlay's modules by name, before any path-based finder looks at disk."""

    def __init__(self, root: Path, modules: Sequence[OverlayModule]) -> None:
        self._root = root
        self._modules = {module.name: module for module in modules}

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        module = self._modules.get(fullname)
        if module is None:
            return None
        file = str(self._root / module.path)
        locations = [os.path.dirname(file)] if module.is_package else None
        return importlib.util.spec_from_file_location(
            fullname,
            file,
            loader=_OverlayLoader(fullname, file, module.source),
            submodule_search_locations=locations,
        )


@contextmanager
def overlay_imports(project_root: Path, overlay: SourceOverlay) -> Generator[None]:
    """Within the block, the overlay's modules are imported from the recorded bytes."""
    finder = _OverlayFinder(project_root.resolve(), overlay.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def write_validated(directory: Path, validated: ValidatedPipeline) -> Path:
    """Write ``validated`` into ``directory`` atomically; return the file's path."""
    target = directory / VALIDATED_FILE
    fd, temporary = tempfile.mkstemp(prefix=".validated-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            pickle.dump(validated, file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_validated(path: Path) -> ValidatedPipeline:
    """Read what :func:`write_validated` wrote (a private file of this generation)."""
    with path.open("rb") as file:
        validated = pickle.load(file)
    if not isinstance(validated, ValidatedPipeline):
        raise TypeError(f"{str(path)!r} does not hold a validated pipeline")
    return validated
