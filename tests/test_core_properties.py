"""The supervisor core's invariants, checked over generated sessions.

A hypothesis state machine plays the trio shell: it keeps the loads and stage attempts
the core asked for and answers them in any order (a pipeline loaded, a load failed, a
stage ok / failed / up to date, a worker lost), and injects what the world sends (file
changes, run / cancel / restart requests).  After every input it checks the actions the
core returned, and at the end it answers everything still outstanding and checks that the
session came back to rest.  No processes, no mocks: only :class:`SupervisorCore`.

The shell keeps its side of the contract: it answers each load at most once, spawns as
many workers as it was asked for, never answers ``skipped`` for a forced stage, stops
waiting for attempts named in :class:`CancelAttempts`, and may still deliver (usually
failed) results for attempts of a generation after :class:`Retire`.

Checked after every input (numbers as in the brief of this file):

1. started generation numbers strictly grow; ``Promote(g)`` only for a loaded ``g``
   newer than every promoted one (and never a ``Retire`` of the active generation);
2. no ``stage_finished`` ``ok`` from a generation other than the active one;
3. no ``StartGeneration`` / ``ReloadInProcess`` while another load is unanswered;
4. at rest (everything answered), every ``run_started`` got one ``run_finished``;
5. after a dispatch, attempts in flight <= stages per worker x workers (1 in-process),
   the quick mode's stages per worker at most;
6. no stage dispatched while a stage it reads from directly is in flight;
7. watch sessions never ``Exit``; one-shot ones exit once, last, and do exit at rest;
8. every ``reload_started`` ends in exactly one ready / failed / discarded event;
9. in-process mode never spawns a pool, parallel mode never reloads in process;

plus: a data-only change never touches generations, a result that crossed a
``CancelAttempts`` changes nothing, and ``status()`` / ``stage_table()`` always work.
The regressions at the end pin the bugs this machine found (all fixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from pivot_supervise.pipeline._dag import PipelineGraph, build_snapshot
from pivot_supervise.pipeline._model import (
    NOT_STARTED,
    FileSignature,
    PipelineSnapshot,
    StageOutcome,
    StageSpec,
    not_started,
)
from pivot_supervise.supervisor._core import (
    QUICK_STAGE_MS,
    Action,
    CancelAttempts,
    CancelRequested,
    Exit,
    FileChange,
    FilesChanged,
    GenerationFailed,
    GenerationLoaded,
    Input,
    OnError,
    Promote,
    Publish,
    ReloadInProcess,
    RestartRequested,
    Retire,
    RunOptions,
    RunRequested,
    RunStage,
    StageFinished,
    StartGeneration,
    SupervisorCore,
)
from test_core import CHAIN

# ----------------------------------------------------------------- the pipelines

# raw.csv -> clean -> clean.csv -> train -> model.json -> report; lint on its own.
# CHAIN (from test_core) without lint: one stage fewer, so a pool sized for CHAIN may not fit.
SHORT = build_snapshot([s for s in CHAIN.stages if s.name != "lint"])
# The same names, other edges: train reads style.toml, lint reads report's output.
REWIRED = build_snapshot(
    [
        StageSpec("clean", "pipeline", deps=("data/raw.csv",), outs=("data/clean.csv",)),
        StageSpec("train", "pipeline", deps=("style.toml",), outs=("model.json",)),
        StageSpec(
            "report", "pipeline", deps=("data/clean.csv", "model.json"), outs=("report.txt",)
        ),
        StageSpec("lint", "pipeline", deps=("report.txt",), outs=("lint.txt",)),
    ]
)
SINGLE = build_snapshot([StageSpec("only", "pipeline", deps=("data/raw.csv",), outs=("x.txt",))])
# A directory output read through a file under it.
DIRS = build_snapshot(
    [
        StageSpec("gen", "pipeline", deps=("seed.txt",), outs=("parts",)),
        StageSpec("use", "pipeline", deps=("parts/p1.txt",), outs=("used.txt",)),
    ]
)
# Loads in the worker but does not validate: two stages claim one output.
INVALID = PipelineSnapshot(
    stages=(
        StageSpec("clean", "pipeline", outs=("same.txt",)),
        StageSpec("train", "pipeline", outs=("same.txt",)),
    )
)
VALID_PIPELINES = (CHAIN, SHORT, REWIRED, SINGLE, DIRS)
ALL_PIPELINES = (*VALID_PIPELINES, INVALID)
STAGE_NAMES = sorted({s.name for p in ALL_PIPELINES for s in p.stages} | {"nope"})

CODE_PATHS = ("pipeline.py", "helpers.py", "params.yaml")
DECLARED_DEPS = sorted({d for p in VALID_PIPELINES for s in p.stages for d in s.deps})
DECLARED_OUTS = sorted({o for p in VALID_PIPELINES for s in p.stages for o in s.outs})
UNDECLARED = ("notes.txt", "data/other.csv", "parts/p2.txt", "data")
SIGNATURES: tuple[FileSignature, ...] = ((1, 1, 1), (2, 2, 2))

signatures = st.sampled_from(SIGNATURES)
file_changes = st.one_of(
    st.builds(FileChange, st.sampled_from(CODE_PATHS), st.just(True), st.none() | signatures),
    st.builds(
        FileChange,
        st.sampled_from([*DECLARED_DEPS, *DECLARED_OUTS, *UNDECLARED]),
        st.just(False),
        st.none() | signatures,
    ),
)
forces = st.one_of(
    st.just(False),
    st.just(True),
    st.frozensets(st.sampled_from(STAGE_NAMES), max_size=2),
)


def event_name(action: Action) -> str | None:
    return action.event.name if isinstance(action, Publish) else None


# -------------------------------------------------------------- the simulated shell


@dataclass
class Shell:
    """What the shell knows: outstanding requests, and what the core said so far."""

    parallel: bool
    watch: bool
    stages_per_worker: int
    #: StartGeneration / ReloadInProcess not answered yet.
    loads: dict[int, StartGeneration | ReloadInProcess] = field(default_factory=dict)
    #: RunStage attempts neither answered nor cancelled.
    in_flight: dict[int, RunStage] = field(default_factory=dict)
    #: Cancelled attempts whose result may already be on its way to the core (sent by
    #: the waiter before the driver handled the CancelAttempts): delivered at most once.
    in_transit: dict[int, RunStage] = field(default_factory=dict)
    #: Generation -> (snapshot, worker count) of every GenerationLoaded sent.
    loaded: dict[int, tuple[PipelineSnapshot, int]] = field(default_factory=dict)
    retired: set[int] = field(default_factory=set)
    #: Generations whose pool broke (a worker_lost was sent): everything else fails.
    broken_pools: set[int] = field(default_factory=set)
    active: int | None = None
    last_started: int = 0
    max_promoted: int = 0
    open_run: int | None = None
    runs_started: list[int] = field(default_factory=list)
    runs_finished: list[int] = field(default_factory=list)
    #: reload_started generation -> the ready / failed / discarded events it got.
    reload_ends: dict[int, list[str]] = field(default_factory=dict)
    exits: list[int] = field(default_factory=list)
    #: The open run had stages cancelled by a reload, then a reload failed: see
    #: test_a_failed_reload_after_cancelled_stages_still_finishes_the_run.

    def capacity(self) -> int:
        if not self.parallel or self.active is None:
            return 1
        return self.stages_per_worker * self.loaded[self.active][1]

    def graph(self) -> PipelineGraph | None:
        if self.active is None:
            return None
        return PipelineGraph(self.loaded[self.active][0].stages)

    def check(self, event: Input, actions: Sequence[Action]) -> None:
        """Check ``actions``, the core's answer to ``event``, and track their effect."""
        dispatched: list[RunStage] = []
        for index, action in enumerate(actions):
            self._check_one(event, action, index, actions, dispatched)
        if isinstance(event, FilesChanged) and not any(c.is_code for c in event.changes):
            restarts = [
                a
                for a in actions
                if isinstance(a, StartGeneration | ReloadInProcess | Promote | Retire)
            ]
            assert not restarts, f"a data-only change touched generations: {restarts}"
        if dispatched:
            self._check_dispatch(dispatched)

    def _check_one(
        self,
        event: Input,
        action: Action,
        index: int,
        actions: Sequence[Action],
        dispatched: list[RunStage],
    ) -> None:
        match action:
            case StartGeneration() | ReloadInProcess():
                if self.parallel:
                    assert isinstance(action, StartGeneration), (
                        f"invariant 9: parallel mode emitted {action}"
                    )
                else:
                    assert isinstance(action, ReloadInProcess), (
                        f"invariant 9: non-parallel mode emitted {action}"
                    )
                assert action.generation > self.last_started, (
                    f"invariant 1: generation {action.generation} started after "
                    f"generation {self.last_started}"
                )
                assert not self.loads, (
                    f"invariant 3: {action} while generation(s) {sorted(self.loads)} "
                    "are still loading"
                )
                self.last_started = action.generation
                self.loads[action.generation] = action
            case Promote(generation=generation):
                assert generation in self.loaded, (
                    f"invariant 1: Promote({generation}) but generation {generation} never loaded"
                )
                assert generation > self.max_promoted, (
                    f"invariant 1: Promote({generation}) after Promote({self.max_promoted})"
                )
                assert generation not in self.retired, f"Promote of retired {generation}"
                self.max_promoted = self.active = generation
            case Retire(generation=generation):
                assert generation != self.active, f"Retire({generation}) of the active generation"
                self.retired.add(generation)
            case RunStage():
                assert action.generation == self.active, (
                    f"{action} dispatched while generation {self.active} is active"
                )
                snapshot = self.loaded[action.generation][0]
                assert action.stage in snapshot, f"{action.stage} is not in the active pipeline"
                assert action.attempt not in self.in_flight, f"attempt {action.attempt} reused"
                assert self.open_run == action.run_id, (
                    f"{action} outside the open run {self.open_run}"
                )
                self.in_flight[action.attempt] = action
                dispatched.append(action)
            case CancelAttempts(attempts=attempts):
                for attempt in attempts:
                    assert attempt in self.in_flight, (
                        f"CancelAttempts names attempt {attempt}, which is not in flight"
                    )
                    self.in_transit[attempt] = self.in_flight.pop(attempt)
            case Exit(code=code):
                assert not self.watch, f"invariant 7: a watch session emitted Exit({code})"
                assert not self.exits, f"invariant 7: second Exit({code}) after {self.exits}"
                assert index == len(actions) - 1, (
                    f"invariant 7: actions after Exit: {list(actions[index + 1 :])}"
                )
                self.exits.append(code)
            case Publish(event=published):
                self._check_event(event, published.name, dict(published.fields))

    def _check_event(self, event: Input, name: str, fields: dict[str, object]) -> None:
        match name:
            case "run_started":
                run_id = fields["run_id"]
                assert isinstance(run_id, int)
                assert self.open_run is None, (
                    f"run_started {run_id} while run {self.open_run} is still open"
                )
                assert run_id not in self.runs_started, f"run id {run_id} reused"
                self.open_run = run_id
                self.runs_started.append(run_id)
            case "run_finished":
                run_id = fields["run_id"]
                assert isinstance(run_id, int)
                assert run_id == self.open_run, (
                    f"invariant 4: run_finished {run_id} but the open run is {self.open_run}"
                )
                assert run_id not in self.runs_finished, f"invariant 4: run {run_id} finished twice"
                self.runs_finished.append(run_id)
                self.open_run = None
            case "stage_finished":
                assert fields["run_id"] == self.open_run, (
                    f"stage_finished {fields} outside the open run {self.open_run}"
                )
                if fields["status"] == "ok":
                    assert fields["generation"] == self.active, (
                        f"invariant 2: {fields['stage']!r} recorded ok from generation "
                        f"{fields['generation']} while generation {self.active} is active "
                        f"(input {event})"
                    )
            case "reload_started":
                generation = fields["generation"]
                assert isinstance(generation, int)
                self.reload_ends.setdefault(generation, [])
            case "generation_ready" | "reload_failed" | "generation_discarded":
                generation = fields["generation"]
                assert isinstance(generation, int)
                assert generation in self.reload_ends, f"{name} for unstarted {generation}"
                ends = self.reload_ends[generation]
                assert not ends, f"invariant 8: generation {generation} got {name} after {ends}"
                ends.append(name)
            case _:
                pass

    def _check_dispatch(self, dispatched: list[RunStage]) -> None:
        in_flight = len(self.in_flight)
        assert in_flight <= self.capacity(), (
            f"invariant 5: {in_flight} attempts in flight, capacity {self.capacity()} "
            f"(dispatched {[(r.stage, r.generation) for r in dispatched]})"
        )
        graph = self.graph()
        assert graph is not None
        for new in dispatched:
            if new.stage not in graph:
                continue
            # Direct edges only: with the stage in between not part of the run, nothing
            # the new stage reads is being written.  Both directions: a stage must not
            # start while what it reads is being written, nor rewrite what a running
            # stage is reading.
            for other in self.in_flight.values():
                if other.attempt == new.attempt:
                    continue
                assert other.stage not in graph.upstream(new.stage), (
                    f"invariant 6: {new.stage!r} dispatched while {other.stage!r} "
                    f"(attempt {other.attempt}, generation {other.generation}), which it "
                    "reads from, is in flight"
                )
                assert other.stage not in graph.downstream(new.stage), (
                    f"invariant 6: {new.stage!r} dispatched while {other.stage!r} "
                    f"(attempt {other.attempt}), which reads its output, is in flight"
                )
                assert other.stage != new.stage, (
                    f"invariant 6: {new.stage!r} dispatched twice (attempts {other.attempt} "
                    f"and {new.attempt})"
                )


def outcome(
    request: RunStage, status: str, *, sig: FileSignature | None, duration_ms: float = 1.0
) -> StageOutcome:
    if status == NOT_STARTED:
        return not_started(request.stage, request.generation, "an earlier stage")
    return StageOutcome(
        stage=request.stage,
        generation=request.generation,
        pid=request.generation * 100 + 1,
        status=status,
        duration_ms=duration_ms,
        error=None if status != "failed" else "ValueError: boom",
        out_signatures={o: sig for o in request.spec.outs} if sig and status == "ok" else {},
    )


def lost(request: RunStage) -> StageOutcome:
    return StageOutcome(
        stage=request.stage,
        generation=request.generation,
        pid=0,
        status="failed",
        duration_ms=0.0,
        error="TerminatedWorkerError: a worker died",
    )


# ------------------------------------------------------------- the state machine


class CoreSession(RuleBasedStateMachine):
    """One supervisor session, driven through the core by a simulated shell."""

    core: SupervisorCore
    shell: Shell

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def feed(self, event: Input) -> list[Action]:
        try:
            actions = self.core.handle(event)
            self.shell.check(event, actions)
            # The shell asks for these around every API request: they must always work.
            self.core.status()
            self.core.stage_table()
        except BaseException:
            self.failed = True
            raise
        return actions

    @initialize(
        watch=st.booleans(),
        parallel=st.booleans(),
        cpu_count=st.integers(1, 4),
        max_workers=st.none() | st.integers(1, 3),
        stages_per_worker=st.integers(1, 3),
        quick_stages_per_worker=st.none() | st.integers(1, 4),
        on_error=st.sampled_from(["fail", "keep-going"]),
        stages=st.none() | st.lists(st.sampled_from(STAGE_NAMES), min_size=1, max_size=2),
        force=forces,
    )
    def start(
        self,
        *,
        watch: bool,
        parallel: bool,
        cpu_count: int,
        max_workers: int | None,
        stages_per_worker: int,
        quick_stages_per_worker: int | None,
        on_error: OnError,
        stages: list[str] | None,
        force: bool | frozenset[str],
    ) -> None:
        self.core = SupervisorCore(
            cpu_count=cpu_count,
            watch=watch,
            stages_per_worker=stages_per_worker,
            quick_stages_per_worker=quick_stages_per_worker,
        )
        # The quick mode's depth bounds every other.
        self.shell = Shell(parallel, watch, self.core.quick_stages_per_worker)
        options = RunOptions(parallel=parallel, max_workers=max_workers, on_error=on_error)
        first = RunRequested(
            tuple(stages) if stages else None, options, trigger="start", force=force
        )
        self.feed(first)

    # ------------------------------------------------------------------ loads

    def answer_load(self, generation: int, snapshot: PipelineSnapshot) -> list[Action]:
        request = self.shell.loads.pop(generation)
        workers = request.workers if isinstance(request, StartGeneration) else 0
        pids = tuple(generation * 100 + i for i in range(workers))
        self.shell.loaded[generation] = (snapshot, workers)
        return self.feed(GenerationLoaded(generation, snapshot, pids))

    @precondition(lambda self: bool(self.shell.loads))
    @rule(data=st.data())
    def generation_loaded(self, data: st.DataObject) -> None:
        generation = data.draw(st.sampled_from(sorted(self.shell.loads)), label="generation")
        snapshot = data.draw(st.sampled_from(ALL_PIPELINES), label="snapshot")
        self.answer_load(generation, snapshot)

    @precondition(lambda self: bool(self.shell.loads))
    @rule(data=st.data())
    def generation_failed(self, data: st.DataObject) -> None:
        generation = data.draw(st.sampled_from(sorted(self.shell.loads)), label="generation")
        del self.shell.loads[generation]
        self.feed(GenerationFailed(generation, "SyntaxError: invalid syntax", "tb"))

    # --------------------------------------------------------------- attempts

    def answer_attempt(
        self, attempt: int, status: str, sig: FileSignature | None, duration_ms: float = 1.0
    ) -> None:
        request = self.shell.in_flight.pop(attempt)
        if request.generation in self.shell.broken_pools:
            # A broken pool fails everything it still held.
            self.feed(StageFinished(attempt, lost(request), worker_lost=True))
            return
        if status == "skipped" and request.force:
            status = "ok"  # the shell never skips a forced stage
        result = outcome(request, status, sig=sig, duration_ms=duration_ms)
        self.feed(StageFinished(attempt, result))

    @precondition(lambda self: bool(self.shell.in_flight))
    @rule(
        data=st.data(),
        status=st.sampled_from(["ok", "ok", "failed", "skipped", NOT_STARTED]),
        sig=st.none() | signatures,
        # Quick, the quick mode's threshold itself, and slow.
        duration_ms=st.sampled_from([0.1, QUICK_STAGE_MS, 50.0]),
    )
    def stage_finished(
        self, data: st.DataObject, status: str, sig: FileSignature | None, duration_ms: float
    ) -> None:
        attempt = data.draw(st.sampled_from(sorted(self.shell.in_flight)), label="attempt")
        self.answer_attempt(attempt, status, sig, duration_ms)

    @precondition(
        lambda self: (
            self.shell.parallel  # only a loky pool reports a lost worker
            and any(
                r.generation == self.shell.active and r.generation not in self.shell.broken_pools
                for r in self.shell.in_flight.values()
            )
        )
    )
    @rule(data=st.data())
    def worker_lost(self, data: st.DataObject) -> None:
        candidates = sorted(
            a for a, r in self.shell.in_flight.items() if r.generation == self.shell.active
        )
        attempt = data.draw(st.sampled_from(candidates), label="attempt")
        request = self.shell.in_flight.pop(attempt)
        self.shell.broken_pools.add(request.generation)
        self.feed(StageFinished(attempt, lost(request), worker_lost=True))

    @precondition(
        lambda self: any(r.generation in self.shell.retired for r in self.shell.in_flight.values())
    )
    @rule(data=st.data(), status=st.sampled_from(["failed", "failed", "ok"]), lost=st.booleans())
    def retired_result(self, data: st.DataObject, status: str, lost: bool) -> None:
        """A late result from a retired generation: its futures fail (or one just made it)."""
        candidates = sorted(
            a for a, r in self.shell.in_flight.items() if r.generation in self.shell.retired
        )
        attempt = data.draw(st.sampled_from(candidates), label="attempt")
        request = self.shell.in_flight.pop(attempt)
        self.feed(StageFinished(attempt, outcome(request, status, sig=None), worker_lost=lost))

    @precondition(lambda self: bool(self.shell.in_transit))
    @rule(data=st.data(), status=st.sampled_from(["ok", "failed", "skipped"]))
    def cancelled_result_in_transit(self, data: st.DataObject, status: str) -> None:
        """A result that crossed the core's CancelAttempts: it must change nothing."""
        attempt = data.draw(st.sampled_from(sorted(self.shell.in_transit)), label="attempt")
        request = self.shell.in_transit.pop(attempt)
        actions = self.feed(StageFinished(attempt, outcome(request, status, sig=None)))
        assert actions == [], f"a result for cancelled attempt {attempt} did {actions}"

    # ------------------------------------------------------------ the world

    @precondition(lambda self: self.shell.watch)
    @rule(changes=st.lists(file_changes, min_size=1, max_size=3))
    def files_changed(self, changes: list[FileChange]) -> None:
        self.feed(FilesChanged(tuple(changes)))

    @rule(
        stages=st.none() | st.lists(st.sampled_from(STAGE_NAMES), min_size=1, max_size=3),
        force=forces,
        on_error=st.none() | st.sampled_from(["fail", "keep-going"]),
    )
    def run_requested(
        self, stages: list[str] | None, force: bool | frozenset[str], on_error: OnError | None
    ) -> None:
        self.feed(
            RunRequested(tuple(stages) if stages else None, None, on_error=on_error, force=force)
        )

    @rule()
    def cancel_requested(self) -> None:
        self.feed(CancelRequested())

    @rule()
    def restart_requested(self) -> None:
        self.feed(RestartRequested())

    @rule()
    def drain_now(self) -> None:
        self.drain()

    # ----------------------------------------------------------------- drain

    def drain(self) -> None:
        """Answer everything: loads succeed with the active pipeline, attempts succeed."""
        for _ in range(200):
            if self.shell.exits:
                return
            if self.shell.loads:
                generation = min(self.shell.loads)
                active = self.shell.active
                snapshot = CHAIN if active is None else self.shell.loaded[active][0]
                self.answer_load(generation, snapshot)
            elif self.shell.in_flight:
                self.answer_attempt(min(self.shell.in_flight), "ok", None)
            else:
                return
        raise AssertionError("the session did not come to rest after 200 answers")

    def teardown(self) -> None:
        if self.failed or not hasattr(self, "core"):
            return
        try:
            self.drain()
            self.check_at_rest()
        except BaseException:
            self.failed = True
            raise

    def check_at_rest(self) -> None:
        shell = self.shell
        if shell.exits:
            return  # the one-shot session is over: the shell stops everything
        unended = sorted(g for g, ends in shell.reload_ends.items() if not ends)
        assert not unended, (
            f"invariant 8: generations {unended} started loading and never ended "
            "ready, failed or discarded"
        )
        assert self.core.run is None, (
            f"invariant 4: every request answered, yet run {shell.open_run} is still open "
            f"(state {self.core.state!r}, status {self.core.status()})"
        )
        unfinished = [r for r in shell.runs_started if r not in shell.runs_finished]
        assert not unfinished, f"invariant 4: runs {unfinished} started and never finished"
        if not shell.watch:
            assert shell.exits, "invariant 7: a one-shot session came to rest without Exit"


CoreSession.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_core_session = CoreSession.TestCase


# ------------------------------------------------ regressions the machine found
#
# Each was found by the machine above; they now pass and keep the fixes in place.


def _up(*, watch: bool = True, stages_per_worker: int = 2, on_error: OnError = "fail"):
    """A one-worker session that loaded CHAIN; returns the core and what it dispatched."""
    core = SupervisorCore(cpu_count=1, watch=watch, stages_per_worker=stages_per_worker)
    options = RunOptions(parallel=True, on_error=on_error)
    start = core.handle(RunRequested(None, options, trigger="start"))
    generation = next(a for a in start if isinstance(a, StartGeneration)).generation
    loaded = core.handle(GenerationLoaded(generation, CHAIN, (100,)))
    return core, [a for a in loaded if isinstance(a, RunStage)]


def _started(actions: Sequence[Action]) -> StartGeneration:
    return next(a for a in actions if isinstance(a, StartGeneration))


def _names(actions: Sequence[Action]) -> list[str]:
    return [name for a in actions if (name := event_name(a)) is not None]


def test_a_stage_dropped_from_the_pipeline_mid_run_keeps_status_working():
    core, running = _up()
    assert [r.stage for r in running] == ["clean", "lint"]
    # A code change cancels clean and lint; the new pipeline no longer has lint.
    reload = _started(core.handle(FilesChanged((FileChange("pipeline.py", True),))))
    core.handle(GenerationLoaded(reload.generation, SHORT, (200,)))
    status = core.status()  # KeyError: "no stage named 'lint'"
    assert status["run"] is not None and "lint" not in status["run"]["pending"]


def test_a_stage_dropped_from_the_pipeline_mid_run_is_not_queued_again():
    core, (clean, lint) = _up()
    # lint's input changes while it runs: it is to run again once it finished.
    core.handle(FilesChanged((FileChange("style.toml", False, (1, 1, 1)),)))
    # The pool breaks under clean; lint's attempt is still out on the broken pool.
    crash = _started(core.handle(StageFinished(clean.attempt, lost(clean), worker_lost=True)))
    core.handle(GenerationLoaded(crash.generation, SHORT, (200,)))  # no lint any more
    late = core.handle(StageFinished(lint.attempt, lost(lint), worker_lost=True))  # KeyError
    assert not [a for a in late if isinstance(a, RunStage) and a.stage == "lint"]


def test_a_failed_reload_after_cancelled_stages_still_finishes_the_run():
    core, running = _up(watch=False)
    assert [r.stage for r in running] == ["clean", "lint"]
    restart = _started(core.handle(RestartRequested()))  # cancels clean and lint
    failed = core.handle(GenerationFailed(restart.generation, "SyntaxError: invalid syntax"))
    # train and report waited for clean, which was cancelled: they cannot run any more.
    assert "run_finished" in _names(failed), core.status()
    assert Exit(1) in failed
    assert core.run is None


def test_a_failed_replacement_of_a_crashed_pool_still_finishes_the_run():
    core, (clean,) = _up(watch=False, stages_per_worker=1, on_error="keep-going")
    crashed = core.handle(StageFinished(clean.attempt, lost(clean), worker_lost=True))
    replacement = _started(crashed)
    assert replacement.trigger == "worker crash"
    failed = core.handle(GenerationFailed(replacement.generation, "OSError: cannot spawn"))
    # No generation can run lint any more: the one-shot session must end, not hang.
    assert "run_finished" in _names(failed), core.status()
    assert Exit(1) in failed


def test_an_upstream_stage_waits_for_its_running_downstream():
    core, running = _up()
    while running:  # the first run, to the end
        request = running.pop(0)
        done = core.handle(StageFinished(request.attempt, outcome(request, "ok", sig=None)))
        running += [a for a in done if isinstance(a, RunStage)]
    assert core.run is None
    deleted = core.handle(FilesChanged((FileChange("model.json", False, None),)))
    train = [a for a in deleted if isinstance(a, RunStage)]
    assert [a.stage for a in train] == ["train"]
    # While train reads data/clean.csv, a request for everything must not start clean,
    # which rewrites data/clean.csv under it (lint, unrelated, may start).
    everything = core.handle(RunRequested(None))
    assert "clean" not in [a.stage for a in everything if isinstance(a, RunStage)]
    # Once train is done, clean runs.
    after = core.handle(StageFinished(train[0].attempt, outcome(train[0], "ok", sig=None)))
    assert "clean" in [a.stage for a in after if isinstance(a, RunStage)]
