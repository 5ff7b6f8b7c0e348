"""What crosses the process boundary between the supervisor and a worker.

Plain frozen dataclasses of plain data, and nothing else: they are pickled by loky, so
they must not drag functions, modules or open files along, and the supervisor must be
able to unpickle a reply without importing any user code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivot_supervise.pipeline._model import PipelineSnapshot

__all__ = [
    "PARKED_FIFO",
    "PARK_REQUEST_FILE",
    "BatchRequest",
    "LoadReply",
    "LoadRequest",
    "ParkRequest",
    "RunRequest",
    "WarmReply",
    "WarmRequest",
]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Ask a worker of generation ``generation`` to load the pipeline.

    The supervisor submits one per worker.  The first task to start validates the
    pipeline from disk and writes what it compiled into ``generation_dir``; the others
    wait there until the supervisor lets them go, then load exactly that (see
    :func:`~pivot_supervise.workers._tasks.load_generation`).  Paths are strings: the
    request is data, and ``str`` pickles the same everywhere.
    """

    generation: int
    project_root: str
    #: ``None``: the files the project's configuration names when the load starts
    #: (read by the validating worker, off the supervisor's way to promotion).
    pipeline_file: str | None
    params_file: str | None
    #: The generation's private directory (validation claim, gate, validated source).
    generation_dir: str
    #: How many workers may load the validated source at once (0: all).
    load_slots: int = 0


#: In a parked standby's directory: the pickled :class:`LoadRequest` of the load that
#: takes the standby, written before the first worker is let go.
PARK_REQUEST_FILE = "load-request.pickle"
#: In a parked standby's directory: a FIFO each worker writes a byte into once parked.
PARKED_FIFO = "parked"


@dataclass(frozen=True, slots=True)
class ParkRequest:
    """Wait in a standby worker for the load that takes the standby (see ``park``).

    Each worker of a standby holds one park task; task ``index`` waits until the
    supervisor releases the lock ``lock-<index>`` in ``park_dir``, then runs the load
    described in :data:`PARK_REQUEST_FILE` there.
    """

    park_dir: str
    index: int


@dataclass(frozen=True, slots=True)
class LoadReply:
    """The result of one load task: a snapshot, or an error with its traceback.

    ``validated`` is true for the one task that validated the pipeline from disk.
    """

    generation: int
    pid: int
    snapshot: PipelineSnapshot | None
    error: str | None
    traceback: str | None
    validated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.snapshot is not None


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Run one stage with the given params (``None``: the stage takes no params).

    The supervisor sends the params it fingerprinted rather than letting the worker
    re-read the params file mid-run, so what ran is what was recorded.  ``validated``
    is the path of the generation's validated source (set by the backend): a worker
    that gets a stage before it loaded the pipeline loads that, never the files as they
    are now.
    """

    generation: int
    stage: str
    params: Mapping[str, Any] | None = None
    validated: str | None = None
    #: The run it belongs to (for the stop file).
    run_id: int = 0
    #: If this file exists, a failure stopped the run: do not start the stage (set by
    #: the backend for a run that stops at a failure; the file names the failed stage).
    stop_file: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Run several quick stages, in order, in one trip to a worker.

    One task instead of one per stage spares a round trip through the supervisor and
    loky's queues per stage, which is most of the cost of a stage that is over in a
    millisecond.  With ``stop_on_failure`` the stages after a failed one are not
    started (the run stops at a failure anyway).
    """

    requests: tuple[RunRequest, ...]
    stop_on_failure: bool = True


@dataclass(frozen=True, slots=True)
class WarmRequest:
    """Ask each worker of a fresh pool to answer one no-op (see ``warm_up``).

    The tasks meet at a barrier like load tasks, so that each worker answers exactly
    one; ``project_root`` is only looked at, to report project modules already imported
    (a standby worker must have none).
    """

    project_root: str
    barrier_dir: str
    barrier_size: int
    barrier_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class WarmReply:
    """A worker's pid, and the project modules it had imported (normally none)."""

    pid: int
    project_modules: tuple[str, ...]
    error: str | None = None


def stop_file(generation_dir: Path, run_id: int) -> Path:
    """Written when a stage of run ``run_id`` failed and the run stops at a failure.

    Stages of that run already queued in the pool are then not started (their
    workers look for this file first); it holds the failed stage's name.
    """
    return generation_dir / f"stopped-run-{run_id}"


def running_dir(generation_dir: Path) -> Path:
    """Where the workers of a generation note which stage each runs (made with it)."""
    return generation_dir / "running"


def running_marker(generation_dir: Path, pid: int) -> Path:
    """The file where worker ``pid`` names the stage it runs (empty between stages).

    loky does not say which worker died when its pool breaks; the supervisor looks for
    the marker that names a crashed stage, to name the pid it was running on.
    """
    return running_dir(generation_dir) / str(pid)
