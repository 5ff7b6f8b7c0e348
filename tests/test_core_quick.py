"""Quick stages: more in flight, batched trips, and a batch that stops at a failure.

The decisions of the sans-IO core (how many stages may be in flight, which may share a
trip) and the pure trip planner, without processes.
"""

from __future__ import annotations

from pivot_supervise.pipeline._dag import build_snapshot
from pivot_supervise.pipeline._model import NOT_STARTED, StageSpec, not_started
from pivot_supervise.supervisor._batching import plan_batches
from pivot_supervise.supervisor._core import QUICK_STAGE_MS, RunOptions, RunRequested, RunStage
from test_core import Harness, events, run_actions

WIDE = build_snapshot([StageSpec(f"s{i:02}", "pipeline", outs=(f"o{i}",)) for i in range(40)])


def quick_harness(on_error: str = "fail") -> Harness:
    return Harness(
        RunOptions(parallel=True, max_workers=2, on_error=on_error),  # type: ignore[arg-type]
        cpu_count=2,
        stages_per_worker=1,
        quick_stages_per_worker=4,
    )


def started(h: Harness) -> list[RunStage]:
    return run_actions(h.load(h.started_gen(h.start()), WIDE))


def test_until_a_stage_was_seen_quick_one_stage_per_worker_is_in_flight_unbatched() -> None:
    h = quick_harness()
    first = started(h)
    assert len(first) == 2
    assert not any(run.batchable for run in first)
    assert h.core.capacity() == 2


def test_quick_stages_raise_the_stages_in_flight_and_may_share_trips() -> None:
    h = quick_harness()
    first = started(h)
    more = run_actions(h.finish(first[0], duration_ms=0.1))
    # One still running, the freed slot and the quick mode's extra slots: 4 x 2 - 1.
    assert len(more) == 7
    assert all(run.batchable for run in more)
    assert h.core.capacity() == 8


def test_a_slow_stage_ends_the_quick_mode_at_once() -> None:
    h = quick_harness()
    first = started(h)
    more = run_actions(h.finish(first[0], duration_ms=0.1))
    after_slow = run_actions(h.finish(more[0], duration_ms=QUICK_STAGE_MS * 50))
    assert h.core.capacity() == 2
    assert after_slow == [], "seven still in flight: more than the normal capacity"
    assert h.core.typical_stage_ms == QUICK_STAGE_MS * 50


def test_quick_stages_bring_the_quick_mode_back_after_a_slow_one() -> None:
    h = quick_harness()
    first = started(h)
    h.finish(first[0], duration_ms=QUICK_STAGE_MS * 8)
    assert h.core.capacity() == 2
    queue = [first[1], *run_actions(h.log)[2:]]
    finished = 0
    while h.core.capacity() == 2:
        queue += run_actions(h.finish(queue.pop(0), duration_ms=0.0))
        finished += 1
        assert finished < 10, "quick stages never brought the quick mode back"
    assert finished == 4, "each quick stage halves the estimate: 16 -> 8 -> 4 -> 2 -> 1"


def test_a_stage_whose_own_last_run_was_slow_never_shares_a_trip() -> None:
    h = quick_harness()
    queue = started(h)
    while queue:  # the first run: s05 is slow, every other stage quick
        run = queue.pop(0)
        duration = QUICK_STAGE_MS * 10 if run.stage == "s05" else 0.1
        queue += run_actions(h.finish(run, duration_ms=duration))
    again = run_actions(h.feed(RunRequested()))
    assert h.core.capacity() == 8, "the quick stages after s05 brought the quick mode back"
    assert [run.stage for run in again] == [f"s{i:02}" for i in range(8)]
    assert [run.stage for run in again if not run.batchable] == ["s05"]


def test_a_batch_stops_at_a_failure_only_when_the_run_does() -> None:
    assert all(run.stop_on_failure for run in started(quick_harness("fail")))
    assert not any(run.stop_on_failure for run in started(quick_harness("keep-going")))


def test_a_stage_its_worker_did_not_start_is_reported_skipped_with_the_reason() -> None:
    h = quick_harness()
    first = started(h)
    more = run_actions(h.finish(first[0], duration_ms=0.1))
    failed = h.finish(first[1], "failed", duration_ms=0.1)
    stopped = [e.event for e in events(failed, "stage_finished") if e.event.get("reason")]
    assert {e.get("status") for e in stopped} == {"skipped"}
    outcome = not_started(more[0].stage, more[0].generation, first[1].stage)
    assert outcome.status == NOT_STARTED
    actions = h.finish(more[0], NOT_STARTED, pid=0, duration_ms=0.0, reason=outcome.reason)
    (finished,) = [e.event for e in events(actions, "stage_finished")]
    assert finished.get("status") == "skipped"
    assert finished.get("reason") == f"run stopped after '{first[1].stage}' failed"
    assert h.core.status()["counts"]["skipped"] >= 1


# ------------------------------------------------------------------ trip planning


def run_stage(
    attempt: int,
    *,
    batchable: bool = True,
    generation: int = 1,
    run_id: int = 1,
    stop: bool = True,
) -> RunStage:
    name = f"s{attempt:02}"
    return RunStage(
        attempt,
        generation,
        name,
        StageSpec(name, "pipeline"),
        run_id=run_id,
        batchable=batchable,
        stop_on_failure=stop,
    )


def attempts(trips: list[list[RunStage]]) -> list[list[int]]:
    return [[run.attempt for run in trip] for trip in trips]


def test_stages_that_are_not_batchable_travel_alone() -> None:
    runs = [run_stage(i, batchable=False) for i in range(1, 4)]
    assert attempts(plan_batches(runs, lambda _: 2)) == [[1], [2], [3]]


def test_batchable_stages_are_spread_over_the_idle_workers_in_order() -> None:
    runs = [run_stage(i) for i in range(1, 7)]
    assert attempts(plan_batches(runs, lambda _: 2)) == [[1, 2, 3], [4, 5, 6]]
    assert attempts(plan_batches(runs[:1], lambda _: 2)) == [[1]]


def test_with_no_idle_worker_stages_fill_trips_up_to_the_maximum() -> None:
    runs = [run_stage(i) for i in range(1, 21)]
    trips = plan_batches(runs, lambda _: 0, max_batch=8)
    assert [len(trip) for trip in trips] == [7, 7, 6]
    assert [run for trip in trips for run in trip] == runs
    assert attempts(plan_batches(runs[:8], lambda _: 0, max_batch=8)) == [list(range(1, 9))]


def test_no_trip_carries_more_than_the_maximum() -> None:
    runs = [run_stage(i) for i in range(1, 41)]
    trips = plan_batches(runs, lambda _: 2, max_batch=8)
    assert [len(trip) for trip in trips] == [8] * 5


def test_only_stages_of_one_generation_run_and_policy_share_a_trip() -> None:
    runs = [
        run_stage(1),
        run_stage(2, generation=2),
        run_stage(3, run_id=2),
        run_stage(4, stop=False),
        run_stage(5),
    ]
    trips = attempts(plan_batches(runs, lambda _: 1))
    assert sorted(trips) == [[1, 5], [2], [3], [4]]
