"""Import the user's pipeline and describe it as plain data.

This runs inside a worker of a new generation (or, with ``--no-parallel``, in the
supervisor itself).  Whatever goes wrong (a syntax error mid-edit, a missing import, an
exception at import time, an invalid graph) becomes one :class:`PipelineLoadError` whose
message fits on a line and names the file and line or the offending stage: the user is
in the middle of editing, and the supervisor shows that line and keeps the last good
pipeline running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import secrets
import sys
import tomllib
import traceback
import types
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, cast

from pivot_supervise._state_dir import STATE_DIR
from pivot_supervise.pipeline._dag import PipelineGraph
from pivot_supervise.pipeline._errors import PipelineError
from pivot_supervise.pipeline._freshness import NOT_FINGERPRINTED
from pivot_supervise.pipeline._model import PipelineSnapshot, StageSpec
from pivot_supervise.pipeline._paths import normalize_stage_path
from pivot_supervise.pipeline._registry import REGISTRY, Registration

from ._codecache import CodeAnalysisCache
from ._fingerprint import (
    ReplayStats,
    StageFingerprint,
    fingerprint_stages,
    open_code_cache,
    params_digest,
    prepare_fingerprints,
)
from ._imports import (
    install_fresh_source_imports,
    installed_project_roots,
    is_project_file,
    prepare_imports,
    project_module_files,
    purge_project_modules,
    source_digest,
)
from ._overlay import SourceOverlay, ValidatedPipeline, overlay_imports

__all__ = [
    "LoadedPipeline",
    "PipelineLoadError",
    "load_pipeline",
    "load_validated",
    "prepare_for_load",
]

StageFunction = Callable[..., Any]


class PipelineLoadError(Exception):
    """The pipeline could not be loaded.

    ``message`` is one line for the user ("SyntaxError in pipeline.py line 3: invalid
    syntax"); ``traceback`` is the formatted traceback, limited to frames of project code
    when there are any (the importlib machinery above them is noise to the user).
    """

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback


@dataclass(frozen=True, slots=True)
class LoadedPipeline:
    """A loaded pipeline: its plain-data snapshot plus the functions to call.

    Only the snapshot ever leaves the process; the functions stay with the worker that
    imported them.
    """

    snapshot: PipelineSnapshot
    functions: Mapping[str, StageFunction]
    project_root: Path
    #: The params file's bytes as the load read them (``None``: there was none).
    params_source: bytes | None = None
    #: The project modules the load imported, by name (scanned once, shared by the
    #: fingerprints, the code digest and the validated source overlay).
    modules: Mapping[str, Path] = field(default_factory=dict[str, Path])
    #: The code cache the fingerprints used, if ``save_cache=False`` left saving it to
    #: the caller (``None``: saved, or not used).
    unsaved_cache: CodeAnalysisCache | None = None


def load_pipeline(
    project_root: Path,
    pipeline_file: str,
    params_file: str,
    *,
    fingerprints: bool = True,
    save_cache: bool = True,
    freeze_heap: bool = False,
) -> LoadedPipeline:
    """Import ``pipeline_file`` (relative to ``project_root``) and validate the pipeline.

    With ``fingerprints=False`` the stages carry no code or params fingerprints (what a
    benchmark needs to time the load without them; incremental runs need them).  With
    ``save_cache=False`` the code cache the fingerprints used is not written, but left
    in :attr:`LoadedPipeline.unsaved_cache` (a worker writes it after it answered).
    With ``freeze_heap``, the heap is frozen once the stages are fingerprinted (see
    :func:`fingerprint_stages`): for a worker, which freezes it after the load anyway.

    Project code is always compiled from source (see :mod:`._imports`), and project
    modules imported by an earlier load in this process are purged first, so the load
    reflects the files as they are now.  Raises :class:`PipelineLoadError`, never
    anything else for a problem in the user's files.
    """
    root = project_root.resolve()
    with _as_load_error(root):
        return _load(
            root,
            pipeline_file,
            params_file,
            fingerprints=fingerprints,
            save_cache=save_cache,
            freeze_heap=freeze_heap,
        )


@contextlib.contextmanager
def _as_load_error(root: Path) -> Generator[None]:
    """Turn whatever a load raises into one :class:`PipelineLoadError` for the user."""
    try:
        yield
    except PipelineLoadError:
        raise
    except PipelineError as exc:
        # Our own words for a mistake in the project: only its frames are worth showing.
        shown = _format_traceback(exc, root, internals=False)
        raise PipelineLoadError(str(exc), shown) from exc
    except (Exception, SystemExit) as exc:  # sys.exit() at import time is a user error too
        raise PipelineLoadError(_describe(exc, root), _format_traceback(exc, root)) from exc


def prepare_for_load(project_root: Path) -> None:
    """Pay now the first load's one-time costs that need no project code.

    For a standby worker, still waiting for its generation: the fresh-source imports
    installed (see :func:`._imports.prepare_imports`), the fingerprinter versioned and
    the project's cache of code analyses read ahead (see
    :func:`._fingerprint.prepare_fingerprints`): ~0.5 ms plus the cache read (~0.4 ms
    for 1,000 functions) that the validating load of a new generation no longer pays.
    Imports nothing from the project.
    """
    root = project_root.resolve()
    prepare_imports(root)
    prepare_fingerprints(root / STATE_DIR)


def load_validated(validated: ValidatedPipeline) -> LoadedPipeline:
    """Load the pipeline another worker validated, from the source it compiled.

    The overlay's modules (and params file) are served from the recorded bytes, so this
    worker runs exactly the validated code whatever happened on disk since (see
    :mod:`._overlay`).  The result carries the validated snapshot.  Fingerprints are
    not computed again: they are the validating worker's to compute (one of their
    inputs, a project module a stage imports lazily, is read from disk and may have
    changed since), and only the validated snapshot is ever used.  What is checked: the
    code digest and every stage's name, module, deps, outs and params must equal the
    validated ones; they can only differ through a bug (or a pipeline whose imports
    depend on something other than its source), and the load then fails loudly.
    """
    root = Path(validated.project_root).resolve()
    with _as_load_error(root):
        loaded = _load(
            root,
            validated.pipeline_file,
            validated.params_file,
            overlay=validated.overlay,
        )
    difference = _difference(validated.snapshot, loaded.snapshot)
    if difference is not None:
        raise PipelineLoadError(
            f"worker {os.getpid()} loaded a different pipeline from the validated source "
            f"of worker {validated.validator_pid} ({difference}); this is a bug of "
            "pivot-supervise, please report it"
        )
    return dataclasses.replace(loaded, snapshot=validated.snapshot)


def _difference(validated: PipelineSnapshot, loaded: PipelineSnapshot) -> str | None:
    if loaded.code_digest != validated.code_digest:
        return f"code digest {loaded.code_digest[:12]} instead of {validated.code_digest[:12]}"

    def shape(snapshot: PipelineSnapshot) -> list[tuple[object, ...]]:
        return [(s.name, s.module, s.deps, s.outs, s.params) for s in snapshot.stages]

    if shape(loaded) != shape(validated):
        return f"stages {list(loaded.names)} instead of {list(validated.names)}"
    return None


def _load(
    root: Path,
    pipeline_file: str,
    params_file: str,
    overlay: SourceOverlay | None = None,
    *,
    fingerprints: bool = True,
    save_cache: bool = True,
    freeze_heap: bool = False,
) -> LoadedPipeline:
    module_name = _module_name(root, pipeline_file, must_exist=overlay is None)
    root_entry = str(root)
    if not sys.path or sys.path[0] != root_entry:
        sys.path.insert(0, root_entry)
    install_fresh_source_imports(root)
    # Always purge: a failed earlier load may have left helper modules behind even
    # though the pipeline module itself is gone.  In a fresh worker this is a no-op.
    # Modules of other roots go too (only a process that loads several projects, like a
    # test run, has any): a ``helpers`` module of another project would shadow ours.
    for installed in installed_project_roots():
        purge_project_modules(installed)
    # Every project module left after the import came with it: look among those only.
    before = set(sys.modules)
    REGISTRY.clear()
    try:
        if overlay is None:
            module = __import__(module_name, fromlist=["_"])
        else:
            with overlay_imports(root, overlay):
                module = __import__(module_name, fromlist=["_"])
        registrations = REGISTRY.registrations()
    finally:
        REGISTRY.clear()
    _check_module_origin(module, root, pipeline_file)

    # The params as validated, with an overlay; as they are now, without.
    params_source = _read_params_file(root, params_file) if overlay is None else overlay.params
    params = _parse_params(params_source, params_file)
    functions: dict[str, StageFunction] = {}
    for registration in registrations:
        functions.setdefault(registration.name, registration.func)
    # Every project module left after the import came with it: look among those only.
    modules = project_module_files(root, among=sys.modules.keys() - before)
    # A load from a validated overlay keeps the validated fingerprints (see load_validated).
    prints: Mapping[str, StageFingerprint] | None = None
    unsaved: CodeAnalysisCache | None = None
    warnings: list[str] = []
    if overlay is None and fingerprints:
        # Before the specs, which are then made once, with their fingerprints.
        prints, cache = _fingerprint(functions, root, modules, warnings, freeze_heap=freeze_heap)
        if cache is not None:
            if save_cache:
                cache.save()
            else:
                unsaved = cache
    specs: list[StageSpec] = []
    for registration in registrations:
        spec = _stage_spec(registration, params, params_file, prints)
        if spec.params is None and isinstance(params.get(spec.name), dict):
            warnings.append(
                f"params file {params_file!r} has a table for stage {spec.name!r}, "
                "but the stage function takes no 'params' argument; it is ignored"
            )
        specs.append(spec)

    graph = PipelineGraph(specs)  # validates: duplicates, shared outs, cycles
    for stage, dep in graph.external_deps():
        if not (root / dep).exists():
            warnings.append(
                f"stage {stage!r} depends on {dep!r}, which no stage produces "
                "and which does not exist yet"
            )
    # Validated and ordered already: no second graph.
    snapshot = PipelineSnapshot(graph.stages, tuple(warnings), _code_digest(modules))
    return LoadedPipeline(
        snapshot=snapshot,
        functions=functions,
        project_root=root,
        params_source=params_source,
        modules=modules,
        unsaved_cache=unsaved,
    )


def _fingerprint(
    functions: Mapping[str, StageFunction],
    root: Path,
    modules: Mapping[str, Path],
    warnings: list[str],
    *,
    freeze_heap: bool,
) -> tuple[Mapping[str, StageFingerprint], CodeAnalysisCache | None]:
    """The stages' fingerprints, and the code cache to save (``None``: none to save).

    Fingerprinting never fails a load, which would stop the whole pipeline for what is
    a bug of ours or code we cannot read (a global whose name raises when compared,
    say).  If it fails with the code cache, it is done without: then the cache was at
    fault and is removed.  If it fails without, every stage gets a fingerprint that
    equals no other (:data:`NOT_FINGERPRINTED`), so each runs, and ``explain`` says why.
    Either way ``warnings`` get what happened.
    """
    cache = open_code_cache(root / STATE_DIR)
    stats = ReplayStats()
    try:
        prints = fingerprint_stages(
            functions, root, modules=modules, cache=cache, stats=stats, freeze_heap=freeze_heap
        )
    except Exception as exc:
        failure = exc
    else:
        if stats.problem is not None:
            warnings.append(
                f"the code cache in {STATE_DIR}/ did not hold together: {stats.problem}; "
                "the code was fingerprinted afresh (a bug of pivot-supervise: please report it)"
            )
        return prints, cache
    try:
        prints = fingerprint_stages(functions, root, modules=modules, freeze_heap=freeze_heap)
    except Exception as exc:
        unknown = StageFingerprint(f"{NOT_FINGERPRINTED}{secrets.token_hex(8)}", (), {})
        warnings.append(
            f"could not fingerprint the pipeline's code ({_describe(exc, root)}): every stage "
            "runs as if its code changed until this is fixed (a bug of pivot-supervise, or "
            "code it cannot read: please report it)"
        )
        return dict.fromkeys(functions, unknown), None
    cache.discard()
    warnings.append(
        f"the code cache in {STATE_DIR}/ could not be used ({_describe(failure, root)}) and "
        "was removed; the code was fingerprinted without it (a bug of pivot-supervise: "
        "please report it)"
    )
    return prints, None


def _module_name(root: Path, pipeline_file: str, *, must_exist: bool = True) -> str:
    """``pipeline.py`` -> ``pipeline``; ``pipelines/main.py`` -> ``pipelines.main``."""
    relative = PurePosixPath(pipeline_file.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or relative.suffix != ".py":
        raise PipelineLoadError(
            f"pipeline file {pipeline_file!r} must be a .py file given relative to the "
            "project root, e.g. 'pipeline.py'"
        )
    if must_exist and not (root / relative).is_file():
        raise PipelineLoadError(f"pipeline file {pipeline_file!r} does not exist")
    parts = relative.with_suffix("").parts
    if not all(part.isidentifier() for part in parts):
        raise PipelineLoadError(
            f"pipeline file {pipeline_file!r} cannot be imported as a module: every "
            "directory and the file name must be valid Python identifiers"
        )
    return ".".join(parts)


def _check_module_origin(module: object, root: Path, pipeline_file: str) -> None:
    """Refuse a module of the same name from elsewhere (say, an installed package)."""
    file = getattr(module, "__file__", None)
    expected = (root / pipeline_file).resolve()
    if not isinstance(file, str) or Path(file).resolve() != expected:
        name = getattr(module, "__name__", "?")
        raise PipelineLoadError(
            f"importing {pipeline_file!r} as module {name!r} found {file!r} instead; "
            "rename the pipeline file so that it does not clash with that module"
        )


def _read_params_file(root: Path, params_file: str) -> bytes | None:
    try:
        return (root / params_file).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PipelineError(f"cannot read params file {params_file!r}: {exc}") from exc


def _parse_params(data: bytes | None, params_file: str) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"params file {params_file!r} is not valid TOML: {exc}") from exc


def _stage_spec(
    registration: Registration,
    params: Mapping[str, Any],
    params_file: str,
    prints: Mapping[str, StageFingerprint] | None,
) -> StageSpec:
    """The spec of a registered stage, with its code and params fingerprints if
    ``prints`` (by stage) has them: computed here, next to the code."""
    name = registration.name
    takes_params = _takes_params(registration)
    stage_params: dict[str, Any] | None = None
    if takes_params:
        entry: object = params.get(name, {})
        if not isinstance(entry, dict):
            raise PipelineError(
                f"stage {name!r}: params file {params_file!r} has {name} = {entry!r}, "
                f"which is not a table; write it as a [{name}] section"
            )
        stage_params = cast("dict[str, Any]", entry)
    fingerprint = prints[name] if prints is not None else None
    return StageSpec(
        name=name,
        module=registration.module,
        deps=tuple(normalize_stage_path(name, p, "dep") for p in registration.deps),
        outs=tuple(normalize_stage_path(name, p, "out") for p in registration.outs),
        params=stage_params,
        code_fingerprint=fingerprint.code if fingerprint is not None else "",
        code_parts=fingerprint.parts if fingerprint is not None else {},
        params_digest=params_digest(stage_params) if fingerprint is not None else "",
    )


def _takes_params(registration: Registration) -> bool:
    """Whether the stage function wants its params table; reject other required args.

    Workers call a stage with nothing but its params, so any other parameter without a
    default could never be supplied.
    """
    if _takes_nothing(registration.func):
        return False
    try:
        signature = inspect.signature(registration.func)
    except (TypeError, ValueError) as exc:
        raise PipelineError(
            f"stage {registration.name!r}: cannot inspect its signature ({exc})"
        ) from exc
    takes = False
    for parameter in signature.parameters.values():
        if parameter.name == "params" and parameter.kind is not parameter.VAR_POSITIONAL:
            takes = True
            continue
        required = parameter.default is parameter.empty and parameter.kind not in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        )
        if required:
            raise PipelineError(
                f"stage {registration.name!r} (module {registration.module}) requires "
                f"the argument {parameter.name!r}; a stage takes no arguments except an "
                "optional 'params' (its table of the params file)"
            )
    return takes


_ANY_ARGUMENTS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def _takes_nothing(func: object) -> bool:
    """A plain function with no parameters at all: the common stage, told apart cheaply.

    ``inspect.signature`` costs ~10 us a stage, on the way to every promotion; anything
    else (a wrapper, a declared ``__signature__``, a callable object) goes through it.
    """
    if type(func) is not types.FunctionType or "__wrapped__" in func.__dict__:
        return False
    if hasattr(func, "__signature__"):
        return False
    code = func.__code__
    return not (code.co_argcount or code.co_kwonlyargcount or code.co_flags & _ANY_ARGUMENTS)


def _code_digest(modules: Mapping[str, Path]) -> str:
    """sha256 over (module name, source) of every project module the load imported."""
    digest = hashlib.sha256()
    for name, file in sorted(modules.items()):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(source_digest(file).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _describe(exc: BaseException, root: Path) -> str:
    """One line: "<ExcType> in <file> line <n>: <message>" with the innermost project frame."""
    kind = type(exc).__name__
    if isinstance(exc, SyntaxError):
        where = _location(exc.filename, exc.lineno, root)
        message = exc.msg
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_frame(f)]
        where = _location(frames[-1].filename, frames[-1].lineno, root) if frames else None
        message = str(exc)
    head = f"{kind} in {where}" if where else kind
    return f"{head}: {message}" if message else head


def _location(filename: str | None, lineno: int | None, root: Path) -> str | None:
    if not filename:
        return None
    path = Path(filename)
    try:
        shown = path.resolve().relative_to(root).as_posix()
    except (OSError, ValueError):
        shown = filename
    return f"{shown} line {lineno}" if lineno else shown


def _is_user_frame(frame: traceback.FrameSummary) -> bool:
    # ``<frozen importlib._bootstrap>`` is not a path: resolved against the working
    # directory (the project root) it would pass for a project file.
    return os.path.isabs(frame.filename) and is_project_file(Path(frame.filename))


def _format_traceback(exc: BaseException, root: Path, *, internals: bool = True) -> str:
    """The traceback, keeping only frames of project code if there are any; with none,
    the whole traceback, or nothing unless ``internals``."""
    tb: TracebackType | None = exc.__traceback__
    frames = traceback.extract_tb(tb)
    user = traceback.StackSummary.from_list([f for f in frames if _is_user_frame(f)])
    if not user:
        return "".join(traceback.format_exception(exc)) if internals else ""
    lines = ["Traceback (most recent call last):\n", *user.format()]
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines)
