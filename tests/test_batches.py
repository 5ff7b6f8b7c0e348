"""Trips of several quick stages to one worker, with real loky workers and real files.

The loky backend is driven directly for what a trip does (order, a failure that stops
it, a worker that dies in it); a real supervisor runs a wide pipeline of quick stages,
where trips form on their own, to check that every stage is still reported once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from conftest import TIMEOUT_S, serving_backend, supervising
from pivot_supervise.pipeline._model import NOT_STARTED
from pivot_supervise.supervisor._core import GenerationLoaded
from pivot_supervise.supervisor.backends import LokyBackend, StageResult
from pivot_supervise.workers._messages import RunRequest

ProjectFactory = Callable[[Mapping[str, str]], Path]

PIPELINE = {
    "pipeline.py": """
        import os
        from pathlib import Path

        from pivot_supervise import stage

        def note(name):
            with open("trail.log", "a") as trail:
                trail.write(f"{name} {os.getpid()}\\n")

        @stage()
        def first():
            note("first")

        @stage()
        def second():
            note("second")

        @stage()
        def bad():
            note("bad")
            raise ValueError("boom")

        @stage()
        def crash():
            note("crash")
            os._exit(7)

        @stage()
        def last():
            note("last")
    """,
}


def trail(project: Path) -> list[tuple[str, int]]:
    path = project / "trail.log"
    if not path.exists():
        return []
    return [
        (name, int(pid))
        for name, pid in (line.split() for line in path.read_text().split("\n") if line)
    ]


@asynccontextmanager
async def loaded_backend(project: Path) -> AsyncIterator[tuple[LokyBackend, GenerationLoaded]]:
    """Generation 1 of a one-worker loky backend; every process of it gone after."""
    async with serving_backend(project, standby=False) as backend:
        with trio.fail_after(TIMEOUT_S):
            loaded = await backend.load(1, 1)
        assert isinstance(loaded, GenerationLoaded), loaded
        yield backend, loaded


async def trip(
    project: Path, *stages: str, stop: bool = True
) -> tuple[list[StageResult], GenerationLoaded]:
    """One trip of ``stages`` to generation 1's worker: their results, and the generation."""
    async with loaded_backend(project) as (backend, loaded):
        with trio.fail_after(TIMEOUT_S):
            results = await backend.run_batch(requests(*stages), stop_on_failure=stop)
    return results, loaded


def requests(*stages: str, run_id: int = 1) -> list[RunRequest]:
    return [RunRequest(1, stage, run_id=run_id) for stage in stages]


async def test_a_trip_runs_its_stages_in_order_in_one_worker(make_project: ProjectFactory) -> None:
    project = make_project(PIPELINE)
    results, loaded = await trip(project, "first", "second", "last")
    assert [r.outcome.status for r in results] == ["ok", "ok", "ok"]
    assert [r.outcome.stage for r in results] == ["first", "second", "last"]
    assert [name for name, _ in trail(project)] == ["first", "second", "last"]
    assert (
        {r.outcome.pid for r in results}
        == {pid for _, pid in trail(project)}
        == set(loaded.workers)
    )


async def test_a_failure_stops_the_rest_of_its_trip_when_the_run_stops_at_failures(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PIPELINE)
    results, _ = await trip(project, "first", "bad", "last")
    assert [r.outcome.status for r in results] == ["ok", "failed", NOT_STARTED]
    assert results[2].outcome.reason == "run stopped after 'bad' failed"
    assert [name for name, _ in trail(project)] == ["first", "bad"], "'last' must not have run"


async def test_after_a_failure_the_runs_stages_queued_elsewhere_do_not_start_either(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PIPELINE)
    async with loaded_backend(project) as (backend, _):
        with trio.fail_after(TIMEOUT_S):
            (failed,) = await backend.run_batch(requests("bad"), stop_on_failure=True)
            (held,) = await backend.run_batch(requests("last"), stop_on_failure=True)
            (other_run,) = await backend.run_batch(requests("last", run_id=2), stop_on_failure=True)
    assert failed.outcome.status == "failed"
    assert held.outcome.status == NOT_STARTED
    assert held.outcome.reason == "run stopped after 'bad' failed"
    assert other_run.outcome.status == "ok", "another run is not stopped"
    assert [name for name, _ in trail(project)] == ["bad", "last"]


async def test_a_single_stage_run_on_its_own_stops_nothing_after_it(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PIPELINE)
    async with loaded_backend(project) as (backend, _):
        with trio.fail_after(TIMEOUT_S):
            failed = await backend.run(RunRequest(1, "bad"))
            after = await backend.run(RunRequest(1, "last"))
    assert failed.outcome.status == "failed"
    assert after.outcome.status == "ok", after.outcome.reason
    assert [name for name, _ in trail(project)] == ["bad", "last"]


async def test_with_keep_going_a_trip_runs_on_after_a_failure(make_project: ProjectFactory) -> None:
    project = make_project(PIPELINE)
    results, _ = await trip(project, "bad", "last", stop=False)
    assert [r.outcome.status for r in results] == ["failed", "ok"]
    assert [name for name, _ in trail(project)] == ["bad", "last"]


async def test_a_worker_dying_in_a_trip_fails_each_of_its_stages_naming_the_culprit(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PIPELINE)
    results, loaded = await trip(project, "first", "crash", "last")
    (pid,) = loaded.workers
    assert all(r.worker_lost for r in results)
    assert all(r.outcome.status == "failed" for r in results)
    crashed = results[1].outcome
    assert crashed.pid == pid
    assert crashed.error is not None and f"worker {pid} died while running it" in crashed.error
    assert "exit codes" in crashed.error
    for other in (results[0].outcome, results[2].outcome):
        assert other.error is not None
        assert f"worker {pid} died running 'crash', sent with it" in other.error
    assert [name for name, _ in trail(project)] == ["first", "crash"]


WIDE_STAGES = 120


def wide_pipeline(failing: int | None = None) -> dict[str, str]:
    """Quick stages that note their name in trail.log; one may fail."""
    lines = [
        "from pivot_supervise import stage\n",
        "def note(name):\n    with open('trail.log', 'a') as trail:\n"
        "        trail.write(f'{name} 0\\n')\n",
    ]
    for index in range(WIDE_STAGES):
        body = f"note('s{index:03}')"
        if index == failing:
            body += "\n    raise ValueError('boom')"
        lines.append(f"@stage()\ndef s{index:03}():\n    {body}\n")
    return {"pipeline.py": "\n".join(lines)}


async def test_a_wide_pipeline_of_quick_stages_reports_every_stage_once(
    make_project: ProjectFactory,
) -> None:
    project = make_project(wide_pipeline())
    async with supervising(project, watch=False) as session:
        assert await session.wait_exit() == 0
    finished = [e for e in session.events.seen if e.name == "stage_finished"]
    assert sorted(e.get("stage") for e in finished) == [f"s{i:03}" for i in range(WIDE_STAGES)]
    assert {e.get("status") for e in finished} == {"ok"}
    run_finished = next(e for e in session.events.seen if e.name == "run_finished")
    assert run_finished.get("ok") == WIDE_STAGES


async def test_after_a_failure_every_other_quick_stage_is_reported_once_with_the_reason(
    make_project: ProjectFactory,
) -> None:
    project = make_project(wide_pipeline(failing=60))
    async with supervising(project, watch=False, on_error="fail") as session:
        assert await session.wait_exit() == 1
    seen = session.events.seen
    finished = [e for e in seen if e.name == "stage_finished"]
    assert sorted(e.get("stage") for e in finished) == [f"s{i:03}" for i in range(WIDE_STAGES)]
    by_status: dict[str, list[str]] = {}
    for event in finished:
        by_status.setdefault(event.get("status"), []).append(event.get("stage"))
    assert by_status.get("failed") == ["s060"]
    assert set(by_status) <= {"ok", "failed", "skipped"}
    skipped = [e for e in finished if e.get("status") == "skipped"]
    assert skipped, "a run that stops at a failure skips what it did not start"
    assert {e.get("reason") for e in skipped} == {"run stopped after 's060' failed"}
    # Held back in a worker (after stage_started) or never sent: the same reason either
    # way, and a stage reported skipped never ran.
    ran = {name for name, _ in trail(project)}
    assert not ran & set(by_status["skipped"])
    assert ran == set(by_status["ok"]) | {"s060"}
    # After s060 started (the trail is in the order stages started), only stages
    # already in flight can start: at most 32 (16 per worker).  Not "at most 32 stages
    # numbered above 60": trips go out of numeric order, and some of those may have
    # run before s060 did.
    order = [name for name, _ in trail(project)]
    assert len(order) - order.index("s060") - 1 <= 32
