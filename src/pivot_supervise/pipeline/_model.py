"""The pipeline as plain data.

A :class:`PipelineSnapshot` is what a worker sends back to the supervisor after it
imported the user's pipeline.  It holds no functions and no modules: only names, paths
and parameters.  That is what lets the supervisor reason about the pipeline (order,
affected stages, its own writes) without ever importing user code.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: A stat signature of a file: ``(mtime_ns, size, inode)``.  Two equal signatures mean
#: "nobody touched the file in between" for the purpose of suppressing our own writes.
FileSignature = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage, as data.

    ``deps`` and ``outs`` are POSIX paths relative to the project root.  ``params`` is
    the stage's table of the params file, or ``None`` when the stage function takes no
    ``params`` argument.  The fingerprints are computed in the worker that imported the
    stage, so the supervisor can tell what changed without importing user code.
    """

    name: str
    module: str
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    params: Mapping[str, Any] | None = None
    #: Digest of the stage's code and every project function, class and constant it
    #: reaches; ``code_parts`` names each of those with its own digest.  Empty when the
    #: pipeline was loaded without fingerprinting.
    code_fingerprint: str = ""
    code_parts: Mapping[str, str] = field(default_factory=dict[str, str])
    params_digest: str = ""

    def __reduce__(self) -> tuple[type[StageSpec], tuple[Any, ...]]:
        # Every load reply and validated pipeline carries all the specs: as positional
        # arguments they pickle ~4x and unpickle ~2x faster than as slot state.
        return StageSpec, _spec_fields(self)


#: A spec's fields in order, as one tuple (see :meth:`StageSpec.__reduce__`).
_spec_fields: Any = operator.attrgetter(*(f.name for f in dataclasses.fields(StageSpec)))


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """A validated pipeline: stages in a topological order, plus load-time warnings.

    ``code_digest`` is a hash of the source of every project module the load imported;
    two workers of one generation that report different digests read different files
    (the user saved in between) and the generation must not be promoted.
    """

    stages: tuple[StageSpec, ...]
    warnings: tuple[str, ...] = ()
    code_digest: str = ""
    _by_name: Mapping[str, StageSpec] = field(
        init=False, repr=False, compare=False, default_factory=dict[str, StageSpec]
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.stages})

    def __reduce__(self) -> tuple[type[PipelineSnapshot], tuple[Any, ...]]:
        return PipelineSnapshot, (self.stages, self.warnings, self.code_digest)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def get(self, name: str) -> StageSpec | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> StageSpec:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.stages)


#: The status of a stage its worker did not start (see :class:`StageOutcome`).
NOT_STARTED = "not_started"


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What a worker reports after running one stage.

    ``status`` is ``"ok"``, ``"failed"``, ``"skipped"`` when the supervisor found the
    stage up to date and did not run it, or :data:`NOT_STARTED` when its worker did not
    start it because an earlier stage of the same batch failed and the run stops at a
    failure (the supervisor reports it skipped); cancellation is decided by the
    supervisor, never by the worker.  ``out_signatures`` holds the stat signature of
    every output file (files under a directory output included) taken right after the
    stage returned, so that the supervisor can tell its own writes from a user's edit.
    """

    stage: str
    generation: int
    pid: int
    status: str
    duration_ms: float
    error: str | None = None
    #: Why the stage ran, or (status ``skipped``) why it did not: "unchanged", ...
    reason: str | None = None
    traceback: str | None = None
    output: str = ""
    out_signatures: Mapping[str, FileSignature] = field(default_factory=dict[str, FileSignature])


def failed_before_running(stage: str, generation: int, error: str, *, pid: int) -> StageOutcome:
    """The outcome of a stage that failed before its function ran (or could finish)."""
    return StageOutcome(
        stage=stage, generation=generation, pid=pid, status="failed", duration_ms=0.0, error=error
    )


def not_started(stage: str, generation: int, failed: str) -> StageOutcome:
    """The outcome of a stage held back because ``failed``, before it in its batch, failed.

    The reason is the one the supervisor gives the stages it stops scheduling.
    """
    return StageOutcome(
        stage=stage,
        generation=generation,
        pid=0,
        status=NOT_STARTED,
        duration_ms=0.0,
        reason=f"run stopped after '{failed}' failed",
    )
