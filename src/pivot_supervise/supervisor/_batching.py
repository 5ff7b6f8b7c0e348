"""Which stages share a trip to a worker: a pure function of the stages to start.

A stage the core marked ``batchable`` (it and the stages before it were quick, see
:meth:`SupervisorCore.capacity`) may travel with others: one task instead of one per
stage spares loky's queues and a wake-up of the supervisor per stage, which is most of
what a millisecond stage costs.  The stages are spread over as many trips as there are
idle workers (so that none waits while another works through a long trip), and no trip
carries more than ``max_batch`` (so that a stage that turns out slow holds back few
results).  Everything else travels alone, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._core import RunStage

__all__ = ["MAX_BATCH", "plan_batches"]

#: The most stages one trip to a worker carries.
MAX_BATCH = 8


def plan_batches(
    runs: Sequence[RunStage], idle: Callable[[int], int], max_batch: int = MAX_BATCH
) -> list[list[RunStage]]:
    """Group ``runs`` into trips, keeping their order within each trip.

    ``idle(generation)`` is how many of that generation's workers may have nothing
    queued (its workers minus the trips in flight there).  Only batchable stages of
    the same generation, run and failure policy travel together.
    """
    trips: list[list[RunStage]] = []
    groups: dict[tuple[int, int, bool], list[RunStage]] = {}
    for run in runs:
        if run.batchable:
            groups.setdefault((run.generation, run.run_id, run.stop_on_failure), []).append(run)
        else:
            trips.append([run])
    for (generation, _, _), group in groups.items():
        trips += _split(group, idle(generation), max(1, max_batch))
    return trips


def _split(group: list[RunStage], idle: int, max_batch: int) -> list[list[RunStage]]:
    """``group`` in order, cut into the fewest even trips that feed every idle worker."""
    count = len(group)
    trips = min(count, max(idle, -(-count // max_batch)))
    size, extra = divmod(count, trips)
    result: list[list[RunStage]] = []
    start = 0
    for index in range(trips):
        end = start + size + (1 if index < extra else 0)
        result.append(group[start:end])
        start = end
    return result
