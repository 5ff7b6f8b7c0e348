"""The supervisor's decisions, as a sans-IO state machine.

:class:`SupervisorCore` takes inputs (files changed, run requested, generation loaded or
failed, stage finished, cancel requested) and returns actions (start a generation,
promote, retire, run a stage, publish an event).  It does no I/O, knows no trio, reads
no clock and imports no user code, in the manner of h11's connection object.  The trio
tasks in :mod:`pivot_supervise.supervisor._supervisor` turn the world into inputs and
actions into effects; everything worth testing about *what* the supervisor does is
tested here without processes.

Invariants kept by this module (see DESIGN.md):

* generation numbers only grow;
* a result from a generation other than the active one is never recorded as a
  success: it is reported ``cancelled``;
* a generation is promoted only after the pipeline validated in one of its workers
  (the others load exactly the source that validated), so a broken edit never replaces
  a working pool;
* data-only changes never restart workers; non-parallel mode never has a pool;
* the pipeline's own writes to its outputs never trigger a run; a user's edit of an
  output re-runs its consumers.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..pipeline._dag import PipelineGraph
from ..pipeline._errors import PipelineError
from ..pipeline._model import (
    NOT_STARTED,
    FileSignature,
    PipelineSnapshot,
    StageOutcome,
    StageSpec,
)
from ._events import Event

OnError = Literal["fail", "keep-going"]
ON_ERROR_CHOICES: tuple[OnError, ...] = ("fail", "keep-going")

#: A stage that ran in less than this (ms) is "quick": over before a round trip through
#: the supervisor would be, so more of them are kept in flight (see ``capacity``).
QUICK_STAGE_MS = 2.0


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How runs are executed; fixed by the first run request of a session.

    ``max_workers=None`` means "as many as the machine has".
    """

    parallel: bool = True
    max_workers: int | None = None
    on_error: OnError = "fail"


@dataclass(frozen=True, slots=True)
class RunRequested:
    """Run ``stages`` (and what they need), or every stage when ``stages`` is None.

    The options of the first request are stored and used for every later run,
    including the runs that file changes trigger.  A later request may override
    ``on_error`` for its own run only.
    """

    stages: tuple[str, ...] | None = None
    options: RunOptions | None = None
    on_error: OnError | None = None
    trigger: str = "request"
    #: Run these stages even if up to date: ``True`` for every stage of the request.
    force: bool | frozenset[str] = False


@dataclass(frozen=True, slots=True)
class FileChange:
    """One changed path, relative to the project root, with its stat after the change.

    ``is_code`` is the watcher's classification (a project ``.py`` file, the pipeline,
    params or config file, or a user watch glob).  ``signature`` is ``None`` when the
    file no longer exists.
    """

    path: str
    is_code: bool
    signature: FileSignature | None = None


@dataclass(frozen=True, slots=True)
class FilesChanged:
    changes: tuple[FileChange, ...]


@dataclass(frozen=True, slots=True)
class GenerationLoaded:
    """Every worker of ``generation`` loaded the pipeline and agreed on ``snapshot``."""

    generation: int
    snapshot: PipelineSnapshot
    workers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    """Loading the pipeline in ``generation`` failed; the generation is unusable."""

    generation: int
    error: str
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class StageFinished:
    """A dispatched stage came back.

    ``worker_lost`` says the generation's pool broke under it (a worker died): the
    outcome is a failure and the generation can run nothing more.
    """

    attempt: int
    outcome: StageOutcome
    worker_lost: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Stop the current run now, running stages included."""


@dataclass(frozen=True, slots=True)
class RestartRequested:
    """Bring up a fresh generation now, through the same validate-then-promote path."""

    trigger: str = "restart"


Input = (
    RunRequested
    | FilesChanged
    | GenerationLoaded
    | GenerationFailed
    | StageFinished
    | CancelRequested
    | RestartRequested
)


# -------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class StartGeneration:
    """Spawn ``workers`` fresh processes as ``generation`` and load the pipeline in each.

    Answer with :class:`GenerationLoaded` or :class:`GenerationFailed`.
    """

    generation: int
    workers: int
    trigger: str


@dataclass(frozen=True, slots=True)
class ReloadInProcess:
    """Non-parallel mode: drop the project's modules and import the pipeline again.

    Answer with :class:`GenerationLoaded` (no workers) or :class:`GenerationFailed`.
    """

    generation: int
    trigger: str


@dataclass(frozen=True, slots=True)
class Promote:
    """Make ``generation`` the one stages run on."""

    generation: int


@dataclass(frozen=True, slots=True)
class Retire:
    """Shut ``generation`` down and kill its workers; its pending results are void."""

    generation: int


@dataclass(frozen=True, slots=True)
class RunStage:
    """Run ``stage`` on ``generation``; answer with :class:`StageFinished` for ``attempt``.

    The shell may find the stage up to date and answer with a ``skipped`` outcome
    without running it, unless ``force``.  ``spec`` is the stage as the active
    generation loaded it (its params and fingerprints are what the run must use).
    """

    attempt: int
    generation: int
    stage: str
    spec: StageSpec
    force: bool = False
    run_id: int = 0
    #: Quick enough to share one trip to a worker with other quick stages (see
    #: :meth:`SupervisorCore.capacity`); the shell may batch such stages.
    batchable: bool = False
    #: The run stops at a failure (``--on-error fail``): a batch stops there too.
    stop_on_failure: bool = True


@dataclass(frozen=True, slots=True)
class CancelAttempts:
    """Stop waiting for these attempts; the core has already reported them cancelled."""

    attempts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Publish:
    event: Event


@dataclass(frozen=True, slots=True)
class Exit:
    """One-shot mode is done: exit with ``code``."""

    code: int


Action = (
    StartGeneration
    | ReloadInProcess
    | Promote
    | Retire
    | RunStage
    | CancelAttempts
    | Publish
    | Exit
)


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Attempt:
    stage: str
    generation: int


@dataclass(slots=True)
class _Run:
    """The stages of one run: from idle, through work, back to idle."""

    run_id: int
    on_error: OnError
    pending: set[str] = field(default_factory=set[str])
    running: dict[str, int] = field(default_factory=dict[str, int])
    rerun_after: set[str] = field(default_factory=set[str])
    ok: set[str] = field(default_factory=set[str])
    failed: set[str] = field(default_factory=set[str])
    skipped: set[str] = field(default_factory=set[str])
    unchanged: set[str] = field(default_factory=set[str])
    cancelled: set[str] = field(default_factory=set[str])
    stopped: bool = False
    #: Stages to run even if they are up to date.
    forced: set[str] = field(default_factory=set[str])
    #: Candidates for dispatch, as a heap of (topological index, name).  Entries are
    #: checked when popped, so a stale one costs a pop, never a wrong dispatch.
    ready: list[tuple[int, str]] = field(default_factory=list[tuple[int, str]])
    in_ready: set[str] = field(default_factory=set[str])

    def outstanding(self) -> set[str]:
        return self.pending | set(self.running)

    def is_outstanding(self, name: str) -> bool:
        return name in self.pending or name in self.running

    def finished(self) -> set[str]:
        return self.ok | self.failed | self.skipped | self.unchanged | self.cancelled


class SupervisorCore:
    """The decision logic of one supervisor session.

    ``cpu_count`` caps the pool size (the shell passes ``loky.cpu_count()``).  ``watch``
    says whether the session keeps supervising after the first run (``watch``) or ends
    with an :class:`Exit` action (``run``).  ``stages_per_worker`` is how many stages
    may be in flight per worker (queued in the pool beyond the one running);
    ``quick_stages_per_worker``, when given, is how many while stages are quick (see
    :meth:`capacity`).
    """

    def __init__(
        self,
        *,
        cpu_count: int,
        watch: bool,
        stages_per_worker: int = 2,
        quick_stages_per_worker: int | None = None,
    ) -> None:
        self.cpu_count = max(1, cpu_count)
        self.watch = watch
        self.stages_per_worker = max(1, stages_per_worker)
        self.quick_stages_per_worker = max(
            self.stages_per_worker, quick_stages_per_worker or self.stages_per_worker
        )
        #: How long the stages that ran lately took, in ms (see :meth:`_note_duration`).
        self.typical_stage_ms: float | None = None
        self.options: RunOptions | None = None
        self.targets: tuple[str, ...] | None = None
        self.pipeline: PipelineSnapshot | None = None
        self.graph: PipelineGraph | None = None
        self.active: int | None = None
        self.active_workers: tuple[int, ...] = ()
        self.last_error: str | None = None
        self.run: _Run | None = None
        self.counts: dict[str, int] = {"ok": 0, "failed": 0, "cancelled": 0, "skipped": 0}
        self._next_generation = 1
        self._loading: int | None = None
        self._loading_trigger = ""
        self._reload_again: str | None = None
        self._broken = False
        self._active_healthy = False
        self._rerun_all_on_promote = False
        self._exited = False
        self._attempts: dict[int, _Attempt] = {}
        self._attempt_ids = itertools.count(1)
        self._run_ids = itertools.count(1)
        self._out_signatures: dict[str, FileSignature] = {}
        self._position: dict[str, int] = {}
        self._first_force: bool | frozenset[str] = False
        #: Per stage: the status and duration of its last finish (for status queries).
        self.last_results: dict[str, tuple[str, float | None]] = {}
        #: Stage count of the last pipeline a generation loaded: sizes the next one.
        self._last_stage_count: int | None = None

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> str:
        """``reloading``, ``running``, ``broken`` or ``idle``."""
        if self._loading is not None:
            return "reloading"
        if self.run is not None:
            return "running"
        if self._broken:
            return "broken"
        return "idle"

    def status(self) -> dict[str, Any]:
        """A plain-data picture of the session, for status queries (the API, tests)."""
        run = self.run
        return {
            "state": self.state,
            "generation": self.active,
            "loading_generation": self._loading,
            "workers": list(self.active_workers),
            "run": None
            if run is None
            else {
                "id": run.run_id,
                "running": self._sorted(run.running),
                "pending": self._sorted(run.pending),
                "finished": self._sorted(run.finished()),
            },
            "last_error": self.last_error,
            "counts": dict(self.counts),
        }

    def stage_table(self) -> list[dict[str, Any]]:
        """Every stage of the active pipeline, in order, with its last result."""
        if self.pipeline is None:
            return []
        table: list[dict[str, Any]] = []
        for spec in self.pipeline.stages:
            status, duration = self.last_results.get(spec.name, (None, None))
            table.append(
                {
                    "name": spec.name,
                    "deps": list(spec.deps),
                    "outs": list(spec.outs),
                    "last_status": status,
                    "last_duration_ms": duration,
                }
            )
        return table

    def pool_size(self, stage_count: int | None) -> int:
        """min(stage count, max_workers, cpu count), and at least one."""
        cap = self.cpu_count
        if self.options is not None and self.options.max_workers is not None:
            cap = min(cap, self.options.max_workers)
        if stage_count is not None:
            cap = min(cap, stage_count)
        return max(1, cap)

    # ------------------------------------------------------------------- inputs

    def handle(self, event: Input) -> list[Action]:
        """Feed one input; return the actions to carry out, in order."""
        if self._exited:
            return []
        match event:
            case RunRequested():
                return self._on_run_requested(event)
            case FilesChanged():
                return self._on_files_changed(event)
            case GenerationLoaded():
                return self._on_generation_loaded(event)
            case GenerationFailed():
                return self._on_generation_failed(event)
            case StageFinished():
                return self._on_stage_finished(event)
            case CancelRequested():
                return self._on_cancel()
            case RestartRequested():
                return self._on_restart(event)

    def _on_run_requested(self, req: RunRequested) -> list[Action]:
        if self.options is None:
            self.options = req.options or RunOptions()
            self.targets = req.stages
            self._first_force = req.force
            return self._reload(trigger="start")
        if self.graph is None or self.pipeline is None:
            return [_error("no pipeline is loaded yet; fix the pipeline and save it")]
        names = req.stages if req.stages is not None else self._scope_names()
        unknown = self.graph.unknown(names)
        if unknown:
            return [_error(_unknown_stages_message(unknown, self.pipeline.names))]
        wanted = self.graph.upstream_closure(names)
        return self._add_to_run(wanted, trigger=req.trigger, on_error=req.on_error, force=req.force)

    def _on_files_changed(self, changed: FilesChanged) -> list[Action]:
        code = sorted({c.path for c in changed.changes if c.is_code})
        data = [c for c in changed.changes if not c.is_code]
        actions: list[Action] = []
        if code:
            actions.append(_publish("files_changed", kind="code", paths=code, stages=[]))
            actions += self._reload(trigger="code change")
        affected, paths = self._affected_by_data(data)
        if affected:
            actions.append(
                _publish(
                    "files_changed",
                    kind="data",
                    paths=sorted(paths),
                    stages=self._sorted(affected),
                )
            )
            actions += self._add_to_run(affected, trigger="data change")
        return actions

    def _on_generation_loaded(self, loaded: GenerationLoaded) -> list[Action]:
        if loaded.generation != self._loading:
            return [Retire(loaded.generation)]
        self._last_stage_count = len(loaded.snapshot)
        if self._reload_again is not None:
            trigger, self._reload_again = self._reload_again, None
            self._loading = None
            discarded = _discarded(loaded.generation, "superseded by a newer change")
            return [Retire(loaded.generation), discarded, *self._reload(trigger)]
        try:
            graph = PipelineGraph(loaded.snapshot.stages)
        except PipelineError as exc:
            return self._on_generation_failed(GenerationFailed(loaded.generation, str(exc)))
        assert self.options is not None
        if self.options.parallel:
            wanted = self.pool_size(len(loaded.snapshot))
            if len(loaded.workers) != wanted:
                # The size was chosen before this pipeline was known; build one that fits.
                self._loading = None
                count = len(loaded.snapshot)
                reason = f"resized: {_plural(wanted, 'worker')} fit {_plural(count, 'stage')}"
                discarded = _discarded(loaded.generation, reason)
                resized = self._start_generation(self._loading_trigger)
                return [Retire(loaded.generation), discarded, *resized]
        return self._promote(loaded, graph)

    def _on_generation_failed(self, failed: GenerationFailed) -> list[Action]:
        if failed.generation != self._loading:
            return [Retire(failed.generation)]
        self._loading = None
        actions: list[Action] = [Retire(failed.generation)]
        if self._reload_again is not None:
            trigger, self._reload_again = self._reload_again, None
            discarded = _discarded(failed.generation, "superseded by a newer change")
            return [*actions, discarded, *self._reload(trigger)]
        self._broken = True
        self.last_error = failed.error
        self._rerun_all_on_promote = False
        actions.append(
            _publish(
                "reload_failed",
                generation=failed.generation,
                active_generation=self.active,
                trigger=self._loading_trigger,
                error=failed.error,
                traceback=failed.traceback,
            )
        )
        if self.active is None and not self.watch:
            return [*actions, *self._exit(1)]
        if self.active is not None and not self._active_healthy:
            # The active pool crashed and its replacement did not load: nothing can run.
            return actions + self._abandon_pending("no working generation: " + failed.error)
        # The last good generation keeps serving what was held back for the reload.
        return actions + self._dispatch()

    def _abandon_pending(self, reason: str) -> list[Action]:
        """Report every pending stage cancelled, and end the run if nothing runs."""
        run = self.run
        if run is None:
            return []
        actions: list[Action] = [
            self._finish(name, "cancelled", None, reason=reason)
            for name in self._sorted(run.pending)
        ]
        run.pending.clear()
        run.rerun_after.clear()
        return actions + self._maybe_finish_run()

    def _on_stage_finished(self, finished: StageFinished) -> list[Action]:
        attempt = self._attempts.pop(finished.attempt, None)
        if attempt is None:
            return []  # already reported cancelled
        outcome = finished.outcome
        if outcome.status in ("ok", "failed") and outcome.pid:
            self._note_duration(outcome.duration_ms)
        actions: list[Action] = []
        run = self.run
        assert run is not None
        run.running.pop(attempt.stage, None)
        if finished.worker_lost and attempt.generation == self.active and self._active_healthy:
            # The pool is broken for good: its other running stages come back failed too.
            self._active_healthy = False
            if self._loading is None:
                actions += self._start_generation("worker crash")
        if attempt.generation != self.active:
            actions.append(self._finish(attempt.stage, "cancelled", outcome))
        elif outcome.status == NOT_STARTED:
            actions.append(self._skip(attempt.stage, outcome.reason or "not started"))
        elif outcome.status == "ok":
            self._out_signatures.update(outcome.out_signatures)
            actions.append(self._finish(attempt.stage, "ok", outcome))
        elif outcome.status == "skipped":
            actions.append(self._finish(attempt.stage, "unchanged", outcome))
        else:
            actions.append(self._finish(attempt.stage, "failed", outcome))
        self._wake(self._neighbours_of(attempt.stage))
        if attempt.stage in run.rerun_after:
            run.rerun_after.discard(attempt.stage)
            self._requeue(run, attempt.stage)
        elif attempt.stage in run.failed and run.on_error == "fail" and not run.stopped:
            run.stopped = True
            for name in self._sorted(run.pending):
                actions.append(self._skip(name, f"run stopped after '{attempt.stage}' failed"))
            run.pending.clear()
        return actions + self._dispatch()

    def _on_cancel(self) -> list[Action]:
        run = self.run
        if run is None:
            return []  # nothing to cancel; the caller learns it from status (run: null)
        actions: list[Action] = []
        for name in self._sorted(run.pending):
            actions.append(self._finish(name, "cancelled", None, reason="cancel requested"))
        run.pending.clear()
        run.rerun_after.clear()
        had_running = bool(run.running)
        actions += self._cancel_in_flight(reason="cancel requested")
        assert self.options is not None
        if had_running and self.options.parallel and self._loading is None:
            # Running stages only stop when their workers do: replace the generation.
            self._rerun_all_on_promote = False
            actions += self._start_generation("cancel")
        return actions + self._maybe_finish_run()

    def _on_restart(self, restart: RestartRequested) -> list[Action]:
        if self.options is None:
            return [_error("the supervisor has not started yet")]
        return self._reload(restart.trigger)

    # ------------------------------------------------------------ generations

    def _reload(self, trigger: str) -> list[Action]:
        """A code/config change (or a restart): bring up a new generation, then re-run."""
        assert self.options is not None
        if self._loading is not None:
            self._reload_again = trigger
            return []
        actions: list[Action] = []
        if self.pipeline is not None:
            # Their results would come from the old code: stop waiting for them now.
            actions += self._cancel_in_flight(reason="code changed")
            self._rerun_all_on_promote = True
        return actions + self._start_generation(trigger)

    def _start_generation(self, trigger: str) -> list[Action]:
        assert self.options is not None
        generation = self._next_generation
        self._next_generation += 1
        self._loading = generation
        self._loading_trigger = trigger
        actions: list[Action] = [_publish("reload_started", generation=generation, trigger=trigger)]
        if not self.options.parallel:
            return [*actions, ReloadInProcess(generation, trigger)]
        workers = self.pool_size(self._last_stage_count)
        return [*actions, StartGeneration(generation, workers, trigger)]

    def _promote(self, loaded: GenerationLoaded, graph: PipelineGraph) -> list[Action]:
        trigger = self._loading_trigger
        old = self.active
        self._loading = None
        self._broken = False
        self.last_error = None
        self.active = loaded.generation
        self.active_workers = loaded.workers
        self._active_healthy = True
        self.pipeline = loaded.snapshot
        self.graph = graph
        self._position = {name: index for index, name in enumerate(graph.order)}
        if self.run is not None:
            # The order may have changed with the pipeline: rebuild the ready heap.
            self.run.pending &= set(graph.order)
            self.run.rerun_after &= set(graph.order)
            self.run.ready.clear()
            self.run.in_ready.clear()
            self._wake(self.run.pending)
        actions: list[Action] = [Promote(loaded.generation)]
        if old is not None and old != loaded.generation:
            actions.append(Retire(old))
        actions.append(
            _publish(
                "generation_ready",
                generation=loaded.generation,
                workers=list(loaded.workers),
                trigger=trigger,
                stages=len(loaded.snapshot),
            )
        )
        actions += [_publish("pipeline_warning", message=w) for w in loaded.snapshot.warnings]
        if old is None or self._rerun_all_on_promote:
            self._rerun_all_on_promote = False
            named_force = self._first_force if isinstance(self._first_force, frozenset) else ()
            unknown = graph.unknown([*(self.targets or ()), *sorted(named_force)])
            if unknown:
                actions.append(_error(_unknown_stages_message(unknown, loaded.snapshot.names)))
                if not self.watch:
                    return actions + self._exit(2)
            force, self._first_force = self._first_force, False
            scope = set(self._scope_names())
            return actions + self._add_to_run(scope, trigger=trigger, force=force)
        return actions + self._dispatch()

    # ------------------------------------------------------------------- runs

    def _scope_names(self) -> list[str]:
        """Every stage this session looks after: the targets and what they need."""
        assert self.graph is not None
        if self.targets is None:
            return list(self.graph.order)
        known = [t for t in self.targets if t not in self.graph.unknown([t])]
        return self.graph.sort(self.graph.upstream_closure(known))

    def _add_to_run(
        self,
        stages: Iterable[str],
        *,
        trigger: str,
        on_error: OnError | None = None,
        force: bool | frozenset[str] = False,
    ) -> list[Action]:
        assert self.options is not None and self.graph is not None
        if self.active is not None and not self._active_healthy and self._loading is None:
            # The pool crashed and its replacement did not load: nothing could run.
            return [
                _error(
                    "no working generation: the workers crashed and the replacement did "
                    f"not load ({self.last_error}); fix the code and save, or restart"
                )
            ]
        scope = set(self._scope_names())
        wanted = [s for s in self.graph.sort(stages) if s in scope]
        if not wanted:
            # Nothing to add; a run the new pipeline emptied still has to end.
            return self._dispatch()
        actions: list[Action] = []
        run = self.run
        if run is None:
            run = self.run = _Run(
                run_id=next(self._run_ids), on_error=on_error or self.options.on_error
            )
            actions.append(
                _publish(
                    "run_started",
                    run_id=run.run_id,
                    stages=wanted,
                    trigger=trigger,
                    generation=self.active,
                )
            )
        if force is True:
            run.forced.update(wanted)
        elif force:
            run.forced.update(force)
        for name in wanted:
            if name in run.running:
                run.rerun_after.add(name)
            else:
                self._requeue(run, name)
        if run.stopped:
            run.stopped = False
        return actions + self._dispatch()

    def _requeue(self, run: _Run, name: str) -> None:
        if name not in self._position:
            return  # the current pipeline no longer has it
        run.pending.add(name)
        for done in (run.ok, run.failed, run.skipped, run.unchanged, run.cancelled):
            done.discard(name)
        self._wake([name])

    def _wake(self, names: Iterable[str]) -> None:
        """Offer ``names`` for dispatch; :meth:`_dispatch` checks them when it pops."""
        run = self.run
        if run is None or self.graph is None:
            return
        for name in names:
            if name in run.pending and name not in run.in_ready and name in self._position:
                run.in_ready.add(name)
                heapq.heappush(run.ready, (self._position[name], name))

    def _downstream_of(self, name: str) -> frozenset[str]:
        if self.graph is None or name not in self.graph:
            return frozenset()
        return self.graph.downstream(name)

    def _neighbours_of(self, name: str) -> frozenset[str]:
        """The stages a finished ``name`` may have been holding back, either way."""
        if self.graph is None or name not in self.graph:
            return frozenset()
        return self.graph.downstream(name) | self.graph.upstream(name)

    def _can_dispatch(self) -> bool:
        # While a replacement generation loads, the active one's results would be stale
        # (code change), unwanted (cancel) or impossible (worker crash): hold the run.
        return self.active is not None and self._active_healthy and self._loading is None

    def _dispatch(self) -> list[Action]:
        """Start every pending stage whose upstream is done, up to the pool's capacity.

        Candidates come from the ready heap in topological order; a candidate whose
        upstream is still outstanding is dropped (finishing that upstream wakes it
        again), and one whose upstream failed is skipped, which wakes its own
        downstream in turn.
        """
        run = self.run
        if run is None:
            return []
        actions: list[Action] = []
        if self._can_dispatch():
            assert self.graph is not None and self.pipeline is not None
            assert self.active is not None
            quick = self._quick()
            capacity = self.capacity() - len(run.running)
            while run.ready and capacity > 0:
                _, name = heapq.heappop(run.ready)
                run.in_ready.discard(name)
                if name not in run.pending:
                    continue
                upstream = self.graph.upstream(name)
                if any(run.is_outstanding(u) for u in upstream):
                    continue
                # Do not rewrite what a running stage is reading; it wakes us when done.
                if any(d in run.running for d in self.graph.downstream(name)):
                    continue
                blocked = sorted(
                    u for u in upstream if u in run.failed | run.skipped | run.cancelled
                )
                if blocked:
                    run.pending.discard(name)
                    actions.append(
                        self._skip(name, f"upstream stage '{blocked[0]}' did not succeed")
                    )
                    self._wake(self._downstream_of(name))
                    continue
                capacity -= 1
                run.pending.discard(name)
                attempt = next(self._attempt_ids)
                self._attempts[attempt] = _Attempt(name, self.active)
                run.running[name] = attempt
                actions.append(
                    RunStage(
                        attempt,
                        self.active,
                        name,
                        self.pipeline[name],
                        force=name in run.forced,
                        run_id=run.run_id,
                        batchable=quick and self._known_quick(name),
                        stop_on_failure=run.on_error == "fail",
                    )
                )
        return actions + self._maybe_finish_run()

    def capacity(self) -> int:
        """How many stages may be in flight: by default two per worker.

        The second stage waits in the pool's queue, so a worker that finishes picks it up
        at once instead of idling for a round trip through the supervisor.  While the
        stages that ran lately were quick (:data:`QUICK_STAGE_MS`), up to
        ``quick_stages_per_worker`` per worker: a stage that is over in a millisecond
        would otherwise leave its worker idle for most of each round trip, and the shell
        may then batch several into one trip.  In-process there is one slot: stages run
        one at a time.
        """
        workers = len(self.active_workers)
        if not workers:
            return 1
        per_worker = self.quick_stages_per_worker if self._quick() else self.stages_per_worker
        return per_worker * workers

    def _quick(self) -> bool:
        typical = self.typical_stage_ms
        return typical is not None and typical < QUICK_STAGE_MS

    def _known_quick(self, name: str) -> bool:
        """Not known to be slow: its own last run (if any) was quick too."""
        _, duration = self.last_results.get(name, (None, None))
        return duration is None or duration < QUICK_STAGE_MS

    def _note_duration(self, duration_ms: float) -> None:
        """Fold a stage's duration into :attr:`typical_stage_ms`.

        One slow stage is enough to leave the quick mode; quick ones bring it back, each
        halving the distance (a handful after a slow stage of seconds).
        """
        typical = self.typical_stage_ms
        if typical is None:
            self.typical_stage_ms = duration_ms
        elif duration_ms >= QUICK_STAGE_MS:
            self.typical_stage_ms = max(duration_ms, typical)
        else:
            self.typical_stage_ms = (typical + duration_ms) / 2

    def _maybe_finish_run(self) -> list[Action]:
        run = self.run
        if run is None or run.pending or run.running:
            return []
        self.run = None
        actions: list[Action] = [
            _publish(
                "run_finished",
                run_id=run.run_id,
                ok=len(run.ok),
                failed=len(run.failed),
                cancelled=len(run.cancelled),
                skipped=len(run.skipped) + len(run.unchanged),
            )
        ]
        if not self.watch:
            bad = run.failed or run.cancelled or run.skipped
            actions += self._exit(1 if bad else 0)
        return actions

    def _cancel_in_flight(self, *, reason: str) -> list[Action]:
        run = self.run
        if run is None:
            return []
        cancelled: list[int] = []
        actions: list[Action] = []
        for stage, attempt in sorted(run.running.items()):
            del run.running[stage]
            self._attempts.pop(attempt, None)
            cancelled.append(attempt)
            if stage in run.rerun_after:
                run.rerun_after.discard(stage)
                self._requeue(run, stage)
                continue
            actions.append(self._finish(stage, "cancelled", None, reason=reason))
            # Whatever waited on it must be reconsidered (skipped, if it cannot run now).
            self._wake(self._neighbours_of(stage))
        if cancelled:
            actions.insert(0, CancelAttempts(tuple(cancelled)))
        return actions

    def _finish(
        self, stage: str, status: str, outcome: StageOutcome | None, *, reason: str | None = None
    ) -> Publish:
        run = self.run
        assert run is not None
        groups = {"ok": run.ok, "failed": run.failed, "cancelled": run.cancelled}
        groups["unchanged"] = run.unchanged
        groups[status].add(stage)
        ran = status != "unchanged"
        if not ran:
            # Reported as a skip: the stage is up to date, so nothing ran.
            status = "skipped"
        if status == "cancelled" and outcome is not None:
            reason = reason or "result came from a retired generation"
        elif reason is None and outcome is not None:
            reason = outcome.reason
        self.counts[status] += 1
        duration = None if outcome is None or not ran else round(outcome.duration_ms, 3)
        self.last_results[stage] = (status, duration)
        fields: dict[str, Any] = {"stage": stage, "status": status, "run_id": run.run_id}
        if outcome is not None:
            fields.update(
                generation=outcome.generation,
                # 0: no process ran it (found up to date, or its worker is unknown).
                pid=outcome.pid or None,
                duration_ms=duration,
            )
            if status == "failed":
                fields.update(error=outcome.error, traceback=outcome.traceback)
            fields["output"] = outcome.output
        else:
            fields.update(generation=None, pid=None, duration_ms=None)
        if reason is not None:
            fields["reason"] = reason
        return Publish(Event("stage_finished", fields))

    def _skip(self, stage: str, reason: str) -> Publish:
        run = self.run
        assert run is not None
        run.skipped.add(stage)
        self.counts["skipped"] += 1
        self.last_results[stage] = ("skipped", None)
        return _publish(
            "stage_finished",
            stage=stage,
            status="skipped",
            reason=reason,
            run_id=run.run_id,
            generation=None,
            pid=None,
            duration_ms=None,
        )

    def _exit(self, code: int) -> list[Action]:
        self._exited = True
        return [Exit(code)]

    # ------------------------------------------------------------- data changes

    def _affected_by_data(self, changes: Sequence[FileChange]) -> tuple[set[str], set[str]]:
        """Stages a data change affects, and the paths that mattered.

        An output whose producer is pending or running is being written by the pipeline
        itself; so is one whose stat still matches what the producer's outcome recorded.
        Anything else under an output is a user's edit: its consumers re-run.  A deleted
        output re-runs its producer.  Paths nobody declared are ignored silently.
        """
        graph = self.graph
        if graph is None or not changes:
            return set(), set()
        outstanding = self.run.outstanding() if self.run is not None else set[str]()
        affected: set[str] = set()
        paths: set[str] = set()
        for change in changes:
            producers = graph.producers_of(change.path)
            consumers = graph.consumers_of(change.path)
            if not producers and not consumers:
                continue
            if producers:
                if producers & outstanding:
                    continue
                if change.signature is None:
                    self._out_signatures.pop(change.path, None)
                    affected |= producers
                elif change.signature == self._out_signatures.get(change.path):
                    continue
                else:
                    self._out_signatures[change.path] = change.signature
            affected |= consumers
            paths.add(change.path)
        return set(graph.downstream_closure(affected)), paths

    def _sorted(self, names: Iterable[str]) -> list[str]:
        """In pipeline order; names the current pipeline no longer has come last."""
        last = len(self._position)
        return sorted(names, key=lambda name: (self._position.get(name, last), name))


def _publish(name: str, **fields: Any) -> Publish:
    return Publish(Event(name, fields))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _discarded(generation: int, reason: str) -> Publish:
    return _publish("generation_discarded", generation=generation, reason=reason)


def _error(message: str) -> Publish:
    return _publish("error", message=message)


def _unknown_stages_message(unknown: Sequence[str], known: Sequence[str]) -> str:
    names = ", ".join(repr(u) for u in unknown)
    plural = "stages" if len(unknown) > 1 else "stage"
    listing = ", ".join(known) if known else "(none)"
    return f"unknown {plural} {names}; the pipeline defines: {listing}"
