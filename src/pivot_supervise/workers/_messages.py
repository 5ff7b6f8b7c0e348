"""What crosses the process boundary between the supervisor and a worker.

Plain frozen dataclasses of plain data, and nothing else: they are pickled by loky, so
they must not drag functions, modules or open files along, and the supervisor must be
able to unpickle a reply without importing any user code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pivot_supervise.pipeline._model import PipelineSnapshot

__all__ = ["LoadReply", "LoadRequest", "RunRequest"]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Ask a worker of generation ``generation`` to import the pipeline.

    ``barrier_dir`` and ``barrier_size`` make each of the generation's workers take
    exactly one load task (see :func:`~pivot_supervise.workers._tasks.load_generation`).
    Paths are strings: the request is data, and ``str`` pickles the same everywhere.
    """

    generation: int
    project_root: str
    pipeline_file: str
    params_file: str
    barrier_dir: str
    barrier_size: int
    barrier_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LoadReply:
    """The result of one load task: a snapshot, or an error with its traceback."""

    generation: int
    pid: int
    snapshot: PipelineSnapshot | None
    error: str | None
    traceback: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.snapshot is not None


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Run one stage with the given params (``None``: the stage takes no params).

    The supervisor sends the params it fingerprinted rather than letting the worker
    re-read the params file mid-run, so what ran is what was recorded.
    """

    generation: int
    stage: str
    params: Mapping[str, Any] | None = None
