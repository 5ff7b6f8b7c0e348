"""The functions the supervisor submits to a generation's loky executor.

They are module-level so that they pickle by reference (this module is importable in
every worker), and they take and return plain frozen dataclasses only.  A worker
belongs to exactly one generation and loads its pipeline at most once.

How a generation loads (see :func:`load_generation`): the supervisor submits one load
task per worker, all at once, naming the generation's private directory.  The first
task to start claims the validation: it imports the pipeline from disk, builds the
snapshot and writes the exact source it compiled next to it (:mod:`._overlay`).  Every
other task waits at the directory's *gate*, a file the supervisor holds locked until
the validation succeeded, then loads that validated source.  So a generation can be
promoted after ONE load, its other workers import in parallel right after, and none of
them can import a newer or broken file than the one validated, whenever it gets to it.
A stage that reaches a worker before any load task did (:func:`run_stage`) loads the
same validated source first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import importlib
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from pivot_supervise._config import ConfigError, pipeline_files
from pivot_supervise.pipeline._model import StageOutcome, failed_before_running, not_started

from ._imports import project_module_files
from ._loader import (
    LoadedPipeline,
    PipelineLoadError,
    load_pipeline,
    load_validated,
    prepare_for_load,
)
from ._messages import (
    PARK_REQUEST_FILE,
    PARKED_FIFO,
    BatchRequest,
    LoadReply,
    LoadRequest,
    ParkRequest,
    RunRequest,
    WarmReply,
    WarmRequest,
    running_marker,
)
from ._overlay import (
    VALIDATED_FILE,
    ValidatedPipeline,
    capture_overlay,
    read_validated,
    write_validated,
)
from ._runner import execute_stage
from ._watchdog import start_parent_watchdog

__all__ = [
    "LoadReply",
    "LoadRequest",
    "RunRequest",
    "WarmReply",
    "WarmRequest",
    "initialize_worker",
    "load_generation",
    "park",
    "park_lock_name",
    "ping",
    "run_stage",
    "run_stages",
    "warm_up",
]

#: In a generation's directory: created by the task that validates (holds its pid).
CLAIM_FILE = "validator"
#: In a generation's directory: held locked by the supervisor until the validation
#: succeeded; the other load tasks wait for it (see :func:`load_generation`).
GATE_FILE = "gate"

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
    """This process's mutable state: the generation it belongs to, and its marker."""

    state: _WorkerState | None = None
    #: The open running marker (see :func:`_mark_running`), by its path.
    marker: tuple[str, int] | None = None


def initialize_worker(parent_pid: int, preload: tuple[str, ...] = ()) -> None:
    """loky initializer: run once in every new worker; never raises.

    An initializer that raises breaks the whole pool (every future fails with
    ``TerminatedWorkerError``), so each step is best effort and reports on stderr.
    SIGINT is ignored because a terminal's Ctrl-C reaches the whole process group; the
    supervisor shuts its workers down itself, and a worker dying on its own would look
    like a crash.  Bytecode writing is off: project code never uses it (see
    :mod:`._imports`) and nothing else should start now.

    ``preload`` names third-party modules (the ``preload`` setting) imported now, so
    that a standby worker has paid for them before it is promoted.  They must not be
    project code: a standby that imported project code is discarded (see
    :func:`warm_up`).
    """
    try:
        sys.dont_write_bytecode = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The supervisor spawns workers with SIGINT blocked (a Ctrl-C during start-up
        # stays pending); ignoring it above discarded any pending one.  Unblock it so
        # that the stages' own subprocesses start with a normal signal mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        start_parent_watchdog(parent_pid)
    except BaseException as exc:  # must never escape (see above)
        _report(f"initializer: {exc!r}")
    for name in preload:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a broken preload must not break the pool
            _report(f"preload of {name!r} failed: {type(exc).__name__}: {exc}")


def _report(message: str) -> None:
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"pivot-supervise worker {os.getpid()}: {message}\n")


def warm_up(request: WarmRequest) -> WarmReply:
    """Answer one no-op after every worker of the pool did (each takes exactly one).

    Used to warm a standby generation: when it returns, every worker process is up,
    initialised, ready to load (:func:`prepare_for_load`) and idle.  Also reports any
    project module already in ``sys.modules`` (a preload that pulled in project code):
    such a worker must never be promoted, because it did not import that code through
    the fresh-source loader of a load.
    """
    pid = os.getpid()
    root = Path(request.project_root)
    modules = tuple(sorted(project_module_files(root)))
    error = _wait_for(
        Path(request.barrier_dir), pid, request.barrier_size, request.barrier_timeout_s, "warm-up"
    )
    try:
        prepare_for_load(root)
    except Exception as exc:  # only ever an optimisation: the load does it anyway
        _report(f"could not prepare for loading: {exc!r}")
    _freeze_heap()
    return WarmReply(pid, modules, error)


def load_generation(request: LoadRequest) -> LoadReply:
    """Load the generation's pipeline in this worker: validate it, or load the validated.

    The first load task of the generation to start (it creates the claim file) imports
    the pipeline from disk and, if it loads, writes the validated source into the
    generation's directory before it answers.  Any other task waits until the
    supervisor releases the gate (once the validation succeeded or failed), then loads
    the validated source, or reports that there is none.  A worker that already loaded
    (the validating one taking a second task, or one that got a stage first) answers at
    once with what it has.  Never raises: a failure is an error reply.
    """
    pid = os.getpid()
    validated = False
    if _Process.state is None:
        directory = Path(request.generation_dir)
        if _claim_validation(directory, pid):
            validated = True
            _Process.state = _validate(request, pid)
        else:
            _wait_at_gate(directory)
            with _load_slot(directory, request.load_slots):
                _Process.state = _load_from(directory / VALIDATED_FILE, request.generation)
        _freeze_heap()
        _Process.state = _save_cache_behind(_Process.state)
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
    if state.loaded is None:
        return LoadReply(request.generation, pid, None, state.error, state.traceback, validated)
    return LoadReply(request.generation, pid, state.loaded.snapshot, None, None, validated)


def park(request: ParkRequest) -> LoadReply:
    """Wait, idle, until the supervisor lets this worker go; then load its generation.

    A standby's workers each hold one park task, so that at a restart the supervisor can
    wake exactly one of them to validate the pipeline, and the others one at a time after
    it: waking them all at once (each taking a load task to wait at the gate) costs the
    validating worker CPU when workers outnumber cores.  Nothing is imported here before
    the release: a parked worker is still free of project code.
    """
    directory = Path(request.park_dir)
    try:
        fd = os.open(directory / park_lock_name(request.index), os.O_RDONLY)
    except OSError as exc:
        return _unparked(f"worker {os.getpid()} could not wait in its standby: {exc}")
    try:
        _say_parked(directory)
        fcntl.flock(fd, fcntl.LOCK_SH)  # until the supervisor releases it
    finally:
        os.close(fd)
    try:
        with open(directory / PARK_REQUEST_FILE, "rb") as file:
            load = pickle.load(file)
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        return _unparked(f"worker {os.getpid()} was let go without a load: {exc}")
    if not isinstance(load, LoadRequest):
        return _unparked(f"worker {os.getpid()} was let go with {type(load).__name__}")
    return load_generation(load)


def _say_parked(directory: Path) -> None:
    """One byte into the park's FIFO: the supervisor counts its workers in (best effort)."""
    try:
        fd = os.open(directory / PARKED_FIFO, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # nobody reads (a standby being discarded): nothing to say
        return
    try:
        os.write(fd, b".")
    except OSError:
        pass
    finally:
        os.close(fd)


def park_lock_name(index: int) -> str:
    """The lock park task ``index`` waits on, in its standby's directory."""
    return f"lock-{index}"


def _unparked(error: str) -> LoadReply:
    return LoadReply(generation=0, pid=os.getpid(), snapshot=None, error=error, traceback=None)


def _save_cache_behind(state: _WorkerState) -> _WorkerState:
    """Write the code cache the validating load used while this worker answers; the
    state without it.

    The next generation needs the file (its standby workers read it while they wait),
    this one's reply does not: encoding and writing it (~3 ms for 1,200 functions) would
    delay every restart after a save.  Once written, the cache is garbage: only the
    thread holds it (~1 MB for 1,200 functions, for the generation's whole life else).
    """
    loaded = state.loaded
    if loaded is None or loaded.unsaved_cache is None:
        return state
    loaded.unsaved_cache.save_in_background()
    return dataclasses.replace(state, loaded=dataclasses.replace(loaded, unsaved_cache=None))


def _freeze_heap() -> None:
    """Exempt everything this worker holds now (modules, the pipeline) from later full
    garbage collections.

    Without psutil, loky runs ``gc.collect()`` after a worker's first task and after any
    task that ends more than a second after the last collection: after the load task of
    nearly every restart, just as the first stage waits for that worker (3-5 ms here,
    more with a big pipeline imported).  Frozen objects are skipped, so those
    collections only look at what was made since.  Nothing frozen is garbage that
    matters: the worker lives for one generation.
    """
    gc.freeze()


def _claim_validation(directory: Path, pid: int) -> bool:
    """Create the claim file; True if this task is the generation's first."""
    try:
        fd = os.open(directory / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as claim:
        claim.write(str(pid))
    return True


def _wait_at_gate(directory: Path) -> None:
    """Block until the supervisor releases the generation's gate (no gate: no wait)."""
    try:
        fd = os.open(directory / GATE_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # also releases our shared lock


@contextlib.contextmanager
def _load_slot(directory: Path, slots: int) -> Generator[None]:
    """Hold one of ``slots`` load slots of the generation (0: no limit).

    The other workers load while the generation's first stages already run on the
    validating one: loading all of them at once on a small machine starves those
    stages of CPU.  A slot is an ``flock`` on ``slot-<i>``: try each, else wait for one.
    """
    if slots <= 0:
        yield
        return
    fds = [os.open(directory / f"slot-{i}", os.O_CREAT | os.O_RDWR, 0o600) for i in range(slots)]
    try:
        for fd in fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            break
        else:
            fcntl.flock(fds[os.getpid() % slots], fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _validate(request: LoadRequest, pid: int) -> _WorkerState:
    """Load from disk; on success, write the validated source for the other workers."""
    root = Path(request.project_root)
    pipeline_file, params_file = request.pipeline_file, request.params_file
    try:
        if pipeline_file is None or params_file is None:
            pipeline_file, params_file = pipeline_files(root)
        os.chdir(root)
        loaded = load_pipeline(root, pipeline_file, params_file, save_cache=False, freeze_heap=True)
        validated = ValidatedPipeline(
            generation=request.generation,
            validator_pid=pid,
            project_root=str(loaded.project_root),
            pipeline_file=pipeline_file,
            params_file=params_file,
            overlay=capture_overlay(loaded.project_root, loaded.params_source, loaded.modules),
            snapshot=loaded.snapshot,
        )
        write_validated(Path(request.generation_dir), validated)
    except ConfigError as exc:
        return _WorkerState(request.generation, root, None, f"configuration: {exc}", None)
    except PipelineLoadError as exc:
        return _WorkerState(request.generation, root, None, exc.message, exc.traceback)
    except Exception as exc:  # a bug of ours or an unreadable root: still a reply
        return _WorkerState(
            request.generation, root, None, f"{type(exc).__name__}: {exc}", traceback.format_exc()
        )
    return _WorkerState(request.generation, root, loaded, None, None)


def _load_from(path: Path, generation: int) -> _WorkerState:
    """Load the validated source at ``path`` (never the files on disk); or an error state.

    A failure here cannot be the user's (the same source loaded in the validating
    worker): it is reported on the worker's stderr too, and every stage sent to this
    worker fails naming it.
    """
    pid = os.getpid()
    try:
        validated = read_validated(path)
    except FileNotFoundError:
        return _WorkerState(
            generation,
            path.parent,
            None,
            f"worker {pid} did not load generation {generation}: its pipeline "
            f"failed to validate{_validator(path.parent)}",
            None,
        )
    except Exception as exc:
        message = (
            f"worker {pid} cannot read the validated pipeline of generation {generation} "
            f"({type(exc).__name__}: {exc})"
        )
        _report(message)
        return _WorkerState(generation, path.parent, None, message, traceback.format_exc())
    root = Path(validated.project_root)
    if validated.generation != generation:
        message = (
            f"worker {pid} was given the validated pipeline of generation "
            f"{validated.generation} for generation {generation}"
        )
        _report(message)
        return _WorkerState(generation, root, None, message, None)
    try:
        os.chdir(root)
        loaded = load_validated(validated)
    except PipelineLoadError as exc:
        message = f"worker {pid} could not load the validated pipeline: {exc.message}"
        _report(message)
        return _WorkerState(generation, root, None, message, exc.traceback)
    except Exception as exc:
        message = f"worker {pid} could not load the validated pipeline: {exc!r}"
        _report(message)
        return _WorkerState(generation, root, None, message, traceback.format_exc())
    return _WorkerState(generation, root, loaded, None, None)


def _validator(directory: Path) -> str:
    try:
        return f" in worker {(directory / CLAIM_FILE).read_text().strip()}"
    except OSError:
        return ""


def _wait_for(directory: Path, pid: int, size: int, timeout_s: float, what: str) -> str | None:
    """Check in as ``<directory>/<pid>``; wait for ``size`` check-ins.

    Returns an error message on timeout (or if the barrier directory is unusable).  The
    directory is the supervisor's: never made here, so that one it already removed (a
    warm-up it gave up on) is not made again, to be left behind.
    """
    try:
        (directory / str(pid)).touch()
    except OSError as exc:
        return f"cannot check in at the {what} barrier {str(directory)!r}: {exc}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            arrived = len(os.listdir(directory))
        except OSError as exc:
            return f"{what} barrier {str(directory)!r} became unreadable: {exc}"
        if arrived >= size:
            return None
        if time.monotonic() >= deadline:
            return (
                f"{what} barrier timed out after {timeout_s:g} s: "
                f"{arrived} of {size} workers checked in"
            )
        time.sleep(_BARRIER_POLL_S)


def run_stage(request: RunRequest) -> StageOutcome:
    """Run one stage of the pipeline this worker loaded; output captured at the fd level.

    A worker that has not loaded yet (loky handed it a stage before its load task)
    loads the generation's validated source first, never the files as they are now.
    """
    state = _Process.state
    if state is None and request.validated is not None:
        state = _Process.state = _load_from(Path(request.validated), request.generation)
        _freeze_heap()
    if state is None or state.loaded is None or state.generation != request.generation:
        if state is None:
            why = "this worker has not loaded a pipeline"
        elif state.generation != request.generation:
            why = f"this worker belongs to generation {state.generation}"
        elif state.error is not None:
            why = f"this worker failed to load the pipeline: {state.error}"
        else:
            why = "this worker failed to load the pipeline"
        error = f"cannot run stage {request.stage!r} of generation {request.generation}: {why}"
        return failed_before_running(request.stage, request.generation, error, pid=os.getpid())
    stopped = _stopped_by(request)
    if stopped is not None:
        return not_started(request.stage, request.generation, stopped)
    marker = _mark_running(request)
    try:
        outcome = execute_stage(
            state.loaded,
            request.stage,
            request.generation,
            request.params,
            state.project_root,
            capture="fd",
        )
    finally:
        if marker is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(marker, 0)
    if outcome.status == "failed" and request.stop_file is not None:
        _stop_run(request.stop_file, request.stage)
    return outcome


def _stopped_by(request: RunRequest) -> str | None:
    """The stage whose failure stopped the request's run, if one did (see ``stop_file``)."""
    if request.stop_file is None:
        return None
    try:
        with open(request.stop_file, encoding="utf-8") as stop:
            return stop.read() or "an earlier stage"
    except OSError:  # FileNotFoundError above all: the run goes on
        return None


def _stop_run(path: str, failed: str) -> None:
    """Write the run's stop file, naming ``failed``, at once: the other workers then
    start none of the run's stages they hold (the first failure's name wins).

    The file appears whole or not at all (written aside, then linked into place, which
    fails if it exists): a worker reading it as it is made would find it empty.
    """
    aside = f"{path}.{os.getpid()}"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, failed.encode())
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # stopped already
            os.link(aside, path)
    except OSError:  # the generation is gone
        pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def _mark_running(request: RunRequest) -> int | None:
    """Note in this worker's marker that it runs the stage (see :func:`running_marker`).

    Best effort.  The marker is opened once and rewritten in place: creating a file per
    stage costs more than a quick stage itself.
    """
    if request.validated is None:
        return None
    path = str(running_marker(Path(request.validated).parent, os.getpid()))
    if _Process.marker is None or _Process.marker[0] != path:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        if _Process.marker is not None:
            with contextlib.suppress(OSError):
                os.close(_Process.marker[1])
        _Process.marker = (path, fd)
    fd = _Process.marker[1]
    name = request.stage.encode()
    try:
        os.pwrite(fd, name, 0)
        os.ftruncate(fd, len(name))
    except OSError:
        return None
    return fd


def run_stages(batch: BatchRequest) -> tuple[StageOutcome, ...]:
    """Run a batch of stages in order, each as :func:`run_stage` would; one outcome each.

    After a failure, with ``stop_on_failure``, the rest are not started (see
    :func:`~pivot_supervise.pipeline._model.not_started`).
    """
    outcomes: list[StageOutcome] = []
    failed: str | None = None
    for request in batch.requests:
        if failed is not None:
            outcomes.append(not_started(request.stage, request.generation, failed))
            continue
        outcome = run_stage(request)
        outcomes.append(outcome)
        if outcome.status == "failed" and batch.stop_on_failure:
            failed = request.stage
    return tuple(outcomes)


def ping() -> int:
    """Return this worker's pid (a cheap round trip, e.g. to warm up a standby pool)."""
    return os.getpid()
