"""The functions the supervisor submits to a generation's loky executor.

They are module-level so that they pickle by reference (this module is importable in
every worker), and they take and return plain frozen dataclasses only.  A worker
belongs to exactly one generation: it loads that generation's pipeline once, in
:func:`load_generation`, and then runs its stages with :func:`run_stage`.

Every worker of a new generation must load the pipeline before the generation is
promoted; otherwise a worker that loads lazily, on its first stage, would import
whatever is on disk THEN (a newer, maybe broken file than the one validated).  So the
supervisor submits one load task per worker, and each task waits at a file barrier
until all of them have checked in: a worker blocked at the barrier cannot take a second
load task, so each worker takes exactly one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pivot_supervise.pipeline._model import StageOutcome

from ._loader import LoadedPipeline, PipelineLoadError, load_pipeline
from ._messages import LoadReply, LoadRequest, RunRequest
from ._runner import execute_stage
from ._watchdog import start_parent_watchdog

__all__ = [
    "LoadReply",
    "LoadRequest",
    "RunRequest",
    "initialize_worker",
    "load_generation",
    "ping",
    "run_stage",
]

#: How long to sleep between two looks at the barrier directory.
_BARRIER_POLL_S = 0.002


@dataclass(frozen=True, slots=True)
class _WorkerState:
    generation: int
    project_root: Path
    loaded: LoadedPipeline | None
    error: str | None
    traceback: str | None


class _Process:
    """This process's one piece of mutable state: the generation it belongs to."""

    state: _WorkerState | None = None


def initialize_worker(parent_pid: int) -> None:
    """loky initializer: run once in every new worker; never raises.

    An initializer that raises breaks the whole pool (every future fails with
    ``TerminatedWorkerError``), so each step is best effort and reports on stderr.
    SIGINT is ignored because a terminal's Ctrl-C reaches the whole process group; the
    supervisor shuts its workers down itself, and a worker dying on its own would look
    like a crash.  Bytecode writing is off: project code never uses it (see
    :mod:`._imports`) and nothing else should start now.
    """
    try:
        sys.dont_write_bytecode = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        start_parent_watchdog(parent_pid)
    except BaseException as exc:  # must never escape (see above)
        with contextlib.suppress(BaseException):
            sys.stderr.write(f"pivot-supervise worker {os.getpid()}: initializer: {exc!r}\n")


def load_generation(request: LoadRequest) -> LoadReply:
    """Load the pipeline in this worker, then wait until all workers of it did.

    Never raises: a load failure or a barrier timeout is an error reply.
    """
    pid = os.getpid()
    if _Process.state is None:
        _Process.state = _load(request)
    state = _Process.state
    if state.generation != request.generation:
        return LoadReply(
            generation=request.generation,
            pid=pid,
            snapshot=None,
            error=(
                f"worker {pid} already belongs to generation {state.generation}; "
                f"it cannot load generation {request.generation}"
            ),
            traceback=None,
        )

    barrier_error = _wait_at_barrier(request, pid)
    if state.loaded is None:
        return LoadReply(request.generation, pid, None, state.error, state.traceback)
    if barrier_error is not None:
        return LoadReply(request.generation, pid, None, barrier_error, None)
    return LoadReply(request.generation, pid, state.loaded.snapshot, None, None)


def _load(request: LoadRequest) -> _WorkerState:
    root = Path(request.project_root)
    try:
        os.chdir(root)
        loaded = load_pipeline(root, request.pipeline_file, request.params_file)
    except PipelineLoadError as exc:
        return _WorkerState(request.generation, root, None, exc.message, exc.traceback)
    except Exception as exc:  # a bug of ours or an unreadable root: still a reply
        return _WorkerState(
            request.generation, root, None, f"{type(exc).__name__}: {exc}", traceback.format_exc()
        )
    return _WorkerState(request.generation, root, loaded, None, None)


def _wait_at_barrier(request: LoadRequest, pid: int) -> str | None:
    """Check in as ``<barrier_dir>/<pid>``; wait for ``barrier_size`` check-ins.

    Returns an error message on timeout (or if the barrier directory is unusable).
    """
    directory = Path(request.barrier_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / str(pid)).touch()
    except OSError as exc:
        return f"cannot check in at the load barrier {request.barrier_dir!r}: {exc}"
    deadline = time.monotonic() + request.barrier_timeout_s
    while True:
        try:
            arrived = len(os.listdir(directory))
        except OSError as exc:
            return f"load barrier {request.barrier_dir!r} became unreadable: {exc}"
        if arrived >= request.barrier_size:
            return None
        if time.monotonic() >= deadline:
            return (
                f"load barrier timed out after {request.barrier_timeout_s:g} s: "
                f"{arrived} of {request.barrier_size} workers checked in"
            )
        time.sleep(_BARRIER_POLL_S)


def run_stage(request: RunRequest) -> StageOutcome:
    """Run one stage of the pipeline this worker loaded; output captured at the fd level."""
    state = _Process.state
    if state is None or state.loaded is None or state.generation != request.generation:
        if state is None:
            why = "this worker has not loaded a pipeline"
        elif state.generation != request.generation:
            why = f"this worker belongs to generation {state.generation}"
        else:
            why = "this worker failed to load the pipeline"
        return StageOutcome(
            stage=request.stage,
            generation=request.generation,
            pid=os.getpid(),
            status="failed",
            duration_ms=0.0,
            error=f"cannot run stage {request.stage!r} of generation {request.generation}: {why}",
        )
    return execute_stage(
        state.loaded,
        request.stage,
        request.generation,
        request.params,
        state.project_root,
        capture="fd",
    )


def ping() -> int:
    """Return this worker's pid (a cheap round trip, e.g. to warm up a standby pool)."""
    return os.getpid()
