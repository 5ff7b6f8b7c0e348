"""One-shot runs (``watch=False``) on real worker processes: order, exit codes, failures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from conftest import Session, named, supervising
from pivot_supervise.supervisor._events import Event

ProjectFactory = Callable[[Mapping[str, str]], Path]

CHAIN = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["data/in.txt"], outs=["a.txt"])
        def first():
            Path("a.txt").write_text(Path("data/in.txt").read_text() + "+a")

        @stage(deps=["a.txt"], outs=["b.txt"])
        def second():
            Path("b.txt").write_text(Path("a.txt").read_text() + "+b")

        @stage(deps=["b.txt"], outs=["c.txt"])
        def third():
            Path("c.txt").write_text(Path("b.txt").read_text() + "+c")
    """,
    "data/in.txt": "in",
}

#: ``bad`` fails; ``after_bad`` needs it; ``independent`` does not.  Declared in that
#: order, with one worker, so the schedule is deterministic.
FAILING = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(outs=["bad.txt"])
        def bad():
            print("about to fail")
            raise ValueError("boom 42")

        @stage(deps=["bad.txt"], outs=["after_bad.txt"])
        def after_bad():
            Path("after_bad.txt").write_text("x")

        @stage(outs=["independent.txt"])
        def independent():
            Path("independent.txt").write_text("ran")
    """,
}


async def test_run_executes_every_stage_in_dependency_order_and_exits_0(
    make_project: ProjectFactory,
) -> None:
    project = make_project(CHAIN)
    async with supervising(project, watch=False) as session:
        assert await session.wait_exit() == 0
    events = session.events.seen
    started = [e.get("stage") for e in events if e.name == "stage_started"]
    finished = [(e.get("stage"), e.get("status")) for e in events if e.name == "stage_finished"]
    assert started == ["first", "second", "third"]
    assert finished == [("first", "ok"), ("second", "ok"), ("third", "ok")]
    assert (project / "c.txt").read_text() == "in+a+b+c"
    workers = session.events.worker_pids()
    assert workers
    assert {e.get("pid") for e in events if e.name == "stage_finished"} <= workers
    last_run = [e for e in events if e.name == "run_finished"]
    assert len(last_run) == 1
    assert last_run[0].get("ok") == 3


async def test_run_with_a_failing_stage_exits_1_and_reports_its_error_and_output(
    make_project: ProjectFactory,
) -> None:
    project = make_project(FAILING)
    async with supervising(project, watch=False, max_workers=1) as session:
        assert await session.wait_exit() == 1
    failed = _finished(session, "bad")
    assert failed.get("status") == "failed"
    assert "ValueError: boom 42" in failed.get("error")
    assert "boom 42" in failed.get("traceback")
    assert "about to fail" in failed.get("output")


async def test_on_error_fail_stops_scheduling_after_the_first_failure(
    make_project: ProjectFactory,
) -> None:
    project = make_project(FAILING)
    async with supervising(project, watch=False, max_workers=1, on_error="fail") as session:
        assert await session.wait_exit() == 1
    assert (_finished(session, "after_bad")).get("status") == "skipped"
    assert not (project / "after_bad.txt").exists()
    # A stage already queued on the worker when the failure came back may still finish
    # (two stages are in flight per worker); nothing is scheduled after the failure.
    independent = _finished(session, "independent")
    assert independent.get("status") in ("ok", "skipped")
    assert (project / "independent.txt").exists() == (independent.get("status") == "ok")
    failure = next(
        i for i, e in enumerate(session.events.seen) if named("stage_finished", stage="bad")(e)
    )
    late = [e for e in session.events.seen[failure:] if e.name == "stage_started"]
    assert not late, f"scheduled after the failure: {late}"


async def test_on_error_keep_going_skips_only_the_failed_stages_downstream(
    make_project: ProjectFactory,
) -> None:
    project = make_project(FAILING)
    async with supervising(project, watch=False, max_workers=1, on_error="keep-going") as session:
        assert await session.wait_exit() == 1
    assert (_finished(session, "bad")).get("status") == "failed"
    skipped = _finished(session, "after_bad")
    assert skipped.get("status") == "skipped"
    assert "bad" in skipped.get("reason")
    assert (_finished(session, "independent")).get("status") == "ok"
    assert (project / "independent.txt").read_text() == "ran"
    assert not (project / "after_bad.txt").exists()


def _finished(session: Session, stage: str) -> Event:
    matches = [e for e in session.events.seen if named("stage_finished", stage=stage)(e)]
    assert len(matches) == 1, f"{stage}: {session.events.describe()}"
    return matches[0]


CRASHING = {
    "pipeline.py": """
        import os

        from pivot_supervise import stage

        @stage()
        def crash():
            os._exit(3)
    """,
}


async def test_run_with_a_crashing_worker_exits_1_naming_the_worker_and_its_exit_code(
    make_project: ProjectFactory,
) -> None:
    async with supervising(make_project(CRASHING), watch=False, max_workers=1) as session:
        assert await session.wait_exit() == 1
    crashed = _finished(session, "crash")
    assert crashed.get("status") == "failed"
    assert "worker" in crashed.get("error")
    assert "EXIT(3)" in crashed.get("error")
    # The result names the worker it took down, like any other result.
    ready = next(e for e in session.events.seen if e.name == "generation_ready")
    assert crashed.get("pid") in ready.get("workers")
    assert f"worker {crashed.get('pid')} died" in crashed.get("error")


async def test_worker_crash_reason_is_a_single_line(make_project: ProjectFactory) -> None:
    async with supervising(make_project(CRASHING), watch=False, max_workers=1) as session:
        assert await session.wait_exit() == 1
    error = _finished(session, "crash").get("error")
    assert "\n" not in error, error
