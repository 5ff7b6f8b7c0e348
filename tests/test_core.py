"""The supervisor's decisions, tested on the sans-IO core alone: no processes, no mocks.

Each test feeds inputs to a :class:`SupervisorCore` and reads the actions it returns,
playing the part of the trio shell by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from pivot_supervise.pipeline._dag import build_snapshot
from pivot_supervise.pipeline._model import PipelineSnapshot, StageOutcome, StageSpec
from pivot_supervise.supervisor._core import (
    Action,
    CancelAttempts,
    CancelRequested,
    Exit,
    FileChange,
    FilesChanged,
    GenerationFailed,
    GenerationLoaded,
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

# raw.csv -> clean -> clean.csv -> train -> model.json -> report -> report.txt
#                                   lint (independent: reads style.toml)
CHAIN = build_snapshot(
    [
        StageSpec("clean", "pipeline", deps=("data/raw.csv",), outs=("data/clean.csv",)),
        StageSpec("train", "pipeline", deps=("data/clean.csv",), outs=("model.json",), params={}),
        StageSpec("report", "pipeline", deps=("model.json",), outs=("report.txt",)),
        StageSpec("lint", "pipeline", deps=("style.toml",), outs=("lint.txt",)),
    ]
)


def run_actions(actions: Sequence[Action]) -> list[RunStage]:
    return [a for a in actions if isinstance(a, RunStage)]


def events(actions: Sequence[Action], name: str | None = None) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and (name is None or a.event.name == name)]


def only(actions: Sequence[Action], kind: type[Action]) -> Action:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, f"expected one {kind.__name__}, got {actions}"
    return found[0]


def pids(generation: int, count: int) -> tuple[int, ...]:
    return tuple(generation * 100 + i for i in range(count))


class Harness:
    """Plays the trio shell: answers StartGeneration and RunStage by hand."""

    def __init__(
        self,
        options: RunOptions,
        *,
        cpu_count: int = 8,
        watch: bool = True,
        stages_per_worker: int = 1,
        quick_stages_per_worker: int | None = None,
    ) -> None:
        self.core = SupervisorCore(
            cpu_count=cpu_count,
            watch=watch,
            stages_per_worker=stages_per_worker,
            quick_stages_per_worker=quick_stages_per_worker,
        )
        self.options = options
        self.log: list[Action] = []

    def feed(self, event: object) -> list[Action]:
        actions = self.core.handle(event)  # type: ignore[arg-type]
        self.log += actions
        return actions

    def start(self, snapshot: PipelineSnapshot = CHAIN, stages: tuple[str, ...] | None = None):
        actions = self.feed(RunRequested(stages, self.options))
        return actions

    def load(self, start: StartGeneration | ReloadInProcess, snapshot: PipelineSnapshot = CHAIN):
        workers = (
            pids(start.generation, start.workers) if isinstance(start, StartGeneration) else ()
        )
        return self.feed(GenerationLoaded(start.generation, snapshot, workers))

    def finish(
        self,
        run: RunStage,
        status: str = "ok",
        *,
        pid: int = 1,
        duration_ms: float = 1.0,
        reason: str | None = None,
        **kw: object,
    ):
        outcome = StageOutcome(
            stage=run.stage,
            generation=run.generation,
            pid=pid,
            status=status,
            duration_ms=duration_ms,
            reason=reason,
            error=None if status == "ok" else "ValueError: boom",
            out_signatures=kw.pop("signatures", {}),  # type: ignore[arg-type]
        )
        return self.feed(StageFinished(run.attempt, outcome, **kw))  # type: ignore[arg-type]

    def drain(self, actions: list[Action]) -> list[Action]:
        """Finish every dispatched stage successfully, in order, until the run ends."""
        produced: list[Action] = []
        queue = run_actions(actions)
        while queue:
            more = self.finish(queue.pop(0))
            produced += more
            queue += run_actions(more)
        return produced

    def started_gen(self, actions: Sequence[Action]) -> StartGeneration:
        found = only(actions, StartGeneration)
        assert isinstance(found, StartGeneration)
        return found

    def up(self, snapshot: PipelineSnapshot = CHAIN) -> list[Action]:
        """Start, load generation 1 at its right size and run everything once."""
        start = self.started_gen(self.start())
        actions = self.load(start, snapshot)
        if any(isinstance(a, StartGeneration) for a in actions):  # resized
            actions = self.load(self.started_gen(actions), snapshot)
        return actions + self.drain(actions)


# ----------------------------------------------------- the seed plan's six behaviours


def test_first_run_request_options_are_stored():
    options = RunOptions(parallel=True, max_workers=3, on_error="keep-going")
    core = SupervisorCore(cpu_count=8, watch=True)
    core.handle(RunRequested(None, options))
    assert core.options == options


def test_reruns_use_the_stored_options():
    h = Harness(RunOptions(parallel=True, max_workers=2, on_error="keep-going"))
    h.up()
    # A later request without options, and a data change, run with the stored ones.
    later = h.feed(RunRequested(None, None))
    assert h.core.run is not None and h.core.run.on_error == "keep-going"
    h.drain(later)
    changed = h.feed(FilesChanged((FileChange("data/raw.csv", False, (1, 1, 1)),)))
    assert h.core.run is not None and h.core.run.on_error == "keep-going"
    assert h.core.options == RunOptions(parallel=True, max_workers=2, on_error="keep-going")
    # The pool stays at its size: at most two stages in flight at once.
    assert len(run_actions(changed)) <= 2


def test_code_reload_restarts_the_pool_sized_min_stages_max_workers_before_rerunning():
    h = Harness(RunOptions(parallel=True, max_workers=3), cpu_count=8)
    h.up()
    actions = h.feed(FilesChanged((FileChange("pipeline.py", True, (2, 2, 2)),)))
    start = h.started_gen(actions)
    assert start.workers == 3  # min(4 stages, max_workers 3, 8 cpus)
    assert not run_actions(actions), "nothing may run before the new generation is promoted"
    loaded = h.load(start)
    kinds = [type(a) for a in loaded]
    assert kinds.index(Promote) < kinds.index(Retire) < kinds.index(RunStage)
    assert {r.generation for r in run_actions(loaded)} == {start.generation}

    # With fewer stages than max_workers the pool is sized by the stage count.
    small = build_snapshot([StageSpec("only", "pipeline", outs=("x",))])
    h2 = Harness(RunOptions(parallel=True, max_workers=4), cpu_count=8)
    h2.up(small)
    restart = h2.started_gen(h2.feed(FilesChanged((FileChange("pipeline.py", True),))))
    assert restart.workers == 1


def test_data_only_change_does_not_restart():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    actions = h.feed(FilesChanged((FileChange("data/raw.csv", False, (5, 5, 5)),)))
    assert not [a for a in actions if isinstance(a, StartGeneration | Retire | Promote)]
    assert [r.stage for r in run_actions(actions)] == ["clean"]
    assert {r.generation for r in run_actions(actions)} == {1}


def test_non_parallel_mode_never_restarts():
    h = Harness(RunOptions(parallel=False))
    first = h.start()
    reload = only(first, ReloadInProcess)
    assert isinstance(reload, ReloadInProcess)
    h.drain(h.load(reload))
    actions = h.feed(FilesChanged((FileChange("stages.py", True),)))
    assert not [a for a in h.log if isinstance(a, StartGeneration)]
    second = only(actions, ReloadInProcess)
    assert isinstance(second, ReloadInProcess)
    rerun = h.load(second)
    # The re-import is promoted and re-runs, in-process: no pool was ever started.
    assert {r.generation for r in run_actions(rerun)} == {second.generation}
    assert not [a for a in h.log if isinstance(a, StartGeneration)]


def test_failed_reload_does_not_restart():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    start = h.started_gen(h.feed(FilesChanged((FileChange("pipeline.py", True),))))
    failed = h.feed(GenerationFailed(start.generation, "SyntaxError: invalid syntax", "tb"))
    assert not [a for a in failed if isinstance(a, Promote | StartGeneration)]
    assert [a.generation for a in failed if isinstance(a, Retire)] == [start.generation]
    assert h.core.active == 1
    event = events(failed, "reload_failed")[0].event
    assert event.get("error") == "SyntaxError: invalid syntax"
    assert event.get("traceback") == "tb"
    assert h.core.state == "broken"


# ------------------------------------------------------------------- more decisions


def test_first_run_executes_stages_in_dependency_order():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    actions = h.up()
    assert [r.stage for r in run_actions(actions)] == [
        "clean",
        "train",
        "report",
        "lint",
    ]
    finished = events(actions, "run_finished")[0].event
    assert (finished.get("ok"), finished.get("failed")) == (4, 0)


def test_a_stage_starts_only_after_its_upstream_succeeded():
    h = Harness(RunOptions(parallel=True, max_workers=4))
    start = h.started_gen(h.start())
    actions = h.load(start)
    # clean and lint have no upstream: both start; train waits for clean.
    assert sorted(r.stage for r in run_actions(actions)) == ["clean", "lint"]


def test_result_from_a_retired_generation_is_reported_cancelled_never_ok():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    start = h.started_gen(h.start())
    first = run_actions(h.load(start))
    clean = next(r for r in first if r.stage == "clean")
    code = h.feed(FilesChanged((FileChange("pipeline.py", True),)))
    cancelled = events(code, "stage_finished")
    assert {e.event.get("status") for e in cancelled} == {"cancelled"}
    assert any(isinstance(a, CancelAttempts) for a in code)
    # The old generation's late result is ignored: no "ok" for it, ever.
    late = h.finish(clean)
    assert not events(late, "stage_finished")
    assert h.core.counts["ok"] == 0


def test_code_change_during_a_run_reruns_everything_on_the_new_generation():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    start = h.started_gen(h.start())
    h.load(start)
    code = h.feed(FilesChanged((FileChange("helpers.py", True),)))
    second = h.started_gen(code)
    loaded = h.load(second)
    assert {r.generation for r in run_actions(loaded)} == {second.generation}
    rest = h.drain(loaded)
    assert events(rest, "run_finished")


def test_burst_of_code_changes_during_a_load_coalesces_into_one_more_reload():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    first = h.started_gen(h.feed(FilesChanged((FileChange("a.py", True),))))
    for name in ("b.py", "c.py"):
        during = h.feed(FilesChanged((FileChange(name, True),)))
        assert not [a for a in during if isinstance(a, StartGeneration | Retire | Promote)]
    again = h.load(first)
    assert [a.generation for a in again if isinstance(a, Retire)] == [first.generation]
    second = h.started_gen(again)
    assert second.generation == first.generation + 1
    assert not [a for a in again if isinstance(a, Promote)]


def test_generation_numbers_only_grow():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    seen = [1]
    for name in ("a.py", "b.py", "c.py"):
        start = h.started_gen(h.feed(FilesChanged((FileChange(name, True),))))
        seen.append(start.generation)
        h.feed(GenerationFailed(start.generation, "boom"))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_while_code_is_broken_data_changes_are_served_by_the_last_good_generation():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    start = h.started_gen(h.feed(FilesChanged((FileChange("pipeline.py", True),))))
    h.feed(GenerationFailed(start.generation, "ImportError: nope"))
    data = h.feed(FilesChanged((FileChange("data/raw.csv", False, (9, 9, 9)),)))
    assert [(r.stage, r.generation) for r in run_actions(data)] == [("clean", 1)]


def test_data_change_during_a_run_reruns_the_running_stage_after_it_finishes():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    assert clean.stage == "clean"
    h.feed(FilesChanged((FileChange("data/raw.csv", False, (3, 3, 3)),)))
    after = h.finish(clean)
    assert [r.stage for r in run_actions(after)] == ["clean"]


def test_pipeline_own_output_writes_do_not_trigger_runs():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    # While clean runs, its output changing is its own doing.
    assert not run_actions(h.feed(FilesChanged((FileChange("data/clean.csv", False, (7, 7, 7)),))))
    train = run_actions(h.finish(clean, signatures={"data/clean.csv": (7, 7, 7)}))[0]
    h.drain([train])
    # After it finished, an event carrying the recorded signature is still its own write.
    assert not h.feed(FilesChanged((FileChange("data/clean.csv", False, (7, 7, 7)),)))


def test_external_edit_of_an_output_reruns_its_consumers_not_its_producer():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    h.drain(h.finish(clean, signatures={"data/clean.csv": (7, 7, 7)}))
    edited = h.feed(FilesChanged((FileChange("data/clean.csv", False, (8, 8, 8)),)))
    assert [r.stage for r in run_actions(edited)] == ["train"]
    changed = events(edited, "files_changed")[0].event
    assert changed.get("stages") == ["train", "report"]


def test_deleted_output_reruns_its_producer():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    h.up()
    gone = h.feed(FilesChanged((FileChange("model.json", False, None),)))
    assert [r.stage for r in run_actions(gone)] == ["train"]


def test_undeclared_files_are_ignored_silently():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    assert h.feed(FilesChanged((FileChange("notes.txt", False, (1, 2, 3)),))) == []


def test_on_error_fail_stops_scheduling_after_the_first_failure():
    h = Harness(RunOptions(parallel=True, max_workers=1, on_error="fail"), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    after = h.finish(clean, "failed")
    assert not run_actions(after)
    statuses = {
        e.event.get("stage"): e.event.get("status") for e in events(after, "stage_finished")
    }
    assert statuses == {
        "clean": "failed",
        "train": "skipped",
        "report": "skipped",
        "lint": "skipped",
    }
    assert events(after, "run_finished")[0].event.get("failed") == 1


def test_keep_going_skips_only_the_failed_stages_downstream():
    h = Harness(RunOptions(parallel=True, max_workers=1, on_error="keep-going"), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    after = h.finish(clean, "failed")
    assert [r.stage for r in run_actions(after)] == ["lint"]
    skipped = [
        e.event.get("stage")
        for e in events(after, "stage_finished")
        if e.event.get("status") == "skipped"
    ]
    assert skipped == ["train", "report"]


def test_one_shot_mode_exits_with_the_runs_verdict():
    h = Harness(RunOptions(parallel=True, max_workers=2), watch=False)
    actions = h.up()
    exit_action = only(actions, Exit)
    assert isinstance(exit_action, Exit) and exit_action.code == 0

    failing = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1, watch=False)
    start = failing.started_gen(failing.start())
    after = failing.finish(run_actions(failing.load(start))[0], "failed")
    code = only(after, Exit)
    assert isinstance(code, Exit) and code.code == 1


def test_one_shot_mode_exits_1_when_the_pipeline_does_not_load():
    h = Harness(RunOptions(parallel=True, max_workers=2), watch=False)
    start = h.started_gen(h.start())
    actions = h.feed(GenerationFailed(start.generation, "SyntaxError"))
    assert isinstance(only(actions, Exit), Exit) and only(actions, Exit).code == 1  # type: ignore[union-attr]


def test_unknown_target_stage_is_an_error_naming_it():
    h = Harness(RunOptions(parallel=True, max_workers=2), watch=False)
    start = h.started_gen(h.feed(RunRequested(("nope",), RunOptions(parallel=True, max_workers=2))))
    actions = h.load(start)
    message = events(actions, "error")[0].event.get("message")
    assert "'nope'" in message and "clean" in message
    assert isinstance(only(actions, Exit), Exit) and only(actions, Exit).code == 2  # type: ignore[union-attr]


def test_targets_run_with_the_stages_they_need_only():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    start = h.started_gen(
        h.feed(RunRequested(("train",), RunOptions(parallel=True, max_workers=1)))
    )
    actions = h.load(start)
    done = h.drain(actions)
    started = [r.stage for r in run_actions(actions + done)]
    assert started == ["clean", "train"]


def test_worker_crash_fails_the_stage_and_builds_a_fresh_generation():
    h = Harness(RunOptions(parallel=True, max_workers=1, on_error="keep-going"), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    crashed = h.finish(clean, "failed", worker_lost=True)
    fresh = h.started_gen(crashed)
    assert fresh.trigger == "worker crash"
    assert events(crashed, "stage_finished")[0].event.get("status") == "failed"
    # Nothing runs on the broken pool; the independent stage runs on the fresh one.
    assert not run_actions(crashed)
    loaded = h.load(fresh)
    assert [(r.stage, r.generation) for r in run_actions(loaded)] == [("lint", fresh.generation)]


def test_cancel_stops_the_run_and_replaces_a_generation_with_running_stages():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    start = h.started_gen(h.start())
    h.load(start)
    actions = h.feed(CancelRequested())
    statuses = {e.event.get("status") for e in events(actions, "stage_finished")}
    assert statuses == {"cancelled"}
    assert h.started_gen(actions).trigger == "cancel"
    assert events(actions, "run_finished")
    assert h.core.run is None


def test_restart_request_goes_through_validate_then_promote():
    h = Harness(RunOptions(parallel=True, max_workers=2))
    h.up()
    start = h.started_gen(h.feed(RestartRequested()))
    assert h.core.active == 1 and h.core.state == "reloading"
    loaded = h.load(start)
    assert any(isinstance(a, Promote) and a.generation == start.generation for a in loaded)


def test_a_generation_of_the_wrong_size_is_rebuilt_before_promotion():
    small = build_snapshot([StageSpec("only", "pipeline", outs=("x",))])
    h = Harness(RunOptions(parallel=True, max_workers=4), cpu_count=8)
    first = h.started_gen(h.start())
    assert first.workers == 4  # the stage count is unknown before the first load
    actions = h.load(first, small)
    assert not [a for a in actions if isinstance(a, Promote)]
    rebuilt = h.started_gen(actions)
    assert rebuilt.workers == 1
    assert any(isinstance(a, Promote) for a in h.load(rebuilt, small))


def test_two_stages_per_worker_are_in_flight_by_default_so_workers_never_idle():
    wide = build_snapshot([StageSpec(f"s{i}", "pipeline", outs=(f"o{i}",)) for i in range(10)])
    h = Harness(RunOptions(parallel=True, max_workers=2), cpu_count=2, stages_per_worker=2)
    start = h.started_gen(h.start())
    first = run_actions(h.load(start, wide))
    assert len(first) == 4
    # Each finish frees exactly one slot.
    assert len(run_actions(h.finish(first[0]))) == 1


def test_a_wide_pipeline_runs_every_stage_exactly_once():
    count = 300
    wide = build_snapshot(
        [StageSpec(f"s{i}", "pipeline", outs=(f"o{i}",)) for i in range(count)]
        + [StageSpec("join", "pipeline", deps=tuple(f"o{i}" for i in range(count)))]
    )
    h = Harness(RunOptions(parallel=True, max_workers=2), cpu_count=2, stages_per_worker=2)
    start = h.started_gen(h.start())
    actions = h.load(start, wide)
    done = h.drain(actions)
    started = [r.stage for r in run_actions(actions + done)]
    assert sorted(started) == sorted([*(f"s{i}" for i in range(count)), "join"])
    assert started[-1] == "join"


def test_an_up_to_date_stage_is_reported_skipped_and_its_downstream_still_proceeds():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    after = h.finish(clean, "skipped")
    finished = events(after, "stage_finished")[0].event
    assert (finished.get("status"), finished.get("stage")) == ("skipped", "clean")
    assert [r.stage for r in run_actions(after)] == ["train"]


def test_force_on_the_first_request_reaches_every_stage_of_the_first_run_only():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    actions = h.feed(RunRequested(None, RunOptions(parallel=True, max_workers=1), force=True))
    loaded = h.load(h.started_gen(actions))
    first = run_actions(loaded) + run_actions(h.drain(loaded))
    assert first and all(r.force for r in first)
    later = h.feed(FilesChanged((FileChange("data/raw.csv", False, (4, 4, 4)),)))
    assert [r.force for r in run_actions(later)] == [False]


def test_force_can_name_single_stages():
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    h.up()
    actions = h.feed(RunRequested(("train",), force=frozenset({"train"})))
    queued = run_actions(actions) + run_actions(h.drain(actions))
    assert [(r.stage, r.force) for r in queued] == [("clean", False), ("train", True)]


def test_every_generation_started_ends_ready_failed_or_discarded():
    small = build_snapshot([StageSpec("only", "pipeline", outs=("x",))])
    h = Harness(RunOptions(parallel=True, max_workers=4), cpu_count=8)
    first = h.started_gen(h.start())
    resized = h.load(first, small)
    discarded = events(resized, "generation_discarded")[0].event
    assert discarded.get("generation") == first.generation
    assert "resized" in discarded.get("reason")
    h.load(h.started_gen(resized), small)
    burst = h.started_gen(h.feed(FilesChanged((FileChange("a.py", True),))))
    h.feed(FilesChanged((FileChange("b.py", True),)))
    superseded = h.feed(GenerationFailed(burst.generation, "SyntaxError"))
    assert events(superseded, "generation_discarded")[0].event.get("generation") == burst.generation
    assert not events(superseded, "reload_failed")


def test_forcing_an_unknown_stage_is_an_error_naming_it():
    h = Harness(RunOptions(parallel=True, max_workers=2), watch=False)
    request = RunRequested(
        None, RunOptions(parallel=True, max_workers=2), force=frozenset({"trian"})
    )
    actions = h.load(h.started_gen(h.feed(request)))
    assert "'trian'" in events(actions, "error")[0].event.get("message")
    assert isinstance(only(actions, Exit), Exit)


def test_with_no_working_generation_a_data_change_says_so_and_restarts_nothing():
    h = Harness(RunOptions(parallel=True, max_workers=1, on_error="keep-going"), cpu_count=1)
    start = h.started_gen(h.start())
    clean = run_actions(h.load(start))[0]
    fresh = h.started_gen(h.finish(clean, "failed", worker_lost=True))
    ended = h.feed(GenerationFailed(fresh.generation, "SyntaxError: invalid syntax"))
    assert events(ended, "run_finished"), "the run must end: nothing can run it"
    changed = h.feed(FilesChanged((FileChange("data/raw.csv", False, (6, 6, 6)),)))
    assert not [a for a in changed if isinstance(a, StartGeneration | RunStage)]
    assert "no working generation" in events(changed, "error")[0].event.get("message")


def test_a_run_emptied_by_a_new_pipeline_still_finishes():
    other = build_snapshot([StageSpec("fresh", "pipeline", outs=("f",))])
    h = Harness(RunOptions(parallel=True, max_workers=1), cpu_count=1)
    h.up()
    reload = h.started_gen(h.feed(RestartRequested()))
    h.feed(FilesChanged((FileChange("data/raw.csv", False, (6, 6, 6)),)))
    assert h.core.run is not None  # held while the restart loads
    loaded = h.load(reload, other)
    done = h.drain(loaded)
    assert events(loaded + done, "run_finished")
    assert h.core.run is None
