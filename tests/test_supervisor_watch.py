"""Watch mode on real worker processes and a real file watcher.

Every edit is made after run 1 finished (the watcher is running by then), and every
wait is for an event with a deadline.  Each session must leave no worker behind.
"""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib.util import cache_from_source
from pathlib import Path

import pytest

from conftest import EventLog, named, supervising
from pivot_supervise.supervisor._events import Event

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: ``produce`` writes the value of a helper module; the test edits that module.
CODE_PROJECT = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        import value

        @stage(deps=["data/in.txt"], outs=["out.txt"])
        def produce():
            Path("out.txt").write_text(value.VALUE)

        @stage(deps=["out.txt"], outs=["copy.txt"])
        def copy():
            Path("copy.txt").write_text(Path("out.txt").read_text())
    """,
    "value.py": 'VALUE = "aaa"\n',
    "data/in.txt": "x",
}

#: ``upper`` -> ``lower`` form a chain on ``data/a.txt``; ``other`` is unrelated.
DATA_PROJECT = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["data/a.txt"], outs=["mid.txt"])
        def upper():
            Path("mid.txt").write_text(Path("data/a.txt").read_text().upper())

        @stage(deps=["mid.txt"], outs=["final.txt"])
        def lower():
            Path("final.txt").write_text("final:" + Path("mid.txt").read_text())

        @stage(deps=["data/other.txt"], outs=["other_out.txt"])
        def other():
            Path("other_out.txt").write_text(Path("data/other.txt").read_text())
    """,
    "data/a.txt": "hello",
    "data/other.txt": "o1",
}


async def first_run(events: EventLog) -> tuple[Event, Event]:
    """Wait for generation 1 and the end of run 1; return both events."""
    ready = await events.wait_for(named("generation_ready", generation=1))
    finished = await events.wait_for("run_finished")
    assert finished.get("failed") == 0, events.describe()
    return ready, finished


def stage_results(events: list[Event]) -> dict[str, Event]:
    return {e.get("stage"): e for e in events if e.name == "stage_finished"}


# ------------------------------------------------------------------ code edits


async def test_code_edit_runs_as_saved_on_a_new_generation_of_workers(
    make_project: ProjectFactory,
) -> None:
    project = make_project(CODE_PROJECT)
    async with supervising(project) as session:
        events = session.events
        first, _ = await first_run(events)
        assert (project / "copy.txt").read_text() == "aaa"

        (project / "value.py").write_text('VALUE = "a longer value"\n')
        second = await events.wait_for(named("generation_ready", generation=2))
        assert second.get("trigger") == "code change"
        assert set(second.get("workers")).isdisjoint(first.get("workers"))
        mark = events.mark()
        await events.wait_for("run_finished")
        results = stage_results(events.since(mark))
        assert {name: e.get("status") for name, e in results.items()} == {
            "produce": "ok",
            "copy": "ok",
        }
        assert {e.get("generation") for e in results.values()} == {2}
        assert {e.get("pid") for e in results.values()} <= set(second.get("workers"))
        assert (project / "copy.txt").read_text() == "a longer value"


async def test_same_size_same_mtime_rewrite_over_a_stale_pyc_runs_the_new_code(
    make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the shell says (any non-empty PYTHONDONTWRITEBYTECODE, even "0", means
    # "do not write"): bytecode may be written, and an old pyc exists.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    project = make_project(CODE_PROJECT)
    module = project / "value.py"
    py_compile.compile(str(module), cfile=cache_from_source(str(module)), doraise=True)
    original = module.stat()

    async with supervising(project) as session:
        events = session.events
        first, _ = await first_run(events)
        assert (project / "out.txt").read_text() == "aaa"

        module.write_text('VALUE = "bbb"\n')
        os.utime(module, ns=(original.st_atime_ns, original.st_mtime_ns))
        after = module.stat()
        assert (after.st_size, after.st_mtime_ns) == (original.st_size, original.st_mtime_ns)
        # The pyc now looks fresh for the new source: a plain interpreter runs old code.
        plain = subprocess.run(
            [sys.executable, "-c", "import value; print(value.VALUE)"],
            cwd=project,
            capture_output=True,
            text=True,
            check=True,
        )
        assert plain.stdout.strip() == "aaa", "precondition: the stale pyc is not stale"

        second = await events.wait_for(named("generation_ready", generation=2))
        assert set(second.get("workers")).isdisjoint(first.get("workers"))
        await events.wait_for("run_finished")
        assert (project / "out.txt").read_text() == "bbb"
        assert (project / "copy.txt").read_text() == "bbb"


# ------------------------------------------------------------------ data edits


async def test_data_edit_reruns_only_its_downstream_on_the_same_warm_workers(
    make_project: ProjectFactory,
) -> None:
    project = make_project(DATA_PROJECT)
    async with supervising(project) as session:
        events = session.events
        ready, _ = await first_run(events)

        mark = events.mark()
        (project / "data/a.txt").write_text("world")
        changed = await events.wait_for("files_changed")
        assert changed.get("kind") == "data"
        assert changed.get("paths") == ["data/a.txt"]
        assert changed.get("stages") == ["upper", "lower"]
        started = await events.wait_for("run_started")
        assert started.get("stages") == ["upper", "lower"]
        assert started.get("trigger") == "data change"
        await events.wait_for("run_finished")

        window = events.since(mark)
        assert not [e for e in window if e.name in ("reload_started", "generation_ready")]
        results = stage_results(window)
        assert set(results) == {"upper", "lower"}
        for result in results.values():
            assert result.get("status") == "ok"
            assert result.get("generation") == 1
            assert result.get("pid") in ready.get("workers")
        assert (project / "final.txt").read_text() == "final:WORLD"
        assert (project / "other_out.txt").read_text() == "o1"


async def test_pipeline_outputs_do_not_trigger_runs_of_their_own(
    make_project: ProjectFactory,
) -> None:
    project = make_project(DATA_PROJECT)
    async with supervising(project) as session:
        events = session.events
        await first_run(events)

        # If run 1's own writes had triggered anything, it would come before this edit.
        (project / "data/other.txt").write_text("o2")
        changed = await events.wait_for("files_changed")
        assert (changed.get("paths"), changed.get("stages")) == (["data/other.txt"], ["other"])
        started = await events.wait_for("run_started")
        assert started.get("stages") == ["other"]
        await events.wait_for("run_finished")
        assert (project / "other_out.txt").read_text() == "o2"


async def test_external_edit_of_an_intermediate_output_reruns_its_consumers_not_its_producer(
    make_project: ProjectFactory,
) -> None:
    project = make_project(DATA_PROJECT)
    async with supervising(project) as session:
        events = session.events
        await first_run(events)

        mark = events.mark()
        (project / "mid.txt").write_text("EDITED BY HAND")
        changed = await events.wait_for("files_changed")
        assert (changed.get("paths"), changed.get("stages")) == (["mid.txt"], ["lower"])
        started = await events.wait_for("run_started")
        assert started.get("stages") == ["lower"]
        await events.wait_for("run_finished")
        assert set(stage_results(events.since(mark))) == {"lower"}
        assert (project / "final.txt").read_text() == "final:EDITED BY HAND"
        assert (project / "mid.txt").read_text() == "EDITED BY HAND"


# ------------------------------------------------------------------ broken edits


async def test_syntax_error_keeps_the_old_generation_serving_until_the_code_is_fixed(
    make_project: ProjectFactory,
) -> None:
    project = make_project(DATA_PROJECT)
    pipeline = project / "pipeline.py"
    good = pipeline.read_text()
    async with supervising(project) as session:
        events = session.events
        ready, _ = await first_run(events)

        pipeline.write_text(good + "\ndef broken(:\n    pass\n")
        failed = await events.wait_for("reload_failed")
        assert failed.get("generation") == 2
        assert failed.get("active_generation") == 1
        assert "SyntaxError" in failed.get("error")
        assert "pipeline.py" in failed.get("error")
        assert failed.get("traceback")

        mark = events.mark()
        (project / "data/other.txt").write_text("served by generation 1")
        await events.wait_for("run_finished")
        result = stage_results(events.since(mark))["other"]
        assert result.get("status") == "ok"
        assert result.get("generation") == 1
        assert result.get("pid") in ready.get("workers")
        assert (project / "other_out.txt").read_text() == "served by generation 1"

        pipeline.write_text(good.replace('"final:"', '"fixed:"'))
        recovered = await events.wait_for("generation_ready")
        assert recovered.get("generation") == 3
        assert set(recovered.get("workers")).isdisjoint(ready.get("workers"))
        mark = events.mark()
        finished = await events.wait_for("run_finished")
        assert finished.get("failed") == 0
        assert {e.get("generation") for e in stage_results(events.since(mark)).values()} == {3}
        assert (project / "final.txt").read_text() == "fixed:HELLO"


async def test_dependency_cycle_is_reported_by_stage_name_and_watching_continues(
    make_project: ProjectFactory,
) -> None:
    project = make_project(DATA_PROJECT)
    pipeline = project / "pipeline.py"
    good = pipeline.read_text()
    async with supervising(project) as session:
        events = session.events
        await first_run(events)

        # ``upper`` now also reads what ``lower`` writes: upper -> lower -> upper.
        pipeline.write_text(good.replace('deps=["data/a.txt"]', 'deps=["data/a.txt", "final.txt"]'))
        failed = await events.wait_for("reload_failed")
        assert failed.get("active_generation") == 1
        error = failed.get("error")
        assert "cycle" in error.lower()
        assert "upper" in error
        assert "lower" in error

        mark = events.mark()
        (project / "data/other.txt").write_text("still watching")
        await events.wait_for("run_finished")
        assert stage_results(events.since(mark))["other"].get("generation") == 1

        pipeline.write_text(good)
        recovered = await events.wait_for("generation_ready")
        assert recovered.get("trigger") == "code change"
        finished = await events.wait_for("run_finished")
        assert finished.get("failed") == 0
        assert finished.get("ok") == 3


# ------------------------------------------------------------------ crashes


CRASH_PROJECT = {
    "pipeline.py": """
        import os
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["data/mode.txt"], outs=["mode_out.txt"])
        def fragile():
            mode = Path("data/mode.txt").read_text()
            if mode == "crash":
                os._exit(3)
            Path("mode_out.txt").write_text(mode)

        @stage(outs=["steady.txt"])
        def steady():
            Path("steady.txt").write_text("steady")
    """,
    "data/mode.txt": "fine",
}


async def test_worker_crash_fails_the_stage_and_brings_up_a_fresh_generation(
    make_project: ProjectFactory,
) -> None:
    project = make_project(CRASH_PROJECT)
    async with supervising(project) as session:
        events = session.events
        first, _ = await first_run(events)

        before_crash = events.mark()
        (project / "data/mode.txt").write_text("crash")
        crashed = await events.wait_for(named("stage_finished", stage="fragile"))
        assert crashed.get("status") == "failed"
        assert "worker" in crashed.get("error")
        assert crashed.get("generation") == 1
        fresh = await events.wait_for("generation_ready")
        assert fresh.get("generation") == 2
        assert fresh.get("trigger") == "worker crash"
        assert set(fresh.get("workers")).isdisjoint(first.get("workers"))
        # The failed run ends whether the fresh generation is ready before or after it.
        await events.wait_for(named("run_finished", failed=1), since=before_crash)
        events.catch_up()

        mark = events.mark()
        (project / "data/mode.txt").write_text("fine again")
        await events.wait_for("run_finished")
        result = stage_results(events.since(mark))["fragile"]
        assert result.get("status") == "ok"
        assert result.get("generation") == 2
        assert result.get("pid") in fresh.get("workers")
        assert (project / "mode_out.txt").read_text() == "fine again"
