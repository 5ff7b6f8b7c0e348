"""Run one stage and report what happened as plain data.

The worker, not the supervisor, checks the preconditions (every dep exists) and the
postconditions (every declared output exists), because only the worker sees the files
at the right moment: right before the call and right after it returned.  The output
signatures taken here are what lets the supervisor recognise its own writes when the
watcher reports them a moment later.

Stages run with the project root as the working directory.  A worker changes into it
once, when it loads the pipeline; the in-process ``--no-parallel`` mode relies on the
CLI having changed into the project root at start (a per-thread chdir does not exist).
"""

from __future__ import annotations

import inspect
import os
import time
import traceback
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pivot_supervise.pipeline._hashing import walk_files
from pivot_supervise.pipeline._model import (
    FileSignature,
    PipelineSnapshot,
    StageOutcome,
    failed_before_running,
)
from pivot_supervise.pipeline._paths import paths_overlap

from ._capture import CapturedOutput, capture_fds, capture_thread
from ._loader import LoadedPipeline, StageFunction

__all__ = ["CaptureMode", "execute_stage", "output_signatures"]

#: ``"fd"`` in a worker process, ``"thread"`` for in-process runs (see :mod:`._capture`).
CaptureMode = Literal["fd", "thread"]


class _StageFailed(Exception):
    """A precondition or postcondition failed; the message is the outcome's error."""


def execute_stage(
    loaded: LoadedPipeline,
    stage: str,
    generation: int,
    params: Mapping[str, Any] | None,
    project_root: Path,
    *,
    capture: CaptureMode,
) -> StageOutcome:
    """Run ``stage`` of ``loaded`` and describe the result; never raises for stage errors.

    ``params`` are passed to a stage that takes them (``None`` means: use the table
    recorded in the snapshot).  ``generation`` is only echoed back, so that the
    supervisor can drop results of a generation it retired meanwhile.
    """
    pid = os.getpid()
    spec = loaded.snapshot.get(stage)
    function = loaded.functions.get(stage)
    if spec is None or function is None:
        error = f"no stage named {stage!r} in the loaded pipeline"
        return failed_before_running(stage, generation, error, pid=pid)

    missing = _missing_dependency(loaded.snapshot, spec.deps, project_root)
    if missing is not None:
        return failed_before_running(stage, generation, missing, pid=pid)

    stage_params = None if spec.params is None else (spec.params if params is None else params)
    capturing: AbstractContextManager[CapturedOutput] = (
        capture_fds() if capture == "fd" else capture_thread()
    )
    error: str | None = None
    formatted: str | None = None
    started = time.perf_counter()
    with capturing as captured:
        try:
            _call(function, stage_params)
        except (Exception, SystemExit) as exc:
            error = _one_line(exc)
            formatted = _format_user_traceback(exc)
    duration_ms = (time.perf_counter() - started) * 1000.0

    signatures: dict[str, FileSignature] = {}
    if error is None:
        try:
            signatures = output_signatures(project_root, spec.outs)
        except _StageFailed as exc:
            error = str(exc)
    return StageOutcome(
        stage=stage,
        generation=generation,
        pid=pid,
        status="ok" if error is None else "failed",
        duration_ms=duration_ms,
        error=error,
        traceback=formatted,
        output=captured.text,
        out_signatures=signatures,
    )


def _call(function: StageFunction, params: Mapping[str, Any] | None) -> None:
    if params is None:
        function()
        return
    parameter = inspect.signature(function).parameters.get("params")
    if parameter is not None and parameter.kind is parameter.POSITIONAL_ONLY:
        function(params)
    else:
        function(params=params)


def _missing_dependency(
    snapshot: PipelineSnapshot, deps: tuple[str, ...], root: Path
) -> str | None:
    for dep in deps:
        if (root / dep).exists():
            continue
        producers = [
            s.name for s in snapshot.stages if any(paths_overlap(out, dep) for out in s.outs)
        ]
        if producers:
            because = f"stage {producers[0]!r} should have produced it"
        else:
            because = "no stage produces it"
        return f"dependency {dep!r} does not exist ({because})"
    return None


def output_signatures(root: Path, outs: tuple[str, ...]) -> dict[str, FileSignature]:
    """``(mtime_ns, size, inode)`` of every output file, directories walked.

    Keys are POSIX paths relative to ``root``.  Raises :class:`_StageFailed` for an
    output the stage did not write.
    """
    signatures: dict[str, FileSignature] = {}
    for out in outs:
        path = root / out
        if path.is_dir():
            for _, file in walk_files(str(path)):
                _record(signatures, root, Path(file))
        elif path.exists():
            _record(signatures, root, path)
        else:
            raise _StageFailed(f"stage did not write its output {out!r}")
    return signatures


def _record(signatures: dict[str, FileSignature], root: Path, file: Path) -> None:
    try:
        st = file.stat()
    except OSError:  # vanished between the walk and the stat (or a dangling symlink)
        return
    key = file.relative_to(root).as_posix()
    signatures[key] = (st.st_mtime_ns, st.st_size, st.st_ino)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _format_user_traceback(exc: BaseException) -> str:
    """The traceback without the frames of this module (they explain nothing)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))
